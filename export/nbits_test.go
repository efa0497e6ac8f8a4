package export

import (
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/testmodels"
)

// fourBitQAT builds cfg and its W4A8 QAT model (passes/quantize.Insert,
// max-initialized weight clips, granularity gran with blocks of block),
// and a batch of 8 × 24 tokens.
func fourBitQAT(t testing.TB, cfg testmodels.Config, gran string, block, batchSize int) (fp32, qat *graph.Model, batch map[string]*ort.Tensor) {
	t.Helper()
	fp32, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	src, tgt := testmodels.RandomBatch(cfg, batchSize, 32, 32, 2)
	batch = map[string]*ort.Tensor{
		testmodels.SrcInput: ort.Int64([]int64{int64(batchSize), 32}, src),
		testmodels.TgtInput: ort.Int64([]int64{int64(batchSize), 32}, tgt),
	}
	qat = clone(t, fp32)
	p := quantize.DefaultParams()
	p.WeightBits, p.WeightInit, p.ActClipMax = 4, quantize.InitMax, 8
	p.Granularity, p.BlockSize = gran, block
	if _, err := quantize.Insert(qat, p); err != nil {
		t.Fatal(err)
	}
	return fp32, qat, batch
}

// TestFourBit exports W4A8 QAT models of a testmodel (vocabulary 4000,
// d 256) with weights per tensor, per channel and per block: qdq stores
// the weights as INT4 at opset 21 in a file of at most 20% of fp32's, and
// matmulnbits runs MatMulNBits for every weight product; both pass
// Verify.
func TestFourBit(t *testing.T) {
	cfg := testmodels.Tiny()
	cfg.Vocab, cfg.Hidden, cfg.FFN = 4000, 256, 1024
	weightProducts := -1
	for _, tc := range []struct {
		gran  string
		block int
		// int4Table: the shared embedding table is stored INT4 too. A
		// table whose scale moves past its Gather is gathered as int8
		// (Gather takes no 4-bit tensors); a blocked one is not.
		int4Table bool
	}{
		{quantize.Tensor, 0, false},
		{quantize.Channel, 0, false},
		{quantize.Block, 32, true},
	} {
		fp32, qat, batch := fourBitQAT(t, cfg, tc.gran, tc.block, 8)
		fsize, err := fp32.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if weightProducts < 0 {
			weightProducts = 0
			for _, n := range fp32.Graph().Node {
				if n.OpType == "MatMul" && fromWeight(fp32, n.Input[1]) {
					weightProducts++
				}
			}
		}
		for _, format := range []string{"qdq", "matmulnbits"} {
			t.Run(tc.gran+"/"+format, func(t *testing.T) {
				out, rep, err := Export(qat, format, nil)
				if err != nil {
					t.Fatal(err)
				}
				v, err := Verify(qat, out, batch, Padding{})
				ratio := float64(rep.Size) / float64(len(fsize))
				t.Logf("%.1f%% of fp32, %d INT4 and %d MatMulNBits weights, notes %q, max abs error %.4g (bound %.4g), top-1 %.4f, kernels %s",
					100*ratio, rep.Int4Weights, rep.NBitsWeights, rep.Notes, v.MaxAbsErr, v.Bound, v.Top1, kernelList(v.Kernels))
				if err != nil {
					t.Fatal(err)
				}
				if len(rep.Notes) != 0 {
					t.Errorf("notes %q, want none", rep.Notes)
				}
				switch format {
				case "qdq":
					want := weightProducts // the tied table included
					if !tc.int4Table {
						want--
					}
					if out.Opset("") != 21 || rep.Int4Weights != want {
						t.Errorf("%d INT4 weights at opset %d, want %d at 21", rep.Int4Weights, out.Opset(""), want)
					}
					if ratio > 0.20 {
						t.Errorf("file is %.1f%% of fp32, want ≤ 20%%", 100*ratio)
					}
				case "matmulnbits":
					// + the tied output projection, read through a Transpose.
					if rep.NBitsWeights != weightProducts || v.Kernels["MatMulNBits"] != weightProducts {
						t.Errorf("%d weights converted, %d MatMulNBits run; want %d", rep.NBitsWeights, v.Kernels["MatMulNBits"], weightProducts)
					}
					if ratio > 0.25 {
						t.Errorf("file is %.1f%% of fp32, want ≤ 25%%", 100*ratio)
					}
					// Lookups dequantize the gathered rows, not the table.
					for _, n := range out.Graph().Node {
						if n.OpType != "DequantizeLinear" {
							continue
						}
						if init := out.Initializer(n.Input[0]); init != nil && graph.NumElements(init.Dims) >= int64(cfg.Vocab*cfg.Hidden) {
							t.Errorf("%s dequantizes the whole table %q on every run", n.Name, init.Name)
						}
					}
				}
			})
		}
	}
}

// TestFourBitOldOpset exports a W4A8 QAT model whose opset cannot be
// raised to 21 (opset 16: LayerNorm is built from ReduceMean with an axes
// attribute, which changed at 18): qdq keeps int8 storage in [-8, 7] and
// says why, and the model still verifies.
func TestFourBitOldOpset(t *testing.T) {
	cfg := testmodels.Tiny()
	cfg.Opset = 16
	_, qat, batch := fourBitQAT(t, cfg, quantize.Channel, 0, 4)
	out, rep, err := Export(qat, "qdq", nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Int4Weights != 0 || out.Opset("") != 16 || len(rep.Notes) != 1 || !strings.Contains(rep.Notes[0], "changed meaning at opset 18") {
		t.Fatalf("%d INT4 weights at opset %d, notes %q; want none at 16 and a note naming the ReduceMean", rep.Int4Weights, out.Opset(""), rep.Notes)
	}
	for _, f := range rep.Quantizers {
		if f.Int != "" && graph.TensorType(out.Initializer(f.Int)) != graph.Int8 {
			t.Errorf("%s stored as %s, want int8", f.Tensor, graph.TensorType(out.Initializer(f.Int)))
		}
	}
	if _, err := Verify(qat, out, batch, Padding{}); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkNBits times the full forward pass of testmodels.Base() at
// source and target length 32, batch 1 and 16, on 2 threads: fp32, its
// 8-bit QAT model as qoperator (the fastest int8 format), and its W4A8 QAT
// model (blocks of 32) as matmulnbits, with the activation quantizers kept
// (the default) and dropped, and as qdq, and its per-channel W4A8 QAT model
// as matmulnbits (blocks of 128). The models run interleaved, one
// forward pass each per iteration; each reports its median latency
// ("<model>_b<batch>_ms") and its speedup over fp32's median ("_x"). Run
// it with a fixed count, e.g. -bench NBits -benchtime 20x: the models are
// built once.
func BenchmarkNBits(b *testing.B) {
	bench := nbitsBenchModels(b)
	type metric struct {
		v    float64
		unit string
	}
	var metrics []metric
	for _, bs := range []int{1, 16} {
		batch := bench.batches[bs]
		medians := interleaved(b, bench.models, batch)
		base := medians[0]
		for i, name := range bench.names {
			m := medians[i]
			metrics = append(metrics, metric{float64(m) / 1e6, fmt.Sprintf("%s_b%d_ms", name, bs)})
			if i > 0 {
				metrics = append(metrics, metric{float64(base) / float64(m), fmt.Sprintf("%s_b%d_x", name, bs)})
			}
		}
	}
	// Reported at the end: ResetTimer drops the metrics reported before it.
	for _, m := range metrics {
		b.ReportMetric(m.v, m.unit)
	}
	b.ReportMetric(0, "ns/op") // the per-model metrics above are the result
}

// benchModels are BenchmarkNBits' models, built once.
type benchModels struct {
	once    sync.Once
	names   []string
	models  []*graph.Model
	batches map[int]map[string]*ort.Tensor
}

var nbitsBench benchModels

// nbitsBenchModels builds BenchmarkNBits' models once and logs their
// sizes and Verify's figures.
func nbitsBenchModels(b *testing.B) *benchModels {
	nb := &nbitsBench
	nb.once.Do(func() {
		cfg := testmodels.Base()
		fp32, qat4, _ := fourBitQAT(b, cfg, quantize.Block, 32, 1)
		_, qat4c, _ := fourBitQAT(b, cfg, quantize.Channel, 0, 1)
		qat8 := clone(b, fp32)
		p := quantize.DefaultParams()
		p.WeightInit, p.ActClipMax = quantize.InitMax, 8
		if _, err := quantize.Insert(qat8, p); err != nil {
			b.Fatal(err)
		}
		nb.batches = map[int]map[string]*ort.Tensor{}
		for _, bs := range []int{1, 16} {
			src, tgt := testmodels.RandomBatch(cfg, bs, 32, 32, 1)
			nb.batches[bs] = map[string]*ort.Tensor{
				testmodels.SrcInput: ort.Int64([]int64{int64(bs), 32}, src),
				testmodels.TgtInput: ort.Int64([]int64{int64(bs), 32}, tgt),
			}
		}
		for _, v := range []struct {
			name   string
			qat    *graph.Model
			format string
			drop   bool
		}{
			{"fp32", nil, "", false},
			{"qoperator8", qat8, "qoperator", false},
			{"matmulnbits4", qat4, "matmulnbits", false},
			{"matmulnbits4_drop", qat4, "matmulnbits", true},
			{"matmulnbits4_channel", qat4c, "matmulnbits", false},
			{"qdq4", qat4, "qdq", false},
		} {
			nb.names = append(nb.names, v.name)
			if v.qat == nil {
				nb.models = append(nb.models, fp32)
				continue
			}
			saved := nbits
			nbits.DropActQuant = v.drop
			out, rep, err := Export(v.qat, v.format, nil)
			nbits = saved
			if err != nil {
				b.Fatal(err)
			}
			nb.models = append(nb.models, out)
			r, err := Verify(v.qat, out, nb.batches[16], Padding{})
			b.Logf("%s: %d bytes; batch 16: max abs error %.4g (bound %.4g), top-1 %.4f; verify: %v", v.name, rep.Size, r.MaxAbsErr, r.Bound, r.Top1, err)
		}
	})
	return nb
}

// TestBlockedQATRuns opens a blocked QAT model (testmodels at opset 21,
// blocks of 32) every way a user or qatc does, at onnxruntime's default
// level and with every optimization asked for explicitly: all run (the
// blocked view keeps the MatMulIntegerToFloat fusion away, see
// quantize.BlockView) and give the same logits as qatc's in-memory
// session.
func TestBlockedQATRuns(t *testing.T) {
	cfg := testmodels.Tiny()
	cfg.Opset = 21
	_, qat, batch := fourBitQAT(t, cfg, quantize.Block, 32, 2)
	run := func(open func() (*ort.Session, error)) ([]float32, error) {
		s, err := open()
		if err != nil {
			return nil, err
		}
		defer s.Close()
		out, err := s.Run(batch, testmodels.LogitsOutput)
		if err != nil {
			return nil, err
		}
		return out[testmodels.LogitsOutput].Float32s(), nil
	}
	want, err := run(func() (*ort.Session, error) { return ort.Open(qat, nil) })
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "qat.onnx")
	if err := qat.Save(path); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		open func() (*ort.Session, error)
	}{
		{"OpenFile", func() (*ort.Session, error) { return ort.OpenFile(path, nil) }},
		{"OpenFile with outputs", func() (*ort.Session, error) {
			return ort.OpenFile(path, &ort.Options{Outputs: []string{qat.Graph().Node[0].Output[0]}})
		}},
		{"Open at all", func() (*ort.Session, error) {
			return ort.Open(qat, &ort.Options{Optimization: ort.OptimizeAll})
		}},
	} {
		got, err := run(tc.open)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		var d, scale float64
		for i := range want {
			d = max(d, math.Abs(float64(got[i]-want[i])))
			scale = max(scale, math.Abs(float64(want[i])))
		}
		if d > 1e-5*scale {
			t.Errorf("%s: logits differ from the in-memory session's by %g (max %g)", tc.name, d, scale)
		}
	}
}

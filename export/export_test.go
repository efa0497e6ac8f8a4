package export

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/fold"
	"github.com/qatc/qatc/testmodels"
)

var torch struct {
	once  sync.Once
	path  string
	fp32  *graph.Model
	qat   *graph.Model
	batch map[string]*ort.Tensor
	err   error
}

// torchQAT returns the PyTorch reference model, its 8-bit per-tensor QAT
// model and a batch of 16 × 32 tokens.
func torchQAT(t *testing.T) (fp32, qat *graph.Model, batch map[string]*ort.Tensor) {
	t.Helper()
	torch.once.Do(func() {
		torch.path = fixture.Torch(t, fixture.Transformer17)
		torch.fp32, torch.err = graph.Load(torch.path)
		if torch.err != nil {
			return
		}
		torch.batch = torchBatch(16, 32, 32, 1)
		torch.qat = makeQAT(t, torch.fp32, torch.batch, qatConfig{bits: 8})
	})
	if torch.err != nil {
		t.Fatal(torch.err)
	}
	return torch.fp32, torch.qat, torch.batch
}

// TestFormats exports the PyTorch reference model's QAT model in each
// format and checks Verify's figures and the kernels onnxruntime runs:
// qoperator runs every MatMul and Gemm in integers, dynamic every one with
// a stored weight (attention's activation products stay float).
func TestFormats(t *testing.T) {
	fp32, qat, batch := torchQAT(t)
	weightProducts := 0
	for _, n := range fp32.Graph().Node {
		if (n.OpType == "MatMul" || n.OpType == "Gemm") && fp32.Initializer(n.Input[1]) != nil {
			weightProducts++
		}
	}
	for _, tc := range []struct {
		format       string
		intKernels   int // -1: any number > 0
		floatMatMuls int // -1: any number
	}{
		{"qdq", -1, -1},
		{"qoperator", matMuls(fp32), 0},
		{"dynamic", weightProducts + 4, matMuls(fp32) - weightProducts - 4}, // + the cross-attention K/V, sliced from one weight
	} {
		t.Run(tc.format, func(t *testing.T) {
			out, rep, err := Export(qat, tc.format, &Options{Source: torch.path})
			if err != nil {
				t.Fatal(err)
			}
			v, err := Verify(qat, out, batch, Padding{})
			t.Logf("%s: %d bytes, max abs error %.4g (bound %.4g), top-1 %.4f over %d, kernels %s",
				tc.format, rep.Size, v.MaxAbsErr, v.Bound, v.Top1, v.Positions, kernelList(v.Kernels))
			if err != nil {
				t.Fatal(err)
			}
			if v.Positions != 16*32 {
				t.Errorf("compared %d positions, want %d", v.Positions, 16*32)
			}
			if tc.intKernels >= 0 && v.IntKernels != tc.intKernels || v.IntKernels == 0 {
				t.Errorf("%d integer kernels ran, want %d", v.IntKernels, tc.intKernels)
			}
			if tc.floatMatMuls >= 0 && v.FloatMatMuls != tc.floatMatMuls {
				t.Errorf("%d float MatMul kernels ran, want %d", v.FloatMatMuls, tc.floatMatMuls)
			}
			if len(rep.FloatProducts) != 0 {
				t.Errorf("weight products left in float: %v", rep.FloatProducts)
			}
			if f, _ := out.Metadata(fold.FormatKey); f != tc.format {
				t.Errorf("format metadata %q", f)
			}
			want, _ := qat.Metadata(fold.RecordKey)
			if got, _ := out.Metadata(fold.RecordKey); got != want || want == "" {
				t.Errorf("quantization record not carried over")
			}
			if src, _ := out.Metadata(SourceKey); src != torch.path {
				t.Errorf("source metadata %q", src)
			}
		})
	}
}

// TestVerifyFails checks that Verify catches an export that is off and
// one that runs in float.
func TestVerifyFails(t *testing.T) {
	fp32, qat, batch := torchQAT(t)
	out, _, err := Export(qat, "qdq", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Scale the output projection's weights by 1.05.
	dq := out.Producer(out.Producer("logits").Input[1])
	st := out.Initializer(dq.Input[1])
	s, _ := graph.Floats(st)
	if err := graph.SetFloats(st, []float32{s[0] * 1.05}); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(qat, out, batch, Padding{}); err == nil || !strings.Contains(err.Error(), "max abs error") {
		t.Errorf("off by 5%%: got %v", err)
	}
	f := clone(t, fp32)
	f.SetMetadata(fold.FormatKey, "qoperator")
	if _, err := Verify(qat, f, batch, Padding{}); err == nil || !strings.Contains(err.Error(), "ran no integer kernel") {
		t.Errorf("fp32 model: got %v", err)
	}
}

// TestKernels checks the kernel listing on the fp32 model (float only) and
// its qoperator export (integer MatMuls only).
func TestKernels(t *testing.T) {
	fp32, qat, batch := torchQAT(t)
	k, err := Kernels(fp32, batch)
	if err != nil {
		t.Fatal(err)
	}
	if k["MatMul"]+k["FusedMatMul"]+k["Gemm"] == 0 || k["MatMulIntegerToFloat"] != 0 {
		t.Errorf("fp32 kernels: %s", kernelList(k))
	}
	out, _, err := Export(qat, "qoperator", nil)
	if err != nil {
		t.Fatal(err)
	}
	if k, err = Kernels(out, batch); err != nil {
		t.Fatal(err)
	}
	if k["MatMulIntegerToFloat"] != matMuls(fp32) || k["MatMul"]+k["FusedMatMul"]+k["Gemm"] != 0 {
		t.Errorf("qoperator kernels: %s; want %d MatMulIntegerToFloat and no float MatMul", kernelList(k), matMuls(fp32))
	}
}

func clone(t testing.TB, m *graph.Model) *graph.Model {
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	c, err := graph.Parse(data, "")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// matMuls counts the MatMul and Gemm nodes of m.
func matMuls(m *graph.Model) int {
	n := 0
	for _, node := range m.Graph().Node {
		if node.OpType == "MatMul" || node.OpType == "Gemm" {
			n++
		}
	}
	return n
}

// TestIntegers checks that each exported integer weight holds exactly the
// integers onnxruntime's QuantizeLinear computes for the QAT weight.
func TestIntegers(t *testing.T) {
	_, qat, batch := torchQAT(t)
	out, rep, err := Export(qat, "qdq", nil)
	if err != nil {
		t.Fatal(err)
	}
	qout := map[string]string{} // weight -> its QuantizeLinear output in the QAT model
	var names []string
	for _, n := range qat.Graph().Node {
		if n.OpType == "QuantizeLinear" && qat.Initializer(n.Input[0]) != nil {
			qout[n.Input[0]] = n.Output[0]
			names = append(names, n.Output[0])
		}
	}
	s, err := ort.Open(qat, &ort.Options{Outputs: names})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Run(batch, names...)
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, f := range rep.Quantizers {
		if f.Kind != "weight" {
			continue
		}
		want := got[qout[f.Tensor]]
		init := out.Initializer(f.Int)
		if want == nil || init == nil {
			t.Fatalf("weight %q: no on-the-fly integers or no stored initializer %q", f.Tensor, f.Int)
		}
		w := want.Data.([]int8)
		dims := want.Shape
		if f.Perm != nil {
			w, dims = transposeInts(w, dims, f.Perm)
		}
		if fmt.Sprint(dims) != fmt.Sprint(init.Dims) || graph.TensorType(init) != graph.Int8 {
			t.Fatalf("weight %q: stored %v %s, want %v int8", f.Tensor, init.Dims, graph.TensorType(init), dims)
		}
		for i, v := range w {
			if int8(init.RawData[i]) != v {
				t.Fatalf("weight %q element %d: stored %d, QuantizeLinear gives %d", f.Tensor, i, int8(init.RawData[i]), v)
			}
		}
		checked++
	}
	if checked != len(qout) {
		t.Fatalf("checked %d weights, the QAT model quantizes %d", checked, len(qout))
	}
}

// transposeInts permutes a row-major tensor's axes.
func transposeInts(v []int8, dims, perm []int64) ([]int8, []int64) {
	strides := make([]int64, len(dims))
	s := int64(1)
	for i := len(dims) - 1; i >= 0; i-- {
		strides[i] = s
		s *= dims[i]
	}
	od := make([]int64, len(dims))
	for i, p := range perm {
		od[i] = dims[p]
	}
	out := make([]int8, len(v))
	idx := make([]int64, len(dims))
	for o := range out {
		var src int64
		for i, p := range perm {
			src += idx[i] * strides[p]
		}
		out[o] = v[src]
		for i := len(od) - 1; i >= 0; i-- {
			if idx[i]++; idx[i] < od[i] {
				break
			}
			idx[i] = 0
		}
	}
	return out, od
}

// TestPerChannel exports a model with per-output-channel weights.
func TestPerChannel(t *testing.T) {
	fp32, _, batch := torchQAT(t)
	qat := makeQAT(t, fp32, batch, qatConfig{bits: 8, perChannel: true})
	for _, format := range []string{"qdq", "qoperator", "dynamic"} {
		out, _, err := Export(qat, format, nil)
		if err != nil {
			t.Fatalf("%s: %v", format, err)
		}
		v, err := Verify(qat, out, batch, Padding{})
		t.Logf("%s per channel: max abs error %.4g (bound %.4g), top-1 %.4f, %d int kernels", format, v.MaxAbsErr, v.Bound, v.Top1, v.IntKernels)
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestBadInput checks the one-line errors that name the fix.
func TestBadInput(t *testing.T) {
	fp32, _, batch := torchQAT(t)
	four := makeQAT(t, fp32, batch, qatConfig{bits: 4})
	inAxis := makeQAT(t, fp32, batch, qatConfig{bits: 8, perChannel: true, actAxis0: true})
	for _, tc := range []struct {
		name, format string
		m            *graph.Model
		want         string
	}{
		{"no quantizers", "qdq", fp32, "make a QAT model with `qatc insert` first"},
		{"unknown format", "int4", four, "unknown export format \"int4\": use qdq, qoperator, dynamic, matmulnbits"},
		{"4-bit qoperator", "qoperator", four, "has 4 bits; qoperator's integer kernels take 8-bit operands: export with --format qdq"},
		{"4-bit dynamic", "dynamic", four, "has 4 bits; dynamic's MatMulInteger takes 8-bit weights: export with --format qdq"},
		{"input-axis channels", "qoperator", inAxis, "quantized per channel along its input axis; an integer MatMul can only rescale output columns: export with --format qdq, or re-insert it per output channel"},
		{"4-bit activations matmulnbits", "matmulnbits", four, "is quantized to 4 bits; matmulnbits carries 8-bit activations only (MatMulNBits computes with int8 activations): re-insert with --act-bits 8, or export with --format qdq"},
	} {
		_, _, err := Export(tc.m, tc.format, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: got error %v, want one line containing %q", tc.name, err, tc.want)
		}
	}
	// qdq carries 4 bits: INT4 weights (opset 21), or int8 held to
	// [-8, 7] where a table is gathered as integers.
	out, rep, err := Export(four, "qdq", nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Int4Weights == 0 || out.Opset("") != 21 {
		t.Errorf("%d INT4 weights at opset %d, want some at 21", rep.Int4Weights, out.Opset(""))
	}
	for _, f := range rep.Quantizers {
		if f.Int == "" {
			continue
		}
		init := out.Initializer(f.Int)
		var vals []int
		switch graph.TensorType(init) {
		case graph.Int4:
			for i := range graph.NumElements(init.Dims) {
				vals = append(vals, int(int8(init.RawData[i/2]>>(4*(i%2))<<4)>>4))
			}
		case graph.Int8:
			for _, b := range init.RawData {
				vals = append(vals, int(int8(b)))
			}
		default:
			t.Errorf("4-bit weight %q stored as %s", f.Tensor, graph.TensorType(init))
		}
		lo, hi := 0, 0
		for _, v := range vals {
			lo, hi = min(lo, v), max(hi, v)
		}
		if lo < -8 || hi > 7 || hi < 6 {
			t.Errorf("4-bit weight %q stored in [%d, %d], want within [-8, 7] and reaching 7", f.Tensor, lo, hi)
		}
	}
	if _, err := Verify(four, out, batch, Padding{}); err != nil {
		t.Errorf("4-bit qdq: %v", err)
	}
}

// TestTestmodel exports a NeurST-style model from testmodels (fused Q/K/V,
// shared embeddings) in every format: the checks of Verify, every MatMul
// with a stored weight in integers, and the int8 file at most 30% of the
// fp32 file.
func TestTestmodel(t *testing.T) {
	cfg := testmodels.Tiny()
	cfg.Vocab, cfg.Hidden, cfg.FFN, cfg.FusedQKV = 4000, 256, 1024, true
	fp32, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	src, tgt := testmodels.RandomBatch(cfg, 16, 24, 24, 3)
	batch := map[string]*ort.Tensor{
		testmodels.SrcInput: ort.Int64([]int64{16, 24}, src),
		testmodels.TgtInput: ort.Int64([]int64{16, 24}, tgt),
	}
	qat := makeQAT(t, fp32, batch, qatConfig{bits: 8})
	fsize, err := fp32.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range Formats {
		out, rep, err := Export(qat, format, nil)
		if err != nil {
			t.Fatalf("%s: %v", format, err)
		}
		v, err := Verify(qat, out, batch, Padding{})
		ratio := float64(rep.Size) / float64(len(fsize))
		t.Logf("%s: %.1f%% of fp32, max abs error %.4g (bound %.4g), top-1 %.4f, kernels %s", format, 100*ratio, v.MaxAbsErr, v.Bound, v.Top1, kernelList(v.Kernels))
		if err != nil {
			t.Fatal(err)
		}
		// matmulnbits stores the tied table twice: int8 for the lookups,
		// packed for the output projection.
		if limit := map[string]float64{"matmulnbits": 0.40}[format]; ratio > max(limit, 0.30) {
			t.Errorf("%s: file is %.1f%% of fp32, want ≤ %.0f%%", format, 100*ratio, 100*max(limit, 0.30))
		}
	}
}

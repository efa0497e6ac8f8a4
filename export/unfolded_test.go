package export

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/qatc/qatc/decode"
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/fold"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/seq2seq"
	"github.com/qatc/qatc/testmodels"
)

// TestUnfolded exports QAT models of the tiny testmodel (8-bit; 4-bit
// weights per block of 32, stored INT4; W4A4; 8-bit weights per block,
// in GuardBlocked's view; 8-bit per channel) and of PyTorch exports
// (d256: a tied table with a transposed copy for its logits Gemm, a
// fused in_proj weight whose per-channel scales are sliced; transformer17:
// weights stored transposed) in each integer format and loads the file as
// qatc translate does. Every file is read back (fold.Unfold): folded
// again it is the file, integers, scales (from the reconstructed clips,
// bit for bit) and operators (Refolds), it decodes through a cache with
// no note, and the greedy ids through the cache equal those of re-running
// the same file on fixed sources (dynamic too: its per-batch activation
// ranges could in principle differ between a step and the whole
// sequence, but they give the same ids here).
func TestUnfolded(t *testing.T) {
	decode.RegisterExported(Unfolded) // as cmd/qatc's main does
	// Sources: random ids for the random models, the first sentences of
	// d256's task for d256.
	random := func(vocab int) [][]int64 {
		rng := rand.New(rand.NewSource(12))
		var srcs [][]int64
		for range 12 {
			s := make([]int64, 2+rng.Intn(9))
			for i := range s {
				s[i] = 4 + rng.Int63n(int64(vocab-4))
			}
			srcs = append(srcs, append(s, 3))
		}
		return srcs
	}
	d256, err := os.ReadFile(fixture.Torch(t, "d256.src"))
	if err != nil {
		t.Fatal(err)
	}
	var d256Srcs [][]int64
	for _, line := range strings.Split(string(d256), "\n")[:12] {
		var s []int64
		for _, f := range strings.Fields(line) {
			id, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			s = append(s, id)
		}
		d256Srcs = append(d256Srcs, append(s, 3))
	}
	sources := map[string][][]int64{"": random(testmodels.Tiny().Vocab), fixture.D256: d256Srcs, fixture.Transformer17: random(512)}

	qats := map[string]*graph.Model{}
	qatOf := func(model string, p quantize.Params) *graph.Model {
		key := fmt.Sprintf("%s %+v", model, p)
		if qats[key] == nil {
			qats[key] = qatModel(t, model, p)
		}
		return qats[key]
	}
	params := func(wbits, abits int, gran string) quantize.Params {
		p := quantize.DefaultParams()
		p.WeightBits, p.ActBits, p.Granularity = wbits, abits, gran
		if gran == quantize.Block {
			p.BlockSize = 32
		}
		return p
	}
	w8 := params(8, 8, quantize.Tensor)
	const ffn = "encoder/layer_0/ffn/dense1/kernel"
	nbits := func(dims string, bits int) string {
		return fmt.Sprintf("uint8 MatMulNBits blocks %s of %d-bit values, shown as the K×N weight of the product [32 64]", dims, bits)
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		name, format string
		model        string // a PyTorch fixture; "" for the tiny testmodel
		params       quantize.Params
		// stored is how the file stores the integers named weight (type
		// and shape as stored) and read the node that reads them.
		weight, stored, read string
	}{
		{"qdq", "qdq", "", w8, ffn + "_quantized", "int8 [32 64]", "DequantizeLinear"},
		{"qoperator", "qoperator", "", w8, ffn + "_quantized", "int8 [32 64]", "MatMulIntegerToFloat"},
		{"qdq W4 block 32", "qdq", "", params(4, 8, quantize.Block), ffn + "_quantized", "int4 [32 64]", "DequantizeLinear blocks of 32"},
		{"qdq W4A4", "qdq", "", params(4, 4, quantize.Tensor), ffn + "_quantized", "int4 [32 64]", "DequantizeLinear"},
		// int8 blocked weights, in GuardBlocked's view [blocks, block, C].
		{"qdq W8 block 32", "qdq", "", params(8, 8, quantize.Block), ffn + "_quantized", "int8 [1 32 64]", "DequantizeLinear blocks of 32"},
		{"dynamic", "dynamic", "", w8, ffn + "_quantized", "int8 [32 64]", "MatMulInteger"},
		{"matmulnbits", "matmulnbits", "", w8, ffn + "_nbits", nbits("[64 1 32]", 8), "MatMulNBits"},
		{"matmulnbits W4 block 32", "matmulnbits", "", params(4, 8, quantize.Block), ffn + "_nbits", nbits("[64 1 16]", 4), "MatMulNBits"},
		{"matmulnbits W4", "matmulnbits", "", params(4, 8, quantize.Tensor), ffn + "_nbits", nbits("[64 1 16]", 4), "MatMulNBits"},
		{"matmulnbits W8 per channel", "matmulnbits", "", params(8, 8, quantize.Channel), ffn + "_nbits", nbits("[64 1 32]", 8), "MatMulNBits"},
		// The tied table, kept for the lookups, and its copy transposed
		// for the logits Gemm's transB (transposedInts).
		{"d256 qoperator", "qoperator", fixture.D256, w8, "emb.weight_quantized_transposed", "int8 [256 4000]", "MatMulIntegerToFloat"},
		// Per-channel scales sliced with the fused in_proj weight they
		// were sunk past (sinkPast).
		{"d256 per channel qdq", "qdq", fixture.D256, params(8, 8, quantize.Channel), "tf.decoder.layers.0.multihead_attn.in_proj_weight_quantized", "int8 [768 256]", "DequantizeLinear"},
		// A weight read through a Transpose, stored transposed (sinkPast).
		{"transformer17 dynamic", "dynamic", fixture.Transformer17, w8, "tf.encoder.layers.0.self_attn.out_proj.weight_quantized_transposed", "int8 [64 64]", "MatMulInteger"},
	} {
		srcs := sources[tc.model]
		out, _, err := Export(qatOf(tc.model, tc.params), tc.format, nil)
		if err != nil {
			t.Fatal(err)
		}
		if w := fold.Stored(out).ByName[tc.weight]; w == nil {
			t.Errorf("%s: no stored %s", tc.name, tc.weight)
		} else {
			read := w.Node.OpType
			if b := graph.IntAttr(w.Node, "block_size", 0); b > 0 && w.Node.OpType == "DequantizeLinear" {
				read += fmt.Sprintf(" blocks of %d", b)
			}
			if got := fmt.Sprintf("%s %v", w.Storage, w.Dims); got != tc.stored || read != tc.read {
				t.Errorf("%s: %s is stored as %s, read by %s; want %s, %s", tc.name, tc.weight, got, read, tc.stored, tc.read)
			}
		}
		path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".onnx")
		if err := out.Save(path); err != nil {
			t.Fatal(err)
		}
		file, err := graph.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		back, format, err := fold.Unfold(file)
		if err != nil || format != tc.format {
			t.Fatalf("%s: Unfold: %v (format %q)", tc.name, err, format)
		}
		if err := Refolds(file, back, format); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		// Every clip gives the file's scale bit for bit.
		qs, err := quantize.Find(back)
		if err != nil {
			t.Fatal(err)
		}
		if len(qs) == 0 {
			t.Errorf("%s: read back without quantizers", tc.name)
		}

		cached, err := decode.Load(decode.ModelSpec{Path: path}, seq2seq.DefaultSpecial(), 1)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		rerun, err := decode.Load(decode.ModelSpec{Path: path, Rerun: true}, seq2seq.DefaultSpecial(), 1)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !cached.Cached || cached.Note != "" {
			t.Errorf("%s: cached %v, note %q; want a cache and no note", tc.name, cached.Cached, cached.Note)
		}
		opts := decode.Options{MaxExtra: 8}
		a, err := decode.Decode(cached.Model, srcs, opts)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		b, err := decode.Decode(rerun.Model, srcs, opts)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		same, tokens := 0, 0
		for i := range a {
			tokens += len(b[i].IDs)
			if slices.Equal(a[i].IDs, b[i].IDs) {
				same++
			}
		}
		t.Logf("%s: cached %v, %d of %d translations (%d tokens) identical to the re-run", tc.name, cached.Cached, same, len(a), tokens)
		if same != len(a) || tokens < 2*len(a) {
			t.Errorf("%s: %d of %d translations identical to the re-run's (%d tokens)", tc.name, same, len(a), tokens)
		}
		cached.Close()
		rerun.Close()
	}
}

// TestUnfoldedDamaged loads exports that cannot be read back: each still
// decodes, by re-running, with a note saying why.
func TestUnfoldedDamaged(t *testing.T) {
	decode.RegisterExported(Unfolded)
	qat := qatModel(t, "", quantize.DefaultParams())
	p := quantize.DefaultParams()
	p.WeightBits, p.Granularity, p.BlockSize = 4, quantize.Block, 32
	blocked := qatModel(t, "", p)
	d256 := qatModel(t, fixture.D256, quantize.DefaultParams())
	for _, tc := range []struct {
		name   string
		src    *graph.Model
		format string
		damage func(m *graph.Model)
		note   string
	}{
		{"no record", qat, "qdq", func(m *graph.Model) {
			m.Proto.MetadataProps = slices.DeleteFunc(m.Proto.MetadataProps, func(p *onnx.StringStringEntryProto) bool { return p.Key == quantize.MetadataKey })
		}, "has no qatc.quantization record"},
		{"unknown format", qat, "qdq", func(m *graph.Model) { m.SetMetadata(fold.FormatKey, "int3") }, "the int3 format's rewrites are not read back"},
		{"renamed weight", qat, "qdq", func(m *graph.Model) {
			for _, t := range m.Graph().Initializer {
				if strings.HasSuffix(t.Name, "_quantized") {
					old := t.Name
					t.Name = "w"
					m.Reindex()
					for _, n := range m.Consumers(old) {
						for i := range n.Input {
							if n.Input[i] == old {
								n.Input[i] = "w"
							}
						}
					}
					m.Reindex()
					return
				}
			}
		}, "no stored integers"},
		{"record of other blocks", blocked, "qdq", func(m *graph.Model) {
			rec, err := quantize.ReadRecord(m)
			if err != nil {
				t.Fatal(err)
			}
			for i := range rec.Quantizers {
				if rec.Quantizers[i].BlockSize > 0 {
					rec.Quantizers[i].BlockSize = 16
				}
			}
			if err := quantize.WriteRecord(m, rec); err != nil {
				t.Fatal(err)
			}
		}, "blocks of 32 along axis 1, not the quantizer's"},
		// The logits Gemm's transposed copy of the tied table is not the
		// table's.
		{"other transposed copy", d256, "qoperator", func(m *graph.Model) {
			c := m.Initializer("emb.weight_quantized_transposed")
			c.RawData = slices.Clone(c.RawData)
			c.RawData[0]++
		}, `two stored integers "emb.weight_quantized" and "emb.weight_quantized_transposed"`},
	} {
		out, _, err := Export(tc.src, tc.format, nil)
		if err != nil {
			t.Fatal(err)
		}
		tc.damage(out)
		path := filepath.Join(t.TempDir(), "damaged.onnx")
		if err := out.Save(path); err != nil {
			t.Fatal(err)
		}
		l, err := decode.Load(decode.ModelSpec{Path: path}, seq2seq.DefaultSpecial(), 1)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if l.Cached || !strings.Contains(l.Note, tc.note) || strings.Contains(l.Note, "\n") {
			t.Errorf("%s: cached %v, note %q; want re-running, %q", tc.name, l.Cached, l.Note, tc.note)
		}
		if _, err := decode.Decode(l.Model, [][]int64{{5, 6, 3}}, decode.Options{MaxExtra: 4}); err != nil {
			t.Errorf("%s: decode: %v", tc.name, err)
		}
		l.Close()
	}
}

// qatModel returns a QAT model with p's quantizers: the tiny testmodel
// for model "", else the PyTorch fixture of that name.
func qatModel(t *testing.T, model string, p quantize.Params) *graph.Model {
	t.Helper()
	var m *graph.Model
	var err error
	if model == "" {
		m, err = testmodels.Build(testmodels.Tiny())
	} else {
		m, err = graph.Load(fixture.Torch(t, model))
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := quantize.Insert(m, p); err != nil {
		t.Fatal(err)
	}
	return m
}

package export

import (
	"errors"
	"fmt"
	"math/rand"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qatc/qatc/decode"
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/fold"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/seq2seq"
	"github.com/qatc/qatc/testmodels"
)

// TestUnfolded exports QAT models of the tiny testmodel (8-bit; 4-bit
// weights per block of 32, stored INT4; W4A4; 8-bit weights per block,
// in GuardBlocked's view; 8-bit per channel) in each integer format and
// loads the file as qatc translate does. Every format is read back
// (fold.Unfold): folded again it is the file, integers, scales (from the
// reconstructed clips, bit for bit) and operators (Refolds), it decodes
// through a cache, and the greedy ids through the cache equal those of
// re-running the same file on a fixed set of sources (dynamic too: its
// per-batch activation ranges could in principle differ between a step
// and the whole sequence, but they give the same ids here).
func TestUnfolded(t *testing.T) {
	decode.RegisterExported(Unfolded) // as cmd/qatc's main does
	cfg := testmodels.Tiny()
	rng := rand.New(rand.NewSource(12))
	var srcs [][]int64
	for range 12 {
		s := make([]int64, 2+rng.Intn(9))
		for i := range s {
			s[i] = 4 + rng.Int63n(int64(cfg.Vocab-4))
		}
		srcs = append(srcs, append(s, 3))
	}
	qats := map[string]*graph.Model{}
	qatOf := func(p quantize.Params) *graph.Model {
		key := fmt.Sprintf("%+v", p)
		if qats[key] == nil {
			qat, err := testmodels.Build(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := quantize.Insert(qat, p); err != nil {
				t.Fatal(err)
			}
			qats[key] = qat
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
	dir := t.TempDir()
	for _, tc := range []struct {
		name, format string
		params       quantize.Params
		// stored is how the file stores the first FFN weight (its
		// integers' shape as stored, and the type) and read the node
		// that reads them.
		stored, read string
		cached       bool
		note         string
	}{
		{"qdq", "qdq", w8, "int8 [32 64]", "DequantizeLinear", true, ""},
		{"qoperator", "qoperator", w8, "int8 [32 64]", "MatMulIntegerToFloat", true, ""},
		{"qdq W4 block 32", "qdq", params(4, 8, quantize.Block), "int4 [32 64]", "DequantizeLinear blocks of 32", true, ""},
		{"qdq W4A4", "qdq", params(4, 4, quantize.Tensor), "int4 [32 64]", "DequantizeLinear", true, ""},
		// int8 blocked weights, in GuardBlocked's view [blocks, block, C].
		{"qdq W8 block 32", "qdq", params(8, 8, quantize.Block), "int8 [1 32 64]", "DequantizeLinear blocks of 32", true, ""},
		{"dynamic", "dynamic", w8, "int8 [32 64]", "MatMulInteger", true, ""},
		{"matmulnbits", "matmulnbits", w8, "uint8 MatMulNBits blocks [64 1 32] of 8-bit values, shown as the K×N weight of the product [32 64]", "MatMulNBits", true, ""},
		{"matmulnbits W4 block 32", "matmulnbits", params(4, 8, quantize.Block), "uint8 MatMulNBits blocks [64 1 16] of 4-bit values, shown as the K×N weight of the product [32 64]", "MatMulNBits", true, ""},
		{"matmulnbits W4", "matmulnbits", params(4, 8, quantize.Tensor), "uint8 MatMulNBits blocks [64 1 16] of 4-bit values, shown as the K×N weight of the product [32 64]", "MatMulNBits", true, ""},
		{"matmulnbits W8 per channel", "matmulnbits", params(8, 8, quantize.Channel), "uint8 MatMulNBits blocks [64 1 32] of 8-bit values, shown as the K×N weight of the product [32 64]", "MatMulNBits", true, ""},
	} {
		qat := qatOf(tc.params)
		out, _, err := Export(qat, tc.format, nil)
		if err != nil {
			t.Fatal(err)
		}
		if w := fold.Stored(out).ForTensor("encoder/layer_0/ffn/dense1/kernel"); w == nil {
			t.Errorf("%s: no stored encoder/layer_0/ffn/dense1/kernel", tc.name)
		} else {
			read := w.Node.OpType
			if b := graph.IntAttr(w.Node, "block_size", 0); b > 0 && w.Node.OpType == "DequantizeLinear" {
				read += fmt.Sprintf(" blocks of %d", b)
			}
			if got := fmt.Sprintf("%s %v", w.Storage, w.Dims); got != tc.stored || read != tc.read {
				t.Errorf("%s: the first FFN weight is stored as %s, read by %s; want %s, %s", tc.name, got, read, tc.stored, tc.read)
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
		switch {
		case !tc.cached:
			if !errors.Is(err, fold.ErrUnfold) || !strings.Contains(err.Error(), tc.note) {
				t.Errorf("%s: Unfold: %v, want %q", tc.name, err, tc.note)
			}
		case err != nil || format != tc.format:
			t.Fatalf("%s: Unfold: %v (format %q)", tc.name, err, format)
		default:
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
		}

		cached, err := decode.Load(decode.ModelSpec{Path: path}, seq2seq.DefaultSpecial(), 1)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		rerun, err := decode.Load(decode.ModelSpec{Path: path, Rerun: true}, seq2seq.DefaultSpecial(), 1)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if cached.Cached != tc.cached || !strings.Contains(cached.Note, tc.note) || tc.cached && cached.Note != "" {
			t.Errorf("%s: cached %v, note %q; want %v, %q", tc.name, cached.Cached, cached.Note, tc.cached, tc.note)
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

// TestUnfoldedDamaged loads qdq exports that cannot be read back: each
// still decodes, by re-running, with a note saying why.
func TestUnfoldedDamaged(t *testing.T) {
	decode.RegisterExported(Unfolded)
	qat, err := testmodels.Build(testmodels.Tiny())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := quantize.Insert(qat, quantize.DefaultParams()); err != nil {
		t.Fatal(err)
	}
	blocked, err := testmodels.Build(testmodels.Tiny())
	if err != nil {
		t.Fatal(err)
	}
	p := quantize.DefaultParams()
	p.WeightBits, p.Granularity, p.BlockSize = 4, quantize.Block, 32
	if _, err := quantize.Insert(blocked, p); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		blocked bool
		damage  func(m *graph.Model)
		note    string
	}{
		{"no record", false, func(m *graph.Model) {
			m.Proto.MetadataProps = slices.DeleteFunc(m.Proto.MetadataProps, func(p *onnx.StringStringEntryProto) bool { return p.Key == quantize.MetadataKey })
		}, "has no qatc.quantization record"},
		{"unknown format", false, func(m *graph.Model) { m.SetMetadata(fold.FormatKey, "int3") }, "the int3 format's rewrites are not read back"},
		{"renamed weight", false, func(m *graph.Model) {
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
		{"record of other blocks", true, func(m *graph.Model) {
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
	} {
		src := qat
		if tc.blocked {
			src = blocked
		}
		out, _, err := Export(src, "qdq", nil)
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

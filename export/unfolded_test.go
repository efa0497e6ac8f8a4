package export

import (
	"errors"
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

// TestUnfolded exports a QAT model of the tiny testmodel in each integer
// format and loads the file as qatc translate does. qdq and qoperator are
// read back (fold.Unfold): folded again they are the file, integers,
// scales (from the reconstructed clips, bit for bit) and operators
// (Refolds), they decode through a cache, and the greedy ids through the
// cache equal those of re-running the same file on a fixed set of
// sources. dynamic and matmulnbits are not read back: they decode by
// re-running, with a note naming why.
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
	qat, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := quantize.Insert(qat, quantize.DefaultParams()); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		format string
		cached bool
		note   string
	}{
		{"qdq", true, ""},
		{"qoperator", true, ""},
		{"dynamic", false, "the dynamic format's rewrites are not read back"},
		{"matmulnbits", false, "the matmulnbits format's rewrites are not read back"},
	} {
		out, _, err := Export(qat, tc.format, nil)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, tc.format+".onnx")
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
				t.Errorf("%s: Unfold: %v, want %q", tc.format, err, tc.note)
			}
		case err != nil || format != tc.format:
			t.Fatalf("%s: Unfold: %v (format %q)", tc.format, err, format)
		default:
			if err := Refolds(file, back, format); err != nil {
				t.Errorf("%s: %v", tc.format, err)
			}
			// Every clip gives the file's scale bit for bit.
			qs, err := quantize.Find(back)
			if err != nil {
				t.Fatal(err)
			}
			if len(qs) == 0 {
				t.Errorf("%s: read back without quantizers", tc.format)
			}
		}

		cached, err := decode.Load(decode.ModelSpec{Path: path}, seq2seq.DefaultSpecial(), 1)
		if err != nil {
			t.Fatalf("%s: %v", tc.format, err)
		}
		rerun, err := decode.Load(decode.ModelSpec{Path: path, Rerun: true}, seq2seq.DefaultSpecial(), 1)
		if err != nil {
			t.Fatalf("%s: %v", tc.format, err)
		}
		if cached.Cached != tc.cached || !strings.Contains(cached.Note, tc.note) || tc.cached && cached.Note != "" {
			t.Errorf("%s: cached %v, note %q; want %v, %q", tc.format, cached.Cached, cached.Note, tc.cached, tc.note)
		}
		opts := decode.Options{MaxExtra: 8}
		a, err := decode.Decode(cached.Model, srcs, opts)
		if err != nil {
			t.Fatalf("%s: %v", tc.format, err)
		}
		b, err := decode.Decode(rerun.Model, srcs, opts)
		if err != nil {
			t.Fatalf("%s: %v", tc.format, err)
		}
		same, tokens := 0, 0
		for i := range a {
			tokens += len(b[i].IDs)
			if slices.Equal(a[i].IDs, b[i].IDs) {
				same++
			}
		}
		t.Logf("%s: cached %v, %d of %d translations (%d tokens) identical to the re-run", tc.format, cached.Cached, same, len(a), tokens)
		if same != len(a) || tokens < 2*len(a) {
			t.Errorf("%s: %d of %d translations identical to the re-run's (%d tokens)", tc.format, same, len(a), tokens)
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
	for _, tc := range []struct {
		name   string
		damage func(m *graph.Model)
		note   string
	}{
		{"no record", func(m *graph.Model) {
			m.Proto.MetadataProps = slices.DeleteFunc(m.Proto.MetadataProps, func(p *onnx.StringStringEntryProto) bool { return p.Key == quantize.MetadataKey })
		}, "has no qatc.quantization record"},
		{"unknown format", func(m *graph.Model) { m.SetMetadata(fold.FormatKey, "int3") }, "the int3 format's rewrites are not read back"},
		{"renamed weight", func(m *graph.Model) {
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
	} {
		out, _, err := Export(qat, "qdq", nil)
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

package seq2seq

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
)

// The Optimum-layout fixtures (scripts/fixtures/optimum.py).
const (
	marianDir = "testdata/optimum/marian"
	mergedDir = "testdata/optimum/marian_merged"
	t5Dir     = "testdata/optimum/t5"
)

// copyDir copies the model directory src (regular files) into a new
// temporary directory, leaving out the files named in skip.
func copyDir(t *testing.T, src string, skip ...string) string {
	t.Helper()
	dst := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if slices.Contains(skip, e.Name()) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// TestReadDir reads the fixtures' layouts: config ids, the merged decoder
// split into its branches, and the decoder with past canonical (every
// tensor it shares with the decoder under the decoder's name, every
// product paired with the decoder's).
func TestReadDir(t *testing.T) {
	for _, tc := range []struct {
		dir              string
		separate, merged bool
		special          Special
		products         int
	}{
		{marianDir, true, false, Special{Pad: 127, BOS: 127, EOS: 0}, 25},
		{mergedDir, false, true, Special{Pad: 127, BOS: 127, EOS: 0}, 25},
		{t5Dir, true, false, Special{Pad: 0, BOS: 0, EOS: 1}, 0},
	} {
		d, err := ReadDir(fixture.Path(t, tc.dir))
		if err != nil {
			t.Fatalf("%s: %v", tc.dir, err)
		}
		if d.Separate != tc.separate || d.Merged != tc.merged {
			t.Errorf("%s: layout %+v", tc.dir, d.Layout)
		}
		if sp, ok := d.Config.Special(); !ok || sp != tc.special {
			t.Errorf("%s: special ids %+v (%v), want %+v", tc.dir, sp, ok, tc.special)
		}
		wp := d.DecoderWithPast
		shared := 0
		for _, init := range wp.Graph().Initializer {
			if graph.NumElements(init.Dims) < 2 || !isFloatTensor(init) {
				continue
			}
			if !sameValues(init, d.Decoder.Initializer(init.Name)) {
				t.Errorf("%s: the decoder with past's %s is not the decoder's tensor of that name", tc.dir, init.Name)
			}
			shared++
		}
		paired := 0
		for _, n := range wp.Graph().Node {
			if n.OpType != "MatMul" && n.OpType != "Gather" {
				continue
			}
			if weighted := firstWeight(&graphFacts{m: wp}, n) != ""; weighted || n.OpType == "MatMul" {
				if !slices.Contains(valuesOf(d.withPast), n.Name) {
					t.Errorf("%s: product %s of the decoder with past has no counterpart", tc.dir, n.Name)
				}
				paired++
			}
		}
		if tc.products > 0 && paired < tc.products {
			t.Errorf("%s: %d products paired, want at least %d", tc.dir, paired, tc.products)
		}
		if shared == 0 {
			t.Errorf("%s: the decoders share no tensor", tc.dir)
		}
	}
}

func valuesOf(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// TestMergeSplit rebuilds the merged decoder from the separate ones and
// splits it again: the branches are the decoders (nodes and tensor
// values), the stand-ins for the cross-attention cache are gone again,
// and the If is on use_cache_branch with the decoder's outputs.
func TestMergeSplit(t *testing.T) {
	d, err := ReadDir(fixture.Path(t, marianDir))
	if err != nil {
		t.Fatal(err)
	}
	m, err := MergeDecoders(d.Decoder, d.DecoderWithPast)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Graph().Node) != 1 || m.Graph().Node[0].OpType != "If" || m.Input(UseCacheBranch) == nil {
		t.Fatalf("merged graph: %d nodes, inputs %v", len(m.Graph().Node), m.Graph().Input)
	}
	if got, want := len(m.Graph().Output), len(d.Decoder.Graph().Output); got != want {
		t.Errorf("merged: %d outputs, the decoder has %d", got, want)
	}
	// Through bytes, as a file would be read.
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := graph.Parse(data, "")
	if err != nil {
		t.Fatal(err)
	}
	np, wp, err := SplitMerged(back, "merged")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		name      string
		got, want *graph.Model
	}{{"no past", np, d.Decoder}, {"with past", wp, d.DecoderWithPast}} {
		if g, w := len(p.got.Graph().Node), len(p.want.Graph().Node); g != w {
			t.Errorf("%s: %d nodes, want %d", p.name, g, w)
		}
		if g, w := outputNames(p.got), outputNames(p.want); !slices.Equal(g, w) {
			t.Errorf("%s: outputs %v, want %v", p.name, g, w)
		}
		for _, init := range p.want.Graph().Initializer {
			if !sameValues(init, p.got.Initializer(init.Name)) {
				t.Errorf("%s: initializer %s lost or changed", p.name, init.Name)
			}
		}
	}
}

func outputNames(m *graph.Model) []string {
	var out []string
	for _, o := range m.Graph().Output {
		out = append(out, o.Name)
	}
	return out
}

// TestLoadSave composes a directory and writes the composition back
// unchanged: every tensor of every file keeps its values, the layout its
// files, the config its fields and companions travel along; written with
// external data, the directory reads back the same.
func TestLoadSave(t *testing.T) {
	// Optimum may write all four files.
	both := copyDir(t, fixture.Path(t, marianDir))
	b, err := os.ReadFile(filepath.Join(fixture.Path(t, mergedDir), MergedFile))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(both, MergedFile), b, 0o644)
	for _, dir := range []string{marianDir, mergedDir, both} {
		src := dir
		if !filepath.IsAbs(dir) {
			src = fixture.Path(t, dir)
		}
		s, err := Load(src, 127)
		if err != nil {
			t.Fatal(err)
		}
		if s.Graph.Input(SourceIDs) == nil || s.Graph.Input(TargetIDs) == nil || s.Graph.Output(Logits) == nil {
			t.Fatalf("%s: the composition's inputs %v", dir, s.Graph.Graph().Input)
		}
		// External data for every tensor of 1 KiB or more.
		for _, g := range []*graph.Model{s.Dir.Encoder, s.Dir.Decoder, s.Dir.DecoderWithPast, s.Graph} {
			g.External = true
		}
		out := filepath.Join(t.TempDir(), "out")
		if err := s.Save(out); err != nil {
			t.Fatal(err)
		}
		lay, err := Stat(out)
		if err != nil {
			t.Fatal(err)
		}
		if lay.Separate != s.Dir.Separate || lay.Merged != s.Dir.Merged {
			t.Errorf("%s: wrote layout %+v, read %+v", dir, *lay, s.Dir.Layout)
		}
		for _, f := range lay.Files() {
			if _, err := os.Stat(filepath.Join(out, f+".data")); err != nil {
				t.Errorf("%s: %s has no external data: %v", dir, f, err)
			}
		}
		if _, err := os.Stat(filepath.Join(src, "test.src")); err == nil {
			if _, err := os.Stat(filepath.Join(out, "test.src")); err != nil {
				t.Errorf("%s: the companion files were not copied: %v", dir, err)
			}
		}
		orig, err := ReadDir(src)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ReadDir(out)
		if err != nil {
			t.Fatal(err)
		}
		if back.Config.Qatc.ID == "" || back.Config.ModelType != "marian" || !back.Config.Has("share_encoder_decoder_embeddings") {
			t.Errorf("%s: config %+v", dir, back.Config)
		}
		for i, g := range orig.Graphs() {
			h := back.Graphs()[i]
			if len(g.Graph.Graph().Node) != len(h.Graph.Graph().Node) {
				t.Errorf("%s: %s has %d nodes, was %d", dir, g.File, len(h.Graph.Graph().Node), len(g.Graph.Graph().Node))
			}
			for _, init := range g.Graph.Graph().Initializer {
				if !sameValues(init, h.Graph.Initializer(init.Name)) {
					t.Errorf("%s: %s: %s changed", dir, g.File, init.Name)
				}
			}
		}
	}
}

// TestBadDirs checks the one-line errors for directories that are not one
// model in Optimum's layout.
func TestBadDirs(t *testing.T) {
	src := fixture.Path(t, marianDir)
	merged := fixture.Path(t, mergedDir)
	edit := func(dir, file string, f func(m *graph.Model)) {
		t.Helper()
		m, err := graph.Load(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		f(m)
		m.Reindex()
		if err := m.Save(filepath.Join(dir, file)); err != nil {
			t.Fatal(err)
		}
	}
	// scale multiplies the first float matrix m's products read.
	scale := func(m *graph.Model) {
		for _, n := range m.Graph().Node {
			if n.OpType != "MatMul" {
				continue
			}
			if init := m.Initializer(n.Input[1]); init != nil {
				v, _ := graph.Floats(init)
				for i := range v {
					v[i] *= 1.5
				}
				graph.SetFloats(init, v)
				return
			}
		}
	}
	for _, tc := range []struct {
		name string
		dir  func() string
		want string
	}{
		{"no encoder", func() string { return copyDir(t, src, EncoderFile) }, "encoder_model.onnx is missing"},
		{"no decoder with past", func() string { return copyDir(t, src, DecoderWithPastFile) }, "decoder_with_past_model.onnx is missing"},
		{"no config", func() string { return copyDir(t, src, ConfigFile) }, "no config.json"},
		{"with past of another model", func() string {
			d := copyDir(t, src)
			edit(d, DecoderWithPastFile, scale)
			return d
		}, "come from different models"},
		{"encoder of another model", func() string {
			d := copyDir(t, src)
			edit(d, EncoderFile, func(m *graph.Model) {
				v, _ := graph.Floats(m.Initializer("model.shared.weight"))
				v[5] += 1
				graph.SetFloats(m.Initializer("model.shared.weight"), v)
			})
			return d
		}, "come from different models"},
		{"merged without use_cache_branch", func() string {
			d := copyDir(t, merged)
			edit(d, MergedFile, func(m *graph.Model) {
				for _, in := range m.Graph().Input {
					if in.Name == UseCacheBranch {
						in.Name = "use_cache"
					}
				}
				m.Graph().Node[0].Input[0] = "use_cache"
			})
			return d
		}, "no input use_cache_branch"},
		{"merged with another If", func() string {
			d := copyDir(t, merged)
			edit(d, MergedFile, func(m *graph.Model) {
				m.Graph().Node[0].Input[0] = "flag"
				m.Graph().Input = append(m.Graph().Input, graph.ValueInfo("flag", graph.Bool, []int64{1}))
			})
			return d
		}, "0 If nodes on use_cache_branch"},
	} {
		_, err := ReadDir(tc.dir())
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: got %v, want one line saying %q", tc.name, err, tc.want)
		}
	}
}

// TestCheckOutput checks where a directory may be written: a new or empty
// one, or one qatc wrote, which it replaces whole; never over a directory
// of other files or over a file.
func TestCheckOutput(t *testing.T) {
	s, err := Load(fixture.Path(t, marianDir), 127)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	out := filepath.Join(root, "out")
	if err := s.Save(out); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(out, "decoder_model.onnx.data"), []byte("stale"), 0o644)
	if err := s.Save(out); err != nil {
		t.Fatalf("replacing an earlier output: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "decoder_model.onnx.data")); err == nil {
		t.Error("the replaced directory's files survive")
	}
	other := filepath.Join(root, "other")
	os.Mkdir(other, 0o755)
	os.WriteFile(filepath.Join(other, "notes.txt"), []byte("mine"), 0o644)
	file := filepath.Join(root, "file")
	os.WriteFile(file, []byte("x"), 0o644)
	for _, p := range []string{other, file, fixture.Path(t, marianDir)} {
		err := s.Dir.Write(p)
		if err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: got %v, want a one-line refusal", p, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(other, "notes.txt")); string(b) != "mine" {
		t.Error("the refused directory was changed")
	}
	entries, _ := os.ReadDir(root)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "file other out" {
		t.Errorf("left in the parent: %v", names)
	}
}

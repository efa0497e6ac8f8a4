package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/seq2seq"
	"github.com/qatc/qatc/testmodels/demo"
)

// withStdin runs f with text on standard input.
func withStdin(t *testing.T, text string, f func()) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		w.WriteString(text)
		w.Close()
	}()
	old := os.Stdin
	os.Stdin = r
	defer func() { os.Stdin, _ = old, r.Close() }()
	f()
}

// TestTranslate exports incremental directories of the tiny model and
// translates with them, with the model file itself (cached decoder built
// in memory, or re-run with --no-cache), from a file or standard input,
// greedily or with beams; eval and bench read a directory too.
func TestTranslate(t *testing.T) {
	dir := t.TempDir()
	model, src, tgt := tinySetup(t, dir)
	fp32Dir := filepath.Join(dir, "fp32.inc")
	out := mustQatc(t, "export", model, "--incremental", "-o", fp32Dir, "--format", "fp32", "--src", src)
	if !strings.Contains(out, "decoder_with_past_model.onnx") || !strings.Contains(out, "top-1 agreement 100.00%") {
		t.Errorf("export --incremental: %s", out)
	}
	qat := filepath.Join(dir, "qat.onnx")
	mustQatc(t, "insert", model, "-o", qat, "--calib-src", src, "--calib-tgt", tgt)
	qopDir := filepath.Join(dir, "qop.inc")
	mustQatc(t, "export", qat, "--incremental", "-o", qopDir, "--format", "qoperator", "--src", src)

	lines := strings.Split(strings.TrimSpace(mustRead(t, src)), "\n")[:20]
	srcFile := writeFile(t, dir, "some.src", strings.Join(lines, "\n")+"\n")
	fromDir := mustQatc(t, "translate", fp32Dir, "--src", srcFile, "--threads", "2")
	if n := strings.Count(fromDir, "\n"); n != 20 {
		t.Fatalf("translate: %d lines for 20 sources:\n%s", n, fromDir)
	}
	if fromFile := mustQatc(t, "translate", model, "--src", srcFile, "--batch", "3"); fromFile != fromDir {
		t.Errorf("the model file translates otherwise than its fp32 directory:\n%s\n%s", fromFile, fromDir)
	}
	if rerun := mustQatc(t, "translate", model, "--src", srcFile, "--no-cache"); rerun != fromDir {
		t.Errorf("re-running the model translates otherwise than its cache:\n%s\n%s", rerun, fromDir)
	}
	var stdin string
	withStdin(t, strings.Join(lines, "\n")+"\n", func() { stdin = mustQatc(t, "translate", fp32Dir) })
	if stdin != fromDir {
		t.Errorf("standard input translates otherwise than the file")
	}
	hyp := filepath.Join(dir, "out.hyp")
	mustQatc(t, "translate", qopDir, "--src", srcFile, "-o", hyp, "--beam", "3")
	if n := strings.Count(mustRead(t, hyp), "\n"); n != 20 {
		t.Errorf("-o holds %d lines", n)
	}
	// An exported full-sequence file decodes through the cache built from
	// it (main hands export.Unfolded to decode), as its directory does.
	qopFile := filepath.Join(dir, "qop.onnx")
	mustQatc(t, "export", qat, "-o", qopFile, "--format", "qoperator", "--src", src)
	code, fromFile, errOut := qatc(t, "translate", qopFile, "--src", srcFile)
	if want := mustQatc(t, "translate", qopDir, "--src", srcFile); code != 0 || strings.Contains(errOut, "without a cache") || fromFile != want {
		t.Errorf("the exported qoperator file (exit %d, %s) translates otherwise than its directory:\n%s\n%s", code, errOut, fromFile, want)
	}

	out = mustQatc(t, "eval", fp32Dir, model, "--src", srcFile, "--ref", srcFile, "--threads", "1")
	if !strings.Contains(out, "fp32.inc") || !strings.Contains(out, "100.00%") {
		t.Errorf("eval: %s", out)
	}
	out = mustQatc(t, "bench", qopDir, fp32Dir, "--batch", "3", "--src-len", "5", "--tgt-len", "4", "--iters", "2", "--warmup", "1", "--threads", "1")
	if row(out, "qop.inc")[1] != "yes" || !strings.Contains(out, "step ms") {
		t.Errorf("bench: %s", out)
	}
	out = mustQatc(t, "bench", qopDir, model, "--src", srcFile, "--rounds", "1", "--threads", "2", "--no-cache")
	if row(out, "tiny.onnx")[1] != "no" || row(out, "qop.inc")[1] != "yes" || !strings.Contains(out, "sent/s") {
		t.Errorf("bench --src: %s", out)
	}
}

// row returns the fields of the table line starting with first (two
// empty fields when there is none).
func row(table, first string) []string {
	for _, l := range strings.Split(table, "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == first {
			return f
		}
	}
	return []string{"", ""}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestTranslateDemo translates demo test sentences as text with the
// trained demo model: most translations are the reference.
func TestTranslateDemo(t *testing.T) {
	pairs := demo.Generate(3, 8)
	var src []string
	for _, p := range pairs {
		src = append(src, p.Src)
	}
	dir := t.TempDir()
	f := writeFile(t, dir, "test.src", strings.Join(src, "\n")+"\n")
	code, out, errOut := qatc(t, "translate", "../../testmodels/demo/data/model.onnx", "--spm", "../../testmodels/demo/data/spm.model", "--src", f)
	if code != 0 {
		t.Fatal(errOut)
	}
	got := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	same := 0
	for i, p := range pairs {
		if i < len(got) && got[i] == p.Tgt {
			same++
		}
	}
	if len(got) != len(pairs) || same < 6 {
		t.Errorf("%d of %d translations are the reference:\n%s", same, len(pairs), out)
	}
}

// Bad translate and incremental-export inputs: one line, exit 1 or 2,
// nothing written.
func TestTranslateBadInputs(t *testing.T) {
	dir := t.TempDir()
	model, src, _ := tinySetup(t, dir)
	good := filepath.Join(dir, "good.inc")
	mustQatc(t, "export", model, "--incremental", "-o", good, "--format", "fp32", "--src", src)
	other := filepath.Join(dir, "other.inc")
	mustQatc(t, "export", model, "--incremental", "-o", other, "--format", "fp32", "--src", src)
	// A directory missing its decoder with past, and one mixing exports.
	broken := filepath.Join(dir, "broken.inc")
	mixed := filepath.Join(dir, "mixed.inc")
	for _, d := range []string{broken, mixed} {
		os.Mkdir(d, 0o755)
		for _, f := range append(seq2seq.Files, seq2seq.ConfigFile) {
			b, _ := os.ReadFile(filepath.Join(good, f))
			if d == mixed && f == seq2seq.DecoderFile {
				b, _ = os.ReadFile(filepath.Join(other, f))
			}
			if d == broken && f == seq2seq.DecoderWithPastFile {
				continue
			}
			os.WriteFile(filepath.Join(d, f), b, 0o644)
		}
	}
	notes := filepath.Join(dir, "notes")
	os.Mkdir(notes, 0o755)
	writeFile(t, notes, "mine.txt", "mine")
	bigram := filepath.Join(dir, "lookup.onnx")
	if err := lookupModel().Save(bigram); err != nil {
		t.Fatal(err)
	}
	srcFile := writeFile(t, dir, "s.src", "5 6 7\n8 9\n")
	empty := writeFile(t, dir, "empty.src", "5 6 7\n\n8 9\n")
	out := filepath.Join(dir, "out.txt")
	newDir := filepath.Join(dir, "new.inc")
	wantRefused(t, []refusal{
		{"beam 0", []string{"translate", good, "--src", srcFile, "--beam", "0", "-o", out}, 2, "--beam 0"},
		{"empty line", []string{"translate", good, "--src", empty, "-o", out}, 1, "empty.src:2: empty line"},
		{"missing file", []string{"translate", broken, "--src", srcFile, "-o", out}, 1, "decoder_with_past_model.onnx is missing"},
		{"mixed exports", []string{"translate", mixed, "--src", srcFile, "-o", out}, 1, "another export"},
		{"no model files", []string{"translate", notes, "--src", srcFile, "-o", out}, 1, "holds none of encoder_model.onnx"},
		{"unmappable model", []string{"export", bigram, "--incremental", "-o", newDir, "--format", "fp32", "--src", srcFile}, 1, "recognise transformer"},
		{"directory of other files", []string{"export", model, "--incremental", "-o", notes, "--format", "fp32", "--src", src}, 1, "mine.txt"},
		{"unknown format", []string{"export", model, "--incremental", "-o", newDir, "--format", "lightseq", "--src", src}, 1, "unknown incremental format"},
	}, nil, nil, out, newDir)
	if b, _ := os.ReadFile(filepath.Join(notes, "mine.txt")); string(b) != "mine" {
		t.Error("the refused directory was changed")
	}
}

// lookupModel is a seq2seq graph without attention: the logits are a
// table row of the previous target token.
func lookupModel() *graph.Model {
	m := graph.New("lookup", 17)
	m.AddInput("src_ids", graph.Int64, []int64{-1, -1}, "batch", "src_len")
	m.AddInput("tgt_ids", graph.Int64, []int64{-1, -1}, "batch", "tgt_len")
	m.AddInitializer(graph.FloatTensor("next", []int64{16, 16}, make([]float32, 256)))
	m.Op("Gather", "", []string{"next", "tgt_ids"}, []string{"logits"}, graph.AttrInt("axis", 0))
	m.AddOutput("logits", graph.Float, []int64{-1, -1, 16}, "batch", "tgt_len")
	return m
}

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/passes/quantize"
)

// TestInsertDumpAfter runs insert with calibration, dumping the graph
// after every pass: one file per pass that ran, the fp32 graph until the
// insert pass and the QAT graph from there, the last dump the model -o
// holds; --passes lists the pipeline without running it.
func TestInsertDumpAfter(t *testing.T) {
	dir := t.TempDir()
	src, tgt := fixtureText(t, dir)
	fp32 := fixture.Torch(t, fixture.Transformer17)
	out, dump := filepath.Join(dir, "qat.onnx"), filepath.Join(dir, "dump")
	code, stdout, errOut := qatc(t, "insert", fp32, "-o", out, "--calib-src", src, "--calib-tgt", tgt, "--dump-after", "all", dump)
	if code != 0 || !strings.Contains(stdout, "68 quantizers") {
		t.Fatalf("insert --dump-after all: exit %d\n%s%s", code, stdout, errOut)
	}
	files := dirNames(t, dump)
	if want := "01-read.onnx 03-collect.onnx 04-insert.onnx 05-calibrate.onnx 06-sample.onnx"; strings.Join(files, " ") != want {
		t.Errorf("dumped %v, want %s (smooth is off)", files, want)
	}
	for _, f := range files {
		if !strings.Contains(errOut, "dumped "+filepath.Join(dump, f)) {
			t.Errorf("stderr does not say it dumped %s:\n%s", f, errOut)
		}
	}
	count := func(path string) int {
		m, err := graph.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		us, err := quantize.Units(m)
		if err != nil {
			t.Fatal(err)
		}
		return len(us)
	}
	for f, want := range map[string]int{"03-collect.onnx": 0, "04-insert.onnx": 68, "06-sample.onnx": 68} {
		if n := count(filepath.Join(dump, f)); n != want {
			t.Errorf("%s has %d quantizers, want %d", f, n, want)
		}
	}
	last, err := os.ReadFile(filepath.Join(dump, "06-sample.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	if written, _ := os.ReadFile(out); string(written) != string(last) {
		t.Errorf("the last dump differs from the model -o wrote")
	}

	code, stdout, errOut = qatc(t, "insert", fp32, "-o", filepath.Join(dir, "never.onnx"), "--passes")
	if code != 0 || !strings.Contains(stdout, "insert pipeline, given fp32") || !strings.Contains(stdout, "collect") || !strings.Contains(stdout, "(off: no calibration data (--calib-src))") {
		t.Errorf("--passes: exit %d\n%s%s", code, stdout, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "never.onnx")); err == nil {
		t.Error("--passes wrote the model")
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--dump-after", "fold", dump}, "--dump-after fold: insert has no such pass (its passes: read, smooth, collect, insert, calibrate, sample, or all)"},
		{[]string{"--dump-after=all"}, "--dump-after PASS|all DIR"},
	} {
		code, _, errOut := qatc(t, append([]string{"insert", fp32, "-o", filepath.Join(dir, "bad.onnx")}, tc.args...)...)
		wantError(t, code, errOut, 2, tc.want)
	}
}

// TestFinetuneDumpAfter fine-tunes the tiny model for one step, dumping
// after autodiff: the QAT model and, beside it, the training graph that
// --save-training-graph writes too.
func TestFinetuneDumpAfter(t *testing.T) {
	dir := t.TempDir()
	model, src, tgt := tinySetup(t, dir)
	qat, tuned, dump := filepath.Join(dir, "qat.onnx"), filepath.Join(dir, "tuned.onnx"), filepath.Join(dir, "dump")
	if code, _, errOut := qatc(t, "insert", model, "-o", qat); code != 0 {
		t.Fatalf("insert: exit %d: %s", code, errOut)
	}
	saved := filepath.Join(dir, "training.onnx")
	code, _, errOut := qatc(t, "finetune", qat, "-o", tuned, "--src", src, "--tgt", tgt, "--steps", "1", "--batch-tokens", "256",
		"--threads", "1", "--save-training-graph", saved, "--dump-after", "autodiff,write-back", dump)
	if code != 0 {
		t.Fatalf("finetune: exit %d: %s", code, errOut)
	}
	files := dirNames(t, dump)
	if want := "03-autodiff.onnx 03-autodiff.training.onnx 05-write-back.onnx"; strings.Join(files, " ") != want {
		t.Errorf("dumped %v, want %s", files, want)
	}
	a, err := os.ReadFile(filepath.Join(dump, "03-autodiff.training.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(saved); string(a) != string(b) {
		t.Errorf("the dumped training graph differs from --save-training-graph's")
	}
	code, stdout, _ := qatc(t, "train", model, "-o", tuned, "--src", src, "--tgt", tgt, "--passes")
	if code != 0 || !strings.Contains(stdout, "train pipeline") || !strings.Contains(stdout, "quantizers  -               fp32") {
		t.Errorf("train --passes: exit %d\n%s", code, stdout)
	}
}

// TestExportDumpAfter exports the tiny model's QAT file to qoperator,
// dumping after every pass: the folded qdq form after fold (every weight
// an integer initializer, no MatMulIntegerToFloat yet), the format's
// rewrite after qoperator, and after the last pass the very model -o
// holds; the incremental graphs' integer-cache pass is off. --passes
// lists the pipeline; the routes that run no pipeline refuse both flags.
func TestExportDumpAfter(t *testing.T) {
	dir := t.TempDir()
	model, src, _ := tinySetup(t, dir)
	qat, out, dump := filepath.Join(dir, "qat.onnx"), filepath.Join(dir, "q.onnx"), filepath.Join(dir, "dump")
	mustQatc(t, "insert", model, "-o", qat)
	code, stdout, errOut := qatc(t, "export", qat, "-o", out, "--format", "qoperator", "--src", src, "--dump-after", "all", dump)
	if code != 0 || !strings.Contains(stdout, "top-1 agreement") {
		t.Fatalf("export --dump-after all: exit %d\n%s%s", code, stdout, errOut)
	}
	files := dirNames(t, dump)
	if want := "01-fold.onnx 03-qoperator.onnx 04-guard-blocked.onnx 05-check-folded.onnx"; strings.Join(files, " ") != want {
		t.Errorf("dumped %v, want %s (int-cache is off)", files, want)
	}
	ops := func(f string) map[string]int {
		m, err := graph.Load(filepath.Join(dump, f))
		if err != nil {
			t.Fatal(err)
		}
		n := map[string]int{}
		for _, nd := range m.Graph().Node {
			n[nd.OpType]++
		}
		return n
	}
	folded, converted := ops("01-fold.onnx"), ops("03-qoperator.onnx")
	if folded["MatMulIntegerToFloat"] != 0 || folded["DequantizeLinear"] == 0 || converted["MatMulIntegerToFloat"] == 0 {
		t.Errorf("fold dump: %d MatMulIntegerToFloat, %d DequantizeLinear; qoperator dump: %d MatMulIntegerToFloat",
			folded["MatMulIntegerToFloat"], folded["DequantizeLinear"], converted["MatMulIntegerToFloat"])
	}
	last, err := os.ReadFile(filepath.Join(dump, "05-check-folded.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	if written, _ := os.ReadFile(out); string(written) != string(last) {
		t.Errorf("the last dump differs from the model -o wrote")
	}

	code, stdout, errOut = qatc(t, "export", qat, "-o", filepath.Join(dir, "never.onnx"), "--format", "dynamic", "--passes")
	if code != 0 || !strings.Contains(stdout, "export pipeline, given qat") || !strings.Contains(stdout, "dynamic") || !strings.Contains(stdout, "(off: only for the incremental graphs' integer cache)") {
		t.Errorf("--passes: exit %d\n%s%s", code, stdout, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "never.onnx")); err == nil {
		t.Error("--passes wrote the model")
	}
	wantRefused(t, []refusal{
		{"no such pass", []string{"-o", filepath.Join(dir, "bad.onnx"), "--dump-after", "calibrate", dump}, 2, "--dump-after calibrate: export has no such pass (its passes: fold, int-cache, qdq, guard-blocked, check-folded, or all)"},
		{"incremental", []string{"-o", filepath.Join(dir, "bad.inc"), "--incremental", "--passes"}, 2, "not of --incremental"},
		{"lightseq", []string{"-o", filepath.Join(dir, "bad.pb"), "--format", "lightseq", "--dump-after", "all", dump}, 2, "ONNX formats"},
	}, []string{"export", qat}, nil, filepath.Join(dir, "bad.onnx"), filepath.Join(dir, "bad.inc"), filepath.Join(dir, "bad.pb"))
}

// dirNames lists the names in dir, sorted.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

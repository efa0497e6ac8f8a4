package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/inspect"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
)

// qatc runs the command line in-process and returns exit code, stdout and
// stderr.
func qatc(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(append([]string{"qatc"}, args...), &out, &errOut)
	return code, out.String(), errOut.String()
}

// mustQatc runs the command line in-process and returns its stdout,
// failing the test unless it exits 0.
func mustQatc(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := qatc(t, args...)
	if code != 0 {
		t.Fatalf("qatc %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// wantError checks that a command failed with exit code want and one
// stderr line mentioning mention.
func wantError(t *testing.T, code int, errOut string, want int, mention string) {
	t.Helper()
	if code != want || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, mention) {
		t.Errorf("exit %d (want %d), stderr %q (want one line mentioning %q)", code, want, errOut, mention)
	}
}

func TestRunMatchesPyTorch(t *testing.T) {
	for _, model := range []string{fixture.Transformer14, fixture.Transformer17} {
		code, out, errOut := qatc(t, "run", fixture.Torch(t, model),
			"--input", "src_ids="+fixture.Torch(t, fixture.TransformerSrc),
			"--input", "tgt_ids="+fixture.Torch(t, fixture.TransformerTgt),
			"--expect", "logits="+fixture.Torch(t, fixture.TransformerLogits), "--atol", "1e-4")
		if code != 0 || !strings.Contains(out, "ok (max abs err") {
			t.Errorf("%s: exit %d\n%s%s", model, code, out, errOut)
		}
	}
}

func TestRunExpectFailsAndSaves(t *testing.T) {
	dir := t.TempDir()
	// Perturb the reference so that the check must fail at a known element.
	ref, err := ort.ReadNpy(fixture.Torch(t, fixture.TransformerLogits))
	if err != nil {
		t.Fatal(err)
	}
	v := ref.Float32s()
	v[1*7*512+3*512+42] += 0.5
	bad := filepath.Join(dir, "bad.npy")
	if err := ort.WriteNpy(bad, ref); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := qatc(t, "run", fixture.Torch(t, fixture.Transformer17),
		"--input", "src_ids="+fixture.Torch(t, fixture.TransformerSrc),
		"--input", "tgt_ids="+fixture.Torch(t, fixture.TransformerTgt),
		"--expect", "logits="+bad, "--atol", "1e-4", "--save", filepath.Join(dir, "out"))
	if code != 1 || !strings.Contains(out, "FAIL at [1 3 42]") {
		t.Errorf("exit %d, want 1 with the worst element [1 3 42]\n%s%s", code, out, errOut)
	}
	saved, err := ort.ReadNpy(filepath.Join(dir, "out", "logits.npy"))
	if err != nil {
		t.Fatal(err)
	}
	if got := saved.Shape; len(got) != 3 || got[2] != 512 {
		t.Errorf("saved logits shape %v", got)
	}
}

func TestInspect(t *testing.T) {
	code, out, errOut := qatc(t, "inspect", fixture.Torch(t, fixture.Transformer14), "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var s inspect.Summary
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	// 2+2 layers of d=64, FFN 128, vocabulary 512, 64 positions: 4096
	// position values, the tied table written twice by the exporter
	// (32768 elements each), 33472 per encoder and 50240 per decoder
	// layer, two final LayerNorms.
	if s.Parameters != 237312 || s.OpCounts["MatMul"] != 29 || s.OpCounts["Gemm"] != 6 {
		t.Errorf("parameters %d, MatMul %d, Gemm %d", s.Parameters, s.OpCounts["MatMul"], s.OpCounts["Gemm"])
	}
	if len(s.Inputs) != 2 || s.Inputs[0].Shape != "[batch, src_len]" || s.Outputs[0].Shape != "[batch, tgt_len, 512]" {
		t.Errorf("inputs %+v outputs %+v", s.Inputs, s.Outputs)
	}
	code, out, _ = qatc(t, "inspect", fixture.Torch(t, fixture.Transformer17))
	if code != 0 || !strings.Contains(out, "LayerNormalization  12") {
		t.Errorf("text inspect: exit %d\n%s", code, out)
	}
}

func TestCompareIdenticalModels(t *testing.T) {
	code, out, errOut := qatc(t, "compare", fixture.Torch(t, fixture.Transformer14), fixture.Torch(t, fixture.Transformer17), "--json", "--batch", "2", "--len", "5")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var r struct {
		Outputs []struct {
			Output string
			Shape  []int64
			MaxAbs float64 `json:"max_abs_error"`
			Top1   float64 `json:"top1_agreement"`
		}
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err, out)
	}
	if len(r.Outputs) != 1 || r.Outputs[0].Top1 != 1 || r.Outputs[0].MaxAbs > 1e-4 || r.Outputs[0].Shape[1] != 5 {
		t.Errorf("compare: %+v", r.Outputs)
	}
}

// Every bad input is one line on stderr, a non-zero exit, no stack trace.
func TestBadInputs(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	model, err := os.ReadFile(fixture.Torch(t, fixture.Transformer17))
	if err != nil {
		t.Fatal(err)
	}
	empty := write("empty.onnx", nil)
	random := write("random.onnx", bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef, 0x17}, 999))
	truncated := write("truncated.onnx", model[:len(model)/2])
	floatIDs := filepath.Join(dir, "float_ids.npy")
	if err := ort.WriteNpy(floatIDs, ort.Float32([]int64{2, 9}, make([]float32, 18))); err != nil {
		t.Fatal(err)
	}
	rank1 := filepath.Join(dir, "rank1.npy")
	if err := ort.WriteNpy(rank1, ort.Int64([]int64{18}, make([]int64, 18))); err != nil {
		t.Fatal(err)
	}
	notNpy := write("not.npy", []byte("hello"))
	good := fixture.Torch(t, fixture.Transformer17)
	tgt := "tgt_ids=" + fixture.Torch(t, fixture.TransformerTgt)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no model", []string{"inspect"}, 2, "takes one MODEL"},
		{"unknown command", []string{"frob"}, 2, "unknown command \"frob\""},
		{"unknown flag", []string{"inspect", good, "--frobnicate"}, 2, "frobnicate"},
		{"missing file", []string{"inspect", filepath.Join(dir, "nope.onnx")}, 1, "nope.onnx"},
		{"empty file", []string{"inspect", empty}, 1, "empty"},
		{"random bytes", []string{"inspect", random}, 1, "random.onnx"},
		{"truncated", []string{"inspect", truncated}, 1, "truncated.onnx"},
		{"run random bytes", []string{"run", random, "--input", tgt}, 1, "random.onnx"},
		{"wrong dtype", []string{"run", good, "--input", "src_ids=" + floatIDs, "--input", tgt}, 1, "src_ids"},
		{"wrong rank", []string{"run", good, "--input", "src_ids=" + rank1, "--input", tgt}, 1, "src_ids"},
		{"not npy", []string{"run", good, "--input", "src_ids=" + notNpy, "--input", tgt}, 1, "not.npy"},
		{"missing input", []string{"run", good, "--input", tgt}, 1, "src_ids"},
		{"bad input syntax", []string{"run", good, "--input", "src_ids"}, 2, "NAME=FILE"},
		{"unknown expected output", []string{"run", good, "--input", "src_ids=" + fixture.Torch(t, fixture.TransformerSrc), "--input", tgt, "--expect", "probs=" + notNpy}, 1, "probs"},
		{"compare one model", []string{"compare", good}, 2, "two models"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := qatc(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr %q", code, tc.code, errOut)
			}
			if strings.Count(strings.TrimRight(errOut, "\n"), "\n") != 0 || !strings.HasPrefix(errOut, "qatc: ") {
				t.Errorf("stderr is not one qatc line: %q", errOut)
			}
			if !strings.Contains(errOut, tc.want) {
				t.Errorf("stderr %q does not mention %q", errOut, tc.want)
			}
			if strings.Contains(errOut, "goroutine") {
				t.Errorf("stack trace in %q", errOut)
			}
		})
	}
}

// writeClassifier writes dir/classifier.onnx, a model that is not
// seq2seq (one rank-2 output), and returns its path.
func writeClassifier(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "classifier.onnx")
	b := graph.New("classifier", 17)
	b.AddInput("x", graph.Float, []int64{-1, 4}, "batch")
	b.Op("Relu", "relu", []string{"x"}, []string{"y"})
	b.AddOutput("y", graph.Float, []int64{-1, 4}, "batch")
	if err := b.Save(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeFile writes text to dir/name and returns its path.
func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// insertRecord inserts quantizers into model (qatc insert, no flags),
// writing qat, and returns the QAT model with its record.
func insertRecord(t *testing.T, model, qat string) (*graph.Model, *quantize.Record) {
	t.Helper()
	mustQatc(t, "insert", model, "-o", qat)
	m, err := graph.Load(qat)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := quantize.ReadRecord(m)
	if err != nil {
		t.Fatal(err)
	}
	return m, rec
}

// A refusal is a command line qatc must refuse: its exit code and what
// its one error line mentions.
type refusal struct {
	name string
	args []string
	code int
	want string
}

// wantRefused runs each case's args between pre and post, wants its
// error, and none of outs written.
func wantRefused(t *testing.T, tests []refusal, pre, post []string, outs ...string) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := qatc(t, slices.Concat(pre, tc.args, post)...)
			wantError(t, code, errOut, tc.code, tc.want)
			for _, f := range outs {
				if _, err := os.Stat(f); err == nil {
					t.Errorf("%s written despite the error", f)
				}
			}
		})
	}
}

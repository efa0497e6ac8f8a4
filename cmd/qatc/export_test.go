package main

import (
	"path/filepath"
	"testing"
)

// Bad export inputs: one line, exit 1 or 2, nothing written.
func TestExportBadInputs(t *testing.T) {
	dir := t.TempDir()
	model, _, _ := tinySetup(t, dir)
	w4 := filepath.Join(dir, "w4.onnx")
	perChannel := filepath.Join(dir, "pc.onnx")
	a4 := filepath.Join(dir, "a4.onnx")
	for _, args := range [][]string{
		{"insert", model, "-o", w4, "--weight-bits", "4"},
		{"insert", model, "-o", perChannel, "--per-channel"},
		{"insert", model, "-o", a4, "--bits", "4"},
	} {
		if code, _, errOut := qatc(t, args...); code != 0 {
			t.Fatalf("%v: %s", args, errOut)
		}
	}
	out := filepath.Join(dir, "out.onnx")
	tests := []refusal{
		{"no quantizers", []string{model, "-o", out}, 1, "qatc insert"},
		{"unknown format", []string{w4, "-o", out, "--format", "tflite"}, 1, "tflite"},
		{"4-bit weights to qoperator", []string{w4, "-o", out, "--format", "qoperator"}, 1, "--format qdq"},
		{"4-bit weights to lightseq", []string{w4, "-o", filepath.Join(dir, "out.pb"), "--format", "lightseq"}, 1, "8-bit only"},
		{"per-channel to lightseq", []string{perChannel, "-o", filepath.Join(dir, "out.pb"), "--format", "lightseq"}, 1, "per channel"},
		{"4-bit activations to matmulnbits", []string{a4, "-o", out, "--format", "matmulnbits"}, 1, "--act-bits 8"},
		{"lightseq file name", []string{perChannel, "-o", out, "--format", "lightseq"}, 2, ".pb"},
		{"check batch with ids beyond the vocabulary", []string{w4, "-o", out, "--src", writeFile(t, dir, "big.src", "5 6 999\n")}, 1, "999"},
	}
	wantRefused(t, tests, []string{"export"}, nil, out, filepath.Join(dir, "out.pb"))
}

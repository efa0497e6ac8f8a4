package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qatc/qatc/internal/fixture"
)

func TestEvalBadInputs(t *testing.T) {
	dir := t.TempDir()
	model, src, _ := tinySetup(t, dir)
	short := filepath.Join(dir, "short.ref")
	if err := os.WriteFile(short, []byte("5 6\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	notSeq := writeClassifier(t, dir)
	text := filepath.Join(dir, "text.src")
	if err := os.WriteFile(text, []byte(strings.Repeat("the big dog .\n", 200)), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []refusal{
		{"line counts differ", []string{model, "--src", src, "--ref", short}, 1, "short.ref"},
		{"spm vocabulary mismatch", []string{model, "--src", text, "--ref", text, "--spm", fixture.Path(t, "testmodels/demo/data/spm.model")}, 1, "512"},
		{"not seq2seq", []string{notSeq, "--src", src, "--ref", src}, 1, "not a seq2seq model"},
		{"no model", []string{"--src", src, "--ref", src}, 2, "one or more models"},
	}
	wantRefused(t, tests, []string{"eval"}, nil)
}

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

// TestExportRecordedSentences is issue 11's export of the d=256,
// 4000-id model as qoperator with no --src after minmax calibration:
// insert records calibration sentences in the model, and export checks
// itself on them and writes the file. A model calibrated on nothing is
// checked on random ids and says so; finetune then records its
// sentences; a damaged record is one error line.
func TestExportRecordedSentences(t *testing.T) {
	dir := t.TempDir()
	src, tgt := fixture.Torch(t, "d256.src"), fixture.Torch(t, "d256.tgt")
	qat := filepath.Join(dir, "d256.qat.onnx")
	mustQatc(t, "insert", fixture.Torch(t, fixture.D256), "-o", qat, "--calib-src", src, "--calib-tgt", tgt, "--calib-method", "minmax")
	x := filepath.Join(dir, "x.onnx")
	out := mustQatc(t, "export", qat, "-o", x, "--format", "qoperator")
	if !strings.Contains(out, "16 sentences of "+src+" recorded in the model") {
		t.Errorf("export did not check on the recorded sentences:\n%s", out)
	}
	if _, err := os.Stat(x); err != nil {
		t.Fatal(err)
	}
	t.Logf("d256 qoperator:\n%s", out)

	// Without calibration: random ids, said; finetune records its data.
	psrc, ptgt := fixture.Torch(t, "postnorm.src"), fixture.Torch(t, "postnorm.tgt")
	plain := filepath.Join(dir, "plain.onnx")
	mustQatc(t, "insert", fixture.Torch(t, fixture.PostNormNN), "-o", plain)
	if out := mustQatc(t, "export", plain, "-o", filepath.Join(dir, "p.onnx")); !strings.Contains(out, "random sentences (the model records none: give --src)") {
		t.Errorf("export of a model without sentences:\n%s", out)
	}
	tuned := filepath.Join(dir, "tuned.onnx")
	mustQatc(t, "finetune", plain, "-o", tuned, "--src", psrc, "--tgt", ptgt, "--steps", "1", "--batch-tokens", "256", "--threads", "1")
	if out := mustQatc(t, "export", tuned, "-o", filepath.Join(dir, "t.onnx")); !strings.Contains(out, "recorded in the model") {
		t.Errorf("export after finetune:\n%s", out)
	}

	// A record whose ids lie beyond the vocabulary.
	m, err := graph.Load(tuned)
	if err != nil {
		t.Fatal(err)
	}
	s, err := quantize.ReadSample(m)
	if err != nil || s == nil {
		t.Fatalf("finetune recorded %v, %v", s, err)
	}
	s.Inputs["src_ids"].Data[0] = 9999
	if err := quantize.WriteSample(m, s); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.onnx")
	if err := m.Save(bad); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := qatc(t, "export", bad, "-o", filepath.Join(dir, "b.onnx"))
	wantError(t, code, errOut, 1, "token id 9999")
}

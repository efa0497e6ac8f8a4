package main

import (
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
	"strconv"
)

// fixtureText writes the PyTorch fixture's batch (pads dropped, the
// target's BOS dropped) as id files for calibration.
func fixtureText(t *testing.T, dir string) (src, tgt string) {
	src, tgt = filepath.Join(dir, "fx.src"), filepath.Join(dir, "fx.tgt")
	for _, f := range []struct {
		path, npy string
		skip      int
	}{{src, fixture.TransformerSrc, 0}, {tgt, fixture.TransformerTgt, 1}} {
		x, err := ort.ReadNpy(fixture.Torch(t, f.npy))
		if err != nil {
			t.Fatal(err)
		}
		var text strings.Builder
		cols := int(x.Shape[1])
		for r := range int(x.Shape[0]) {
			var ids []string
			for _, v := range x.Int64s()[r*cols+f.skip : (r+1)*cols] {
				if v != 0 {
					ids = append(ids, strconv.FormatInt(v, 10))
				}
			}
			text.WriteString(strings.Join(ids, " ") + "\n")
		}
		if err := os.WriteFile(f.path, []byte(text.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return src, tgt
}

func relErr(t *testing.T, a, b string) float64 {
	t.Helper()
	code, out, errOut := qatc(t, "compare", a, b, "--json",
		"--input", "src_ids="+fixture.Torch(t, fixture.TransformerSrc),
		"--input", "tgt_ids="+fixture.Torch(t, fixture.TransformerTgt))
	if code != 0 {
		t.Fatalf("compare: exit %d: %s", code, errOut)
	}
	var r struct {
		Outputs []struct {
			RelErr float64 `json:"relative_error"`
		}
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	return r.Outputs[0].RelErr
}

func TestInsertAndCalibrate(t *testing.T) {
	dir := t.TempDir()
	src, tgt := fixtureText(t, dir)
	for _, model := range []string{fixture.Transformer14, fixture.Transformer17} {
		fp32 := fixture.Torch(t, model)
		plain := filepath.Join(dir, "plain-"+model)
		calib := filepath.Join(dir, "calib-"+model)
		if code, out, errOut := qatc(t, "insert", fp32, "-o", plain); code != 0 || !strings.Contains(out, "68 quantizers (22 weight, 36 act, 4 relu, 6 softmax)") {
			t.Fatalf("insert: exit %d\n%s%s", code, out, errOut)
		}
		if code, _, errOut := qatc(t, "insert", fp32, "-o", calib, "--calib-src", src, "--calib-tgt", tgt, "--calib-method", "minmax", "--weight-init", "value"); code != 0 {
			t.Fatalf("insert with calibration: exit %d: %s", code, errOut)
		}
		// NeurST's init clips (act 16) lose about 8%; calibrated activation
		// ranges bring the error under 5%.
		ePlain, eCalib := relErr(t, fp32, plain), relErr(t, fp32, calib)
		t.Logf("%s: relative logits error %.4f with NeurST inits, %.4f calibrated (minmax)", model, ePlain, eCalib)
		if eCalib > 0.05 || eCalib >= ePlain {
			t.Errorf("%s: calibrated error %.4f (inits %.4f), want ≤ 0.05 and below the uncalibrated one", model, eCalib, ePlain)
		}
		m, err := graph.Load(calib)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := quantize.ReadRecord(m)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Calibration == nil || rec.Calibration.Method != "minmax" || len(rec.Quantizers) != 68 {
			t.Errorf("record: calibration %+v, %d quantizers", rec.Calibration, len(rec.Quantizers))
		}
	}
}

// TestInsertSmooth inserts W8A8 quantizers after SmoothQuant: the
// PyTorch export's five pre-norm LayerNorms that feed only projections are
// smoothed, and the calibrated QAT model stays as close to fp32 as
// calibration alone gets it (TestInsertAndCalibrate's bound).
func TestInsertSmooth(t *testing.T) {
	dir := t.TempDir()
	src, tgt := fixtureText(t, dir)
	fp32 := fixture.Torch(t, fixture.Transformer17)
	out := filepath.Join(dir, "smooth.onnx")
	code, stdout, errOut := qatc(t, "insert", fp32, "-o", out, "--calib-src", src, "--calib-tgt", tgt, "--calib-method", "minmax", "--smooth", "0.5")
	if code != 0 || !strings.Contains(stdout, "5 LayerNorms smoothed (α 0.5)") {
		t.Fatalf("insert --smooth: exit %d\n%s%s", code, stdout, errOut)
	}
	if e := relErr(t, fp32, out); e > 0.05 {
		t.Errorf("relative logits error %.4f after smoothing, want ≤ 0.05", e)
	}
}

// Bad insert inputs: one line, exit 1 or 2, the input untouched and no
// output written.
func TestInsertBadInputs(t *testing.T) {
	dir := t.TempDir()
	src, _ := fixtureText(t, dir)
	fp32 := filepath.Join(dir, "model.onnx")
	data, err := os.ReadFile(fixture.Torch(t, fixture.Transformer17))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fp32, data, 0o644); err != nil {
		t.Fatal(err)
	}
	qat := filepath.Join(dir, "qat.onnx")
	mustQatc(t, "insert", fp32, "-o", qat)
	badKind := writeFile(t, dir, "bad-kind.yaml", "rules:\n  - match: 'linear1'\n    kind: gaussian\n")
	beyond := writeFile(t, dir, "beyond.src", "5 447 4470\n")
	out := filepath.Join(dir, "out.onnx")
	tests := []refusal{
		{"unknown recipe kind", []string{"--recipe", badKind}, 1, "gaussian"},
		{"regex matches nothing", []string{"--include", "lienar1"}, 1, "close candidates"},
		{"clip not positive", []string{"--weight-clip-max", "0"}, 2, "greater than 0"},
		{"act clip negative", []string{"--act-clip-max", "-3"}, 2, "greater than 0"},
		{"bits too high", []string{"--bits", "9"}, 2, "from 2 to 8"},
		{"bits too low", []string{"--weight-bits", "1"}, 2, "from 2 to 8"},
		{"unknown strategy", []string{"--quant-params", "{'quant_strategy':'ema','quant_bits':8}"}, 2, "ema"},
		{"ids beyond the vocabulary", []string{"--calib-src", beyond}, 1, "4470"},
		{"calibration method without data", []string{"--calib-method", "mse"}, 2, "--calib-src"},
		{"unknown calibration method", []string{"--calib-src", src, "--calib-method", "kl"}, 2, "kl"},
		{"smoothing beyond 1", []string{"--calib-src", src, "--smooth", "1.5"}, 2, "--smooth 1.5"},
		{"smoothing without data", []string{"--smooth", "0.5"}, 2, "--calib-src"},
	}
	before := sha256.Sum256(data)
	wantRefused(t, tests, []string{"insert", fp32, "-o", out}, nil, out)
	t.Run("already quantized", func(t *testing.T) {
		code, _, errOut := qatc(t, "insert", qat, "-o", out)
		if code != 1 || !strings.Contains(errOut, "already has 68 quantizers") {
			t.Errorf("exit %d: %q", code, errOut)
		}
	})
	t.Run("output is the input", func(t *testing.T) {
		code, _, errOut := qatc(t, "insert", fp32, "-o", fp32)
		if code != 2 || !strings.Contains(errOut, "--in-place") {
			t.Errorf("exit %d: %q", code, errOut)
		}
	})
	after, err := os.ReadFile(fp32)
	if err != nil || sha256.Sum256(after) != before {
		t.Errorf("the input model changed")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 6 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("stray files: %v", names)
	}
}

package main

import (
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"cmp"
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
	"slices"
	"sync"
)

// A matrixConfig is one quantization configuration of the real-model
// matrix: insert's flags and the export formats valid for it (the others
// must refuse it in one line naming qdq).
type matrixConfig struct {
	name    string
	flags   []string
	blocked bool
	steps   int
	formats []string
	refused []string
}

// The blocked W4A8 row fine-tunes 20 steps (issue 11's check of blocked
// 4-bit QAT on PyTorch exports); the others 3.
var matrixConfigs = []matrixConfig{
	{"W8A8-tensor", nil, false, 3, []string{"qdq", "qoperator", "dynamic", "matmulnbits"}, nil},
	{"W8A8-channel", []string{"--per-channel"}, false, 3, []string{"qdq", "qoperator", "dynamic", "matmulnbits"}, nil},
	{"W4A8-tensor", []string{"--weight-bits", "4", "--act-bits", "8", "--weight-init", "mse"}, false, 3,
		[]string{"qdq", "matmulnbits"}, []string{"qoperator", "dynamic"}},
	{"W4A8-block32-mse", []string{"--weight-bits", "4", "--act-bits", "8", "--weight-granularity", "block", "--block-size", "32", "--weight-init", "mse"}, true, 20,
		[]string{"qdq", "matmulnbits"}, []string{"qoperator", "dynamic"}},
	{"W4A4-block32", []string{"--weight-bits", "4", "--act-bits", "4", "--weight-granularity", "block", "--block-size", "32"}, true, 3,
		[]string{"qdq"}, []string{"qoperator", "dynamic", "matmulnbits"}},
}

// matrixData returns a model's sentence files: its own task's, or (for
// the random transformer, whose vocabulary is the same 512 ids) the
// post-norm model's.
func matrixData(t *testing.T, f fixture.Model) (src, tgt string) {
	if f.Src == "" {
		f = fixture.Models()[2]
	}
	return fixture.Torch(t, f.Src), fixture.Torch(t, f.Tgt)
}

// runDefault runs a model file in a plain onnxruntime session with the
// default options, as any user's tool opens it, on the fixture's batch.
func runDefault(t *testing.T, path string, feeds map[string]*ort.Tensor) []float32 {
	t.Helper()
	s, err := ort.OpenFile(path, nil)
	if err != nil {
		t.Fatalf("onnxruntime with default options: %v", err)
	}
	defer s.Close()
	out, err := s.Run(feeds, "logits")
	if err != nil {
		t.Fatalf("onnxruntime with default options, %s: %v", filepath.Base(path), err)
	}
	return out["logits"].Float32s()
}

// TestRealModelMatrix runs every PyTorch-exported fixture through every
// matrix configuration: insert with minmax calibration, 3 finetune steps
// (20 for blocked W4A8), every valid export (checked by export itself on
// the sentences insert recorded) and a one-line refusal of the others,
// inspect --tensor on a weight of the QAT model and of each export. Every
// QAT and exported file is also run in onnxruntime with default session
// options on the fixture's batch: the QAT model gives qatc run's logits
// (1e-4 relative), each export stays within export's bound of it on the
// positions not padded, and the log lists each export's error. Blocked
// configurations on the opset-14 export are refused at insert (opset 21
// changes ReduceMean). The rows run two at a time.
func TestRealModelMatrix(t *testing.T) {
	type row struct {
		model, config, format string
		maxAbs, rel           float64
		bound, top1           float64
		float                 int
	}
	var (
		mu   sync.Mutex
		rows []row
	)
	t.Run("rows", func(t *testing.T) {
		for _, f := range fixture.Models() {
			for _, cfg := range matrixConfigs {
				t.Run(f.Name+"/"+cfg.name, func(t *testing.T) {
					t.Parallel()
					for _, r := range matrixRow(t, f, cfg) {
						mu.Lock()
						rows = append(rows, row{f.Name, cfg.name, r.format, r.maxAbs, r.rel, r.bound, r.top1, r.float})
						mu.Unlock()
					}
				})
			}
		}
	})
	slices.SortStableFunc(rows, func(a, b row) int {
		return cmp.Or(strings.Compare(a.model, b.model), strings.Compare(a.config, b.config), strings.Compare(a.format, b.format))
	})
	var b strings.Builder
	fmt.Fprintf(&b, "%-14s %-17s %-12s %11s %9s %9s %7s %6s\n", "model", "config", "format", "max |Δ|", "rel", "bound", "top-1", "float")
	for _, r := range rows {
		fmt.Fprintf(&b, "%-14s %-17s %-12s %11.4g %9.2g %9.4g %6.2f%% %6d\n", r.model, r.config, r.format, r.maxAbs, r.rel, r.bound, 100*r.top1, r.float)
	}
	t.Logf("export error against the QAT model on each fixture's batch (onnxruntime, default options):\n%s", b.String())
}

// matrixResult is one export of a matrix row.
type matrixResult struct {
	format      string
	maxAbs, rel float64
	bound, top1 float64
	float       int // weight products left in float
}

// matrixRow runs one model through one configuration (see
// TestRealModelMatrix) and returns its exports' errors.
func matrixRow(t *testing.T, f fixture.Model, cfg matrixConfig) []matrixResult {
	model := fixture.Torch(t, f.File)
	src, tgt := matrixData(t, f)
	feeds := map[string]*ort.Tensor{}
	inputs := []string{}
	for name, file := range map[string]string{"src_ids": f.SrcIDs, "tgt_ids": f.TgtIDs} {
		path := fixture.Torch(t, file)
		x, err := ort.ReadNpy(path)
		if err != nil {
			t.Fatal(err)
		}
		feeds[name] = x
		inputs = append(inputs, "--input", name+"="+path)
	}
	dir := t.TempDir()
	qat := filepath.Join(dir, "qat.onnx")
	args := append([]string{"insert", model, "-o", qat, "--calib-src", src, "--calib-tgt", tgt,
		"--calib-method", "minmax", "--calib-batches", "2", "--batch-tokens", "512", "--threads", "1"}, cfg.flags...)
	code, out, errOut := qatc(t, args...)
	if cfg.blocked && f.File == fixture.Transformer14 {
		wantError(t, code, errOut, 1, "block granularity needs opset 21")
		return nil
	}
	if code != 0 {
		t.Fatalf("insert: exit %d\n%s%s", code, out, errOut)
	}
	tuned := filepath.Join(dir, "tuned.onnx")
	code, out, errOut = qatc(t, "finetune", qat, "-o", tuned, "--src", src, "--tgt", tgt, "--steps", fmt.Sprint(cfg.steps),
		"--batch-tokens", "256", "--lr", "1e-4", "--threads", "1", "--loss", "ce+kd")
	if code != 0 {
		t.Fatalf("finetune: exit %d\n%s%s", code, out, errOut)
	}
	m, err := graph.Load(tuned)
	if err != nil {
		t.Fatal(err)
	}
	qs, err := quantize.Find(m)
	if err != nil {
		t.Fatal(err)
	}
	weight := ""
	for _, q := range qs {
		if q.Kind == quantize.KindWeight && strings.HasPrefix(q.Tensor, "onnx::MatMul_") {
			weight = q.Tensor
			break
		}
	}
	if weight == "" {
		t.Fatal("no weight quantizer on a transposed exporter weight")
	}
	if code, out, errOut := qatc(t, "inspect", tuned, "--tensor", weight); code != 0 || !strings.Contains(out, weight) {
		t.Errorf("inspect --tensor %s on the QAT model: exit %d\n%s%s", weight, code, out, errOut)
	}

	// The QAT file in a plain onnxruntime session gives qatc run's logits.
	ref := runDefault(t, tuned, feeds)
	saved := filepath.Join(dir, "run")
	if code, out, errOut := qatc(t, append([]string{"run", tuned, "--save", saved}, inputs...)...); code != 0 {
		t.Fatalf("run: exit %d\n%s%s", code, out, errOut)
	}
	own, err := ort.ReadNpy(filepath.Join(saved, "logits.npy"))
	if err != nil {
		t.Fatal(err)
	}
	d, scale := maxDiff(own.Float32s(), ref)
	if d > 1e-4*scale {
		t.Errorf("the QAT file in onnxruntime with default options differs from qatc run by %.3g (max |logit| %.3g)", d, scale)
	}
	t.Logf("QAT file after %d steps: onnxruntime with default options vs qatc run: max |Δ| %.3g (max |logit| %.3g)", cfg.steps, d, scale)

	var res []matrixResult
	for _, format := range cfg.formats {
		exported := filepath.Join(dir, format+".onnx")
		code, out, errOut := qatc(t, "export", tuned, "-o", exported, "--format", format, "--json")
		if code != 0 {
			t.Errorf("export %s: exit %d\n%s%s", format, code, out, errOut)
			continue
		}
		var rep struct {
			Check  string `json:"check_batch"`
			Export struct {
				FloatProducts []struct{ Node, Weight, Why string }
			} `json:"export"`
			Verify struct {
				MaxAbsErr float64
				Bound     float64
				Top1      float64
				Positions int
			} `json:"verify"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("export %s --json: %v\n%s", format, err, out)
		}
		if !strings.Contains(rep.Check, "recorded in the model") || rep.Verify.Positions == 0 {
			t.Errorf("export %s checked %d positions of %s, want the sentences insert recorded", format, rep.Verify.Positions, rep.Check)
		}
		got := runDefault(t, exported, feeds)
		d, scale := maxDiff(unpadded(got, feeds["tgt_ids"]), unpadded(ref, feeds["tgt_ids"]))
		if !(d <= rep.Verify.Bound) {
			t.Errorf("export %s: on the fixture batch its logits differ from the QAT model's by %.4g, beyond export's bound %.4g", format, d, rep.Verify.Bound)
		}
		if code, out, errOut := qatc(t, "inspect", exported, "--tensor", weight); code != 0 || !strings.Contains(out, weight) {
			t.Errorf("inspect --tensor %s on the %s export: exit %d\n%s%s", weight, format, code, out, errOut)
		}
		for _, p := range rep.Export.FloatProducts {
			if p.Node == "" || p.Weight == "" || p.Why == "" {
				t.Errorf("export %s: a weight product left in float without its node, weight or reason: %+v", format, p)
			}
			t.Logf("export %s: %s (weight %s) runs in float: %s", format, p.Node, p.Weight, p.Why)
		}
		res = append(res, matrixResult{format, d, d / scale, rep.Verify.Bound, rep.Verify.Top1, len(rep.Export.FloatProducts)})
	}
	for _, format := range cfg.refused {
		code, _, errOut := qatc(t, "export", tuned, "-o", filepath.Join(dir, format+".onnx"), "--format", format)
		wantError(t, code, errOut, 1, "--format qdq")
	}
	return res
}

// unpadded returns the logits [batch, len, vocab] of the positions whose
// target id is not padding (0), the positions export's check compares.
func unpadded(logits []float32, tgt *ort.Tensor) []float32 {
	ids := tgt.Int64s()
	v := len(logits) / len(ids)
	var out []float32
	for i, id := range ids {
		if id != 0 {
			out = append(out, logits[i*v:(i+1)*v]...)
		}
	}
	return out
}

// maxDiff returns max |a − b| and max |b|.
func maxDiff(a, b []float32) (d, scale float64) {
	for i := range b {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
		scale = math.Max(scale, math.Abs(float64(b[i])))
	}
	return d, scale
}

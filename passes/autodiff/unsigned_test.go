package autodiff_test

import (
	"math"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/autodiff"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/testmodels"
)

// TestQATForwardKept checks that the training graph of a QAT testmodel
// (NeurST's quantizers on weights and activations) computes the loss of
// the model as given: its signed activation quantizers are moved to
// uint8 with zero point 128 for onnxruntime's integer matmuls, which
// must not change a value. The reference is the model's own logits
// through the label-smoothed cross-entropy, in Go.
func TestQATForwardKept(t *testing.T) {
	cfg, m := tinyQAT(t)
	const eps = 0.1
	tm, info, err := autodiff.Build(m, autodiff.Options{Loss: autodiff.Loss{LabelSmoothing: eps, PadID: cfg.PadID}})
	if err != nil {
		t.Fatal(err)
	}
	moved := 0
	for _, n := range tm.Graph().Node {
		if n.OpType == "QuantizeLinear" && len(n.Input) > 2 {
			if z := tm.Initializer(n.Input[2]); z != nil && graph.TensorType(z) == graph.Uint8 {
				if v, _ := graph.Int64s(z); len(v) == 1 && v[0] == 128 {
					moved++
				}
			}
		}
	}
	if moved == 0 {
		t.Fatal("no activation quantizer was moved to uint8 with zero point 128")
	}
	const rows, srcLen, tgtLen = 3, 9, 7
	src, tgt := testmodels.RandomBatch(cfg, rows, srcLen, tgtLen, 5)
	labels := append(append([]int64(nil), tgt[1:]...), cfg.PadID)
	feeds := map[string]*ort.Tensor{
		"src_ids": ort.Int64([]int64{rows, srcLen}, src),
		"tgt_ids": ort.Int64([]int64{rows, tgtLen}, tgt),
	}
	fs, err := ort.Open(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	out, err := fs.Run(feeds)
	if err != nil {
		t.Fatal(err)
	}
	logits := out["logits"].Float32s()
	v := cfg.Vocab
	var sum float64
	count := 0
	for i, l := range labels {
		if l == cfg.PadID {
			continue
		}
		row := logits[i*v : (i+1)*v]
		mx := math.Inf(-1)
		for _, z := range row {
			mx = math.Max(mx, float64(z))
		}
		var se, mean float64
		for _, z := range row {
			se += math.Exp(float64(z) - mx)
		}
		lse := mx + math.Log(se)
		for _, z := range row {
			mean += (lse - float64(z)) / float64(v)
		}
		sum += (1-eps)*(lse-float64(row[l])) + eps*mean
		count++
	}
	want := sum / float64(count)

	feeds["labels"] = ort.Int64([]int64{rows, tgtLen}, labels)
	for _, p := range info.Params {
		w, err := graph.Floats(m.Initializer(p.Name))
		if err != nil {
			t.Fatal(err)
		}
		feeds[p.Name] = ort.Float32(p.Shape, w)
	}
	ts, err := ort.Open(tm, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Close()
	res, err := ts.Run(feeds, autodiff.LossOutput)
	if err != nil {
		t.Fatal(err)
	}
	got := float64(res[autodiff.LossOutput].Float32s()[0])
	if math.Abs(got-want) > 1e-5*math.Abs(want) {
		t.Errorf("training graph loss %.7g, the model's logits give %.7g", got, want)
	}
	t.Logf("%d activation quantizers moved; loss %.7g (model %.7g)", moved, got, want)
}

// tinyQAT initialises onnxruntime and returns the tiny testmodel with
// NeurST's default quantizers inserted.
func tinyQAT(t *testing.T) (testmodels.Config, *graph.Model) {
	t.Helper()
	if err := ort.Init(); err != nil {
		t.Fatal(err)
	}
	cfg := testmodels.Tiny()
	m, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := quantize.Insert(m, quantize.DefaultParams()); err != nil {
		t.Fatal(err)
	}
	return cfg, m
}

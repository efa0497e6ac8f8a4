package export

import (
	"math"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/testmodels"
)

// TestStepRule checks that Verify says which rule set its error bound, and
// that each rule gives its number: one step of the quantized logits
// projection, computed here from the clips and weights; or, with the
// projection's input left unquantized, max |logit|/127 and the reason.
func TestStepRule(t *testing.T) {
	cfg := testmodels.Tiny()
	fp32, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	src, tgt := testmodels.RandomBatch(cfg, 4, 10, 10, 3)
	batch := map[string]*ort.Tensor{
		testmodels.SrcInput: ort.Int64([]int64{4, 10}, src),
		testmodels.TgtInput: ort.Int64([]int64{4, 10}, tgt),
	}
	// The tiny model computes logits = decoder/ln/output · Eᵀ + b, E the
	// token table shared_embedding [vocab, hidden], transposed by a node.
	const x, w = "decoder/ln/output", "shared_embedding"
	for _, tc := range []struct {
		name    string
		exclude []string
		rule    []string // words the rule must hold
	}{
		{"projection", nil, []string{"one input step s of MatMul softmax/MatMul", "s·max_j Σ_i |W_ij|"}},
		{"unquantized input", []string{"^" + x + "$"}, []string{"max|logits|/127", "the input of MatMul softmax/MatMul is not quantized per tensor"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			qat := clone(t, fp32)
			p := quantize.DefaultParams()
			p.WeightInit = quantize.InitMax
			p.Exclude = tc.exclude
			rec, err := quantize.Insert(qat, p)
			if err != nil {
				t.Fatal(err)
			}
			out, _, err := Export(qat, "qdq", nil)
			if err != nil {
				t.Fatal(err)
			}
			v, err := Verify(qat, out, batch, Padding{})
			if err != nil {
				t.Fatal(err)
			}
			var want float64
			if tc.exclude == nil {
				want = projectionStepOf(t, qat, rec, x, w)
			} else {
				ref, err := run(qat, batch, testmodels.LogitsOutput, nil)
				if err != nil {
					t.Fatal(err)
				}
				for _, l := range ref.out.Float32s() {
					want = math.Max(want, math.Abs(float64(l)))
				}
				want /= 127
			}
			if math.Abs(v.Step-want) > 1e-6*want || v.Bound != v.Step {
				t.Errorf("step %.7g, bound %.7g; want step %.7g and a bound of one step (qdq)", v.Step, v.Bound, want)
			}
			for _, s := range tc.rule {
				if !strings.Contains(v.StepRule, s) {
					t.Errorf("rule %q does not say %q", v.StepRule, s)
				}
			}
		})
	}
}

// projectionStepOf computes s_x · max_j Σ_i |Q(W)_ij| from the record's
// clips: the act step of x and the fake-quantized weight W = wᵀ, w stored
// [out, in].
func projectionStepOf(t *testing.T, m *graph.Model, rec *quantize.Record, x, w string) float64 {
	t.Helper()
	clip := func(tensor string) float64 {
		q := rec.Lookup(tensor)
		if q == nil {
			t.Fatalf("no quantizer on %s", tensor)
		}
		c, err := graph.Floats(m.Initializer(q.Clip))
		if err != nil || len(c) != 1 {
			t.Fatalf("clip of %s: %v %v", tensor, c, err)
		}
		return float64(c[0])
	}
	sx, sw := clip(x)/127, clip(w)/127
	init := m.Initializer(w)
	vals, err := graph.Floats(init)
	if err != nil {
		t.Fatal(err)
	}
	outs, ins := int(init.Dims[0]), int(init.Dims[1])
	var best float64
	for j := range outs {
		var sum float64
		for i := range ins {
			q := math.Max(-128, math.Min(127, math.RoundToEven(float64(vals[j*ins+i])/sw)))
			sum += math.Abs(q) * sw
		}
		best = math.Max(best, sum)
	}
	return sx * best
}

// TestVerifyPadding checks that Verify compares only the positions whose
// target id is not padding when told the target input and the padding id:
// the counts, the max abs error and the activation quantization error
// (dynamic, whose bound uses it) equal those computed here over those
// positions; the zero Padding compares every position; a target input
// missing, of another shape than the logits' positions, or all padding is
// one error.
func TestVerifyPadding(t *testing.T) {
	cfg := testmodels.Tiny()
	qat := qatModel(t, "", quantize.DefaultParams())
	out, _, err := Export(qat, "dynamic", nil)
	if err != nil {
		t.Fatal(err)
	}
	const rows, srcLen, tgtLen = 6, 9, 11
	src, tgt := testmodels.RandomBatch(cfg, rows, srcLen, tgtLen, 5)
	batch := map[string]*ort.Tensor{
		testmodels.SrcInput: ort.Int64([]int64{rows, srcLen}, src),
		testmodels.TgtInput: ort.Int64([]int64{rows, tgtLen}, tgt),
	}
	pads := 0
	for _, id := range tgt {
		if id == cfg.PadID {
			pads++
		}
	}
	if pads == 0 {
		t.Fatal("the batch has no padded target position")
	}
	// The errors over the positions not padded, computed here.
	a, err := run(qat, batch, testmodels.LogitsOutput, &ort.Options{Optimization: refOptimization})
	if err != nil {
		t.Fatal(err)
	}
	e, err := run(out, batch, testmodels.LogitsOutput, nil)
	if err != nil {
		t.Fatal(err)
	}
	weightsOnly, err := quantize.StripActivations(qat)
	if err != nil {
		t.Fatal(err)
	}
	p, err := run(weightsOnly, batch, testmodels.LogitsOutput, &ort.Options{Optimization: refOptimization})
	if err != nil {
		t.Fatal(err)
	}
	var maxErr, quantErr float64
	v := cfg.Vocab
	for i, x := range a.out.Float32s() {
		if tgt[i/v] != cfg.PadID {
			maxErr = math.Max(maxErr, math.Abs(float64(x-e.out.Float32s()[i])))
			quantErr = math.Max(quantErr, math.Abs(float64(x-p.out.Float32s()[i])))
		}
	}

	all, err := Verify(qat, out, batch, Padding{})
	if err != nil {
		t.Fatal(err)
	}
	if all.Positions != rows*tgtLen || all.Padded != 0 || all.MaxAbsErr < maxErr || all.QuantErr < quantErr {
		t.Errorf("every position: %d positions, %d padded, max error %g, quantization error %g", all.Positions, all.Padded, all.MaxAbsErr, all.QuantErr)
	}
	r, err := Verify(qat, out, batch, Padding{Target: testmodels.TgtInput, Pad: cfg.PadID})
	if err != nil {
		t.Fatal(err)
	}
	if r.Positions != rows*tgtLen-pads || r.Padded != pads {
		t.Errorf("%d positions compared and %d left out, want %d and %d", r.Positions, r.Padded, rows*tgtLen-pads, pads)
	}
	if math.Abs(r.MaxAbsErr-maxErr) > 1e-6 || math.Abs(r.QuantErr-quantErr) > 1e-6 {
		t.Errorf("max error %g, quantization error %g; want %g and %g over the positions not padded", r.MaxAbsErr, r.QuantErr, maxErr, quantErr)
	}
	t.Logf("every position: max error %.4g, quantization error %.4g; %d not padded: %.4g, %.4g", all.MaxAbsErr, all.QuantErr, r.Positions, r.MaxAbsErr, r.QuantErr)

	allPad := map[string]*ort.Tensor{
		testmodels.SrcInput: batch[testmodels.SrcInput],
		testmodels.TgtInput: ort.Int64([]int64{rows, tgtLen}, make([]int64, rows*tgtLen)),
	}
	for _, tc := range []struct {
		name  string
		batch map[string]*ort.Tensor
		pad   Padding
		want  string
	}{
		{"no such input", batch, Padding{Target: "labels"}, "no target input labels"},
		{"not the logits' positions", batch, Padding{Target: testmodels.SrcInput}, "does not give the positions of the output"},
		{"all padding", allPad, Padding{Target: testmodels.TgtInput, Pad: cfg.PadID}, "no target position that is not padding"},
	} {
		if _, err := Verify(qat, out, tc.batch, tc.pad); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
}

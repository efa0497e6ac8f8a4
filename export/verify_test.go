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
			v, err := Verify(qat, out, batch)
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

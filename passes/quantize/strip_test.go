package quantize

import (
	"math"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/testmodels"
)

// TestStrip checks that removing a QAT model's quantizers gives back the
// fp32 model they were inserted into: no quantizer node or clip left, the
// same initializers, the same logits, and the QAT model unchanged.
func TestStrip(t *testing.T) {
	fp32, err := testmodels.Build(testmodels.Tiny())
	if err != nil {
		t.Fatal(err)
	}
	qat, err := testmodels.Build(testmodels.Tiny())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Insert(qat, DefaultParams()); err != nil {
		t.Fatal(err)
	}
	before := len(qat.Graph().Node)
	s, err := Strip(qat)
	if err != nil {
		t.Fatal(err)
	}
	if len(qat.Graph().Node) != before {
		t.Fatal("Strip changed its input")
	}
	for _, n := range s.Graph().Node {
		if n.OpType == "QuantizeLinear" || n.OpType == "DequantizeLinear" {
			t.Fatalf("%s %s survived", n.OpType, n.Name)
		}
	}
	want, have := map[string]bool{}, map[string]bool{}
	for _, n := range fp32.InitializerNames() {
		want[n] = true
	}
	for _, n := range s.InitializerNames() {
		have[n] = true
		if !want[n] {
			t.Errorf("initializer %s is not the fp32 model's", n)
		}
	}
	for n := range want {
		if !have[n] {
			t.Errorf("initializer %s was removed", n)
		}
	}
	src, tgt := testmodels.RandomBatch(testmodels.Tiny(), 3, 7, 6, 1)
	logits := func(m *graph.Model) []float32 {
		sess, err := ort.Open(m, &ort.Options{Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		out, err := sess.Run(map[string]*ort.Tensor{
			testmodels.SrcInput: ort.Int64([]int64{3, 7}, src),
			testmodels.TgtInput: ort.Int64([]int64{3, 6}, tgt),
		})
		if err != nil {
			t.Fatal(err)
		}
		return out[testmodels.LogitsOutput].Float32s()
	}
	a, b, q := logits(fp32), logits(s), logits(qat)
	diff, qdiff := 0.0, 0.0
	for i := range a {
		diff = math.Max(diff, math.Abs(float64(a[i]-b[i])))
		qdiff = math.Max(qdiff, math.Abs(float64(a[i]-q[i])))
	}
	if diff > 1e-5 || qdiff < 1e-3 {
		t.Errorf("stripped model differs from fp32 by %g (the QAT model by %g)", diff, qdiff)
	}
}

package export

import (
	"strings"
	"testing"

	"github.com/qatc/qatc/passes/quantize"
)

// TestFloatProducts checks that qoperator and dynamic name each weight
// product they leave in float, and why: a weight excluded from insert
// (its MatMul runs in float) is the one entry, every other weight product
// runs in integers, and Verify checks that each integer node of the file
// ran as an integer kernel.
func TestFloatProducts(t *testing.T) {
	fp32, _, batch := torchQAT(t)
	qat := clone(t, fp32)
	p := quantize.DefaultParams()
	p.Exclude = []string{`^onnx::MatMul_1051$`} // encoder layer 0's linear1 weight
	if _, err := quantize.Insert(qat, p); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"qoperator", "dynamic"} {
		out, rep, err := Export(qat, format, nil)
		if err != nil {
			t.Fatalf("%s: %v", format, err)
		}
		if len(rep.FloatProducts) != 1 || rep.FloatProducts[0].Weight != "onnx::MatMul_1051" ||
			rep.FloatProducts[0].Node != "/tf/encoder/layers.0/linear1/MatMul" || !strings.Contains(rep.FloatProducts[0].Why, "excluded from insert") {
			t.Errorf("%s: float products %+v, want linear1 of encoder layer 0, excluded", format, rep.FloatProducts)
		}
		named := false
		for _, n := range rep.Notes {
			named = named || strings.Contains(n, "/tf/encoder/layers.0/linear1/MatMul (weight onnx::MatMul_1051) runs in float")
		}
		if !named {
			t.Errorf("%s: notes %q do not name the float product", format, rep.Notes)
		}
		v, err := Verify(qat, out, batch, Padding{})
		if err != nil {
			t.Errorf("%s: %v", format, err)
		}
		ints := 0
		for _, n := range out.Graph().Node {
			if intKernels[n.OpType] {
				ints++
			}
		}
		if v.IntKernels < ints || ints == 0 {
			t.Errorf("%s: %d integer kernels ran for %d integer nodes", format, v.IntKernels, ints)
		}
		t.Logf("%s: %d integer nodes, %d integer kernels; %s", format, ints, v.IntKernels, rep.FloatProducts[0])
	}
}

package quantize_test

import (
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
)

// unreachable builds a graph whose matrix products read constants the
// placement cannot quantize, beside one it can (MatMul mA with A).
func unreachable() *graph.Model {
	m := graph.New("u", 17)
	m.AddInput("ids", graph.Int64, []int64{1, 2})
	m.AddInput("x", graph.Float, []int64{2, 4})
	m.AddInitializer(graph.FloatTensor("A", []int64{4, 3}, make([]float32, 12)))
	m.AddInitializer(graph.FloatTensor("B", []int64{4, 3}, make([]float32, 12)))
	m.AddInitializer(graph.FloatTensor("two", nil, []float32{2}))
	h := &onnx.TensorProto{Name: "H", Dims: []int64{4, 3}, DataType: int32(graph.Float16), RawData: make([]byte, 24)}
	m.AddInitializer(h)
	e := &onnx.TensorProto{Name: "E", Dims: []int64{10, 4}, DataType: int32(graph.Float16), RawData: make([]byte, 80)}
	m.AddInitializer(e)
	m.AddInitializer(graph.Int64Tensor("map", []int64{10}, make([]int64, 10)))
	m.Op("MatMul", "mA", []string{"x", "A"}, []string{"yA"})                                      // quantized
	m.Op("Cast", "castH", []string{"H"}, []string{"Hf"}, graph.AttrInt("to", int64(graph.Float))) // float16 weight
	m.Op("MatMul", "mH", []string{"x", "Hf"}, []string{"yH"})
	m.Op("Mul", "scaleB", []string{"B", "two"}, []string{"B2"}) // a weight computed by Mul
	m.Op("MatMul", "mB", []string{"x", "B2"}, []string{"yB"})
	m.Op("Constant", "constC", nil, []string{"C"}, graph.AttrTensor("value", graph.FloatTensor("", []int64{4, 3}, make([]float32, 12))))
	m.Op("MatMul", "mC", []string{"x", "C"}, []string{"yC"})
	m.Op("Einsum", "ein", []string{"x", "A"}, []string{"yE"}, graph.AttrString("equation", "ij,jk->ik"))
	m.Op("Gather", "lookupE", []string{"E", "ids"}, []string{"e"})     // a float16 embedding
	m.Op("Gather", "lookupMap", []string{"map", "ids"}, []string{"k"}) // an integer table: no embedding
	for _, o := range []string{"yA", "yH", "yB", "yC", "yE", "e", "k"} {
		m.AddOutput(o, graph.Undefined, nil)
	}
	return m
}

// TestUnquantized: every constant operand the placement cannot reach is
// in the plan and the record, with its reason; integer lookups are not.
func TestUnquantized(t *testing.T) {
	want := []struct {
		node   string
		input  int
		tensor string
		reason string
	}{
		{"mH", 1, "Hf", "initializer H is float16; only float32 weights are quantized"},
		{"mB", 1, "B2", "B2 is made by Mul scaleB, which the placement does not follow to a weight (it follows Transpose, Identity, Cast"},
		{"mC", 1, "C", "C is made by Constant constC from no inputs, not an initializer"},
		{"ein", -1, "", "Einsum is not an operator qatc quantizes"},
		{"lookupE", 0, "E", "initializer E is float16"},
	}
	m := unreachable()
	plan, err := quantize.Plan(m, quantize.DefaultParams())
	if err != nil {
		t.Fatal(err)
	}
	rec, err := quantize.Insert(m, quantize.DefaultParams())
	if err != nil {
		t.Fatal(err)
	}
	back, err := quantize.ReadRecord(m)
	if err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]*quantize.Record{"plan": plan, "insert": rec, "stored record": back} {
		if len(r.Quantizers) != 2 || r.Lookup("A") == nil || r.Lookup("x") == nil {
			t.Errorf("%s: quantizers %+v, want A (weight) and x (act) only", name, r.Quantizers)
		}
		if len(r.Unquantized) != len(want) {
			t.Errorf("%s: %d operands reported, want %d: %+v", name, len(r.Unquantized), len(want), r.Unquantized)
			continue
		}
		for i, w := range want {
			u := r.Unquantized[i]
			if u.Node != w.node || u.Input != w.input || u.Tensor != w.tensor || !strings.Contains(u.Reason, w.reason) {
				t.Errorf("%s: %+v, want %+v", name, u, w)
			}
		}
	}
}

package train

import (
	"testing"

	"github.com/qatc/qatc/graph"
)

// quantizedMatMul builds y = DQ(Q(x)) · DQ(Q(w)) with clip ranges as
// passes/quantize writes them, plus a second output that is a dequantized
// value itself.
func quantizedMatMul(t *testing.T) *graph.Model {
	t.Helper()
	m := graph.New("q", 17)
	m.AddInput("x", graph.Float, []int64{2, 3})
	m.AddInitializer(graph.FloatTensor("w", []int64{3, 2}, []float32{0.5, -0.25, 1, 0.75, -1, 0.125}))
	m.AddInitializer(graph.FloatTensor("tiny", nil, []float32{1e-8}))
	m.AddInitializer(graph.FloatTensor("qmax", nil, []float32{127}))
	m.AddInitializer(graph.Int8Tensor("zp", nil, []int8{0}))
	quant := func(v string, clip float32) string {
		m.AddInitializer(graph.FloatTensor(v+"_clip_max", nil, []float32{clip}))
		m.Op("Max", "", []string{v + "_clip_max", "tiny"}, []string{v + "_clip_pos"})
		m.Op("Div", "", []string{v + "_clip_pos", "qmax"}, []string{v + "_scale"})
		m.Op("QuantizeLinear", v+"/quantize", []string{v, v + "_scale", "zp"}, []string{v + "_q"})
		m.Op("DequantizeLinear", v+"/dequantize", []string{v + "_q", v + "_scale", "zp"}, []string{v + "_dq"})
		return v + "_dq"
	}
	xq, wq := quant("x", 0.5), quant("w", 1)
	m.Op("MatMul", "mm", []string{xq, wq}, []string{"y"})
	m.AddOutput("y", graph.Float, []int64{2, 2})
	m.AddOutput("w_dq", graph.Float, []int64{3, 2})
	if err := m.TopoSort(); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestWithParamsAsInputs(t *testing.T) {
	m := quantizedMatMul(t)
	e, err := withParamsAsInputs(m, []string{"w", "w_clip_max"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if e.Initializer("w") != nil || e.Input("w") == nil || e.Input("w_clip_max") == nil || m.Initializer("w") == nil {
		t.Fatal("w should be an input of the copy and stay an initializer of the original")
	}
	if _, err := withParamsAsInputs(m, []string{"nope"}, nil); err == nil {
		t.Error("an unknown parameter was accepted")
	}
}

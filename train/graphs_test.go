package train

import (
	"math"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
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

func TestStripQuantizers(t *testing.T) {
	m := quantizedMatMul(t)
	before := len(m.Graph().Node)
	s, err := StripQuantizers(m)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Graph().Node) != before {
		t.Fatal("StripQuantizers changed its input")
	}
	ops := map[string]int{}
	for _, n := range s.Graph().Node {
		ops[n.OpType]++
	}
	if ops["QuantizeLinear"] != 0 || ops["DequantizeLinear"] != 0 || ops["Max"] != 0 || ops["Div"] != 0 || ops["MatMul"] != 1 || ops["Identity"] != 1 {
		t.Errorf("ops after stripping: %v; want one MatMul and one Identity", ops)
	}
	for _, name := range []string{"x_clip_max", "w_clip_max", "zp", "qmax", "tiny"} {
		if s.Initializer(name) != nil {
			t.Errorf("initializer %s survived", name)
		}
	}
	if s.Initializer("w") == nil {
		t.Fatal("the weight was removed")
	}
	// The stripped graph computes x·w in full precision.
	x := []float32{0.3, -0.2, 0.11, 0.7, 0.05, -0.4}
	w := []float32{0.5, -0.25, 1, 0.75, -1, 0.125}
	sess, err := ort.Open(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	out, err := sess.Run(map[string]*ort.Tensor{"x": ort.Float32([]int64{2, 3}, x)})
	if err != nil {
		t.Fatal(err)
	}
	y := out["y"].Float32s()
	for i := range 2 {
		for j := range 2 {
			var want float64
			for k := range 3 {
				want += float64(x[i*3+k]) * float64(w[k*2+j])
			}
			if math.Abs(float64(y[i*2+j])-want) > 1e-6 {
				t.Errorf("y[%d,%d] = %g, want %g", i, j, y[i*2+j], want)
			}
		}
	}
	if got := out["w_dq"].Float32s(); got[5] != 0.125 {
		t.Errorf("w_dq[5] = %g, want the unquantized 0.125", got[5])
	}
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

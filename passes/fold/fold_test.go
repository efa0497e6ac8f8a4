package fold_test

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/fold"
	"github.com/qatc/qatc/passes/quantize"
)

// quantizer inserts the QAT graph form of DESIGN.md on T: clip → Max(tiny)
// → Div(qmax) = scale, T → QuantizeLinear → [Clip] → DequantizeLinear.
func quantizer(m *graph.Model, T, kind string, bits int, clip []float32, axis int64) {
	signed := kind == quantize.KindWeight || kind == quantize.KindAct
	qmax := float32(int(1)<<bits - 1)
	if signed {
		qmax = float32(int(1)<<(bits-1) - 1)
	}
	dims := []int64{}
	if len(clip) > 1 {
		dims = []int64{int64(len(clip))}
	}
	c := m.AddInitializer(graph.FloatTensor(m.UniqueName(T+"_clip_max"), dims, clip))
	tiny := m.AddInitializer(graph.FloatTensor(m.UniqueName(T+"_tiny"), nil, []float32{1e-8}))
	qm := m.AddInitializer(graph.FloatTensor(m.UniqueName(T+"_qmax"), nil, []float32{qmax}))
	mx, scale := m.UniqueName(T+"_pos"), m.UniqueName(T+"_scale")
	m.Op("Max", "", []string{c, tiny}, []string{mx})
	m.Op("Div", "", []string{mx, qm}, []string{scale})
	zp := m.UniqueName(T + "_zp")
	if signed {
		m.AddInitializer(graph.Int8Tensor(zp, dims, make([]int8, len(clip))))
	} else {
		m.AddInitializer(graph.Uint8Tensor(zp, dims, make([]uint8, len(clip))))
	}
	q, d := m.UniqueName(T+"_q"), m.UniqueName(T+"_dq")
	qn := m.Op("QuantizeLinear", T+"/quantize", []string{T, scale, zp}, []string{q}, graph.AttrInt("axis", axis))
	iv := q
	if bits < 8 {
		lo, hi := -(1 << (bits - 1)), 1<<(bits-1)-1
		lt := m.AddInitializer(graph.Int8Tensor(m.UniqueName(T+"_lo"), nil, []int8{int8(lo)}))
		ht := m.AddInitializer(graph.Int8Tensor(m.UniqueName(T+"_hi"), nil, []int8{int8(hi)}))
		iv = m.UniqueName(T + "_clipped")
		m.Op("Clip", "", []string{q, lt, ht}, []string{iv})
	}
	m.Op("DequantizeLinear", T+"/dequantize", []string{iv, scale, zp}, []string{d}, graph.AttrInt("axis", axis))
	m.ReplaceUses(T, d, qn)
}

func randn(r *rand.Rand, n int, s float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64() * s)
	}
	return v
}

// qatModel builds a small QAT graph exercising each fold rule:
//
//	y1 = DQ(x) · DQ(W)                    per-tensor weight [8, 5]
//	y2 = DQ(x) · Transpose(DQ(V))         per-channel weight [5, 8], read transposed
//	y3 = DQ(x) · DQ(F)                    fBits-bit weight (an integer Clip below 8)
//	emb = Gather(DQ(E), ids)              per-channel table [10, 4] along axis 1
//	y4 = DQ(relu(y1)) · DQ(U)             unsigned relu activation
func qatModel(t *testing.T, fBits int) (*graph.Model, map[string]*ort.Tensor) {
	r := rand.New(rand.NewPCG(1, 2))
	m := graph.New("qat", 17)
	m.AddInput("x", graph.Float, []int64{2, 6, 8})
	m.AddInput("ids", graph.Int64, []int64{2, 3})
	m.AddInitializer(graph.FloatTensor("W", []int64{8, 5}, randn(r, 40, 0.5)))
	m.AddInitializer(graph.FloatTensor("V", []int64{5, 8}, randn(r, 40, 0.5)))
	m.AddInitializer(graph.FloatTensor("F", []int64{8, 5}, randn(r, 40, 0.5)))
	m.AddInitializer(graph.FloatTensor("E", []int64{10, 4}, randn(r, 40, 1)))
	m.AddInitializer(graph.FloatTensor("U", []int64{5, 3}, randn(r, 15, 0.5)))
	m.Op("MatMul", "mm1", []string{"x", "W"}, []string{"y1"})
	m.Op("Transpose", "vt", []string{"V"}, []string{"Vt"}, graph.AttrInts("perm", 1, 0))
	m.Op("MatMul", "mm2", []string{"x", "Vt"}, []string{"y2"})
	m.Op("MatMul", "mm3", []string{"x", "F"}, []string{"y3"})
	m.Op("Gather", "gather", []string{"E", "ids"}, []string{"emb"})
	m.Op("Relu", "relu", []string{"y1"}, []string{"h"})
	m.Op("MatMul", "mm4", []string{"h", "U"}, []string{"y4"})
	for _, o := range []string{"y1", "y2", "y3", "emb", "y4"} {
		m.AddOutput(o, graph.Float, nil)
	}
	// Clips below the tensors' maxima, so that saturation is exercised.
	quantizer(m, "x", quantize.KindAct, 8, []float32{2.5}, 1)
	quantizer(m, "W", quantize.KindWeight, 8, []float32{0.9}, 1)
	quantizer(m, "V", quantize.KindWeight, 8, []float32{0.6, 0.7, 0.8, 0.9, 1.0}, 0)
	quantizer(m, "F", quantize.KindWeight, fBits, []float32{1.1}, 1)
	quantizer(m, "E", quantize.KindWeight, 8, []float32{1.5, 2, 2.5, 3}, 1)
	quantizer(m, "h", quantize.KindReLU, 8, []float32{3}, 1)
	quantizer(m, "U", quantize.KindWeight, 8, []float32{1.2}, 1)
	m.SetMetadata(fold.RecordKey, `{"version":1}`)
	if err := m.TopoSort(); err != nil {
		t.Fatal(err)
	}
	ids := make([]int64, 6)
	for i := range ids {
		ids[i] = r.Int64N(10)
	}
	return m, map[string]*ort.Tensor{
		"x":   ort.Float32([]int64{2, 6, 8}, randn(r, 96, 1)),
		"ids": ort.Int64([]int64{2, 3}, ids),
	}
}

func clone(t *testing.T, m *graph.Model) *graph.Model {
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	c, err := graph.Parse(data, "")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func runAll(t *testing.T, m *graph.Model, in map[string]*ort.Tensor, opts *ort.Options) map[string]*ort.Tensor {
	t.Helper()
	s, err := ort.Open(m, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.Run(in)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func maxDiff(a, b []float32) float64 {
	var d float64
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

func TestFold(t *testing.T) {
	qat, in := qatModel(t, 4)
	m := clone(t, qat)
	res, err := fold.Fold(m)
	if err != nil {
		t.Fatal(err)
	}

	// Graph form: no clip arithmetic, no float weights, no Q on a weight.
	for _, n := range m.Graph().Node {
		switch {
		case n.OpType == "Max" || n.OpType == "Div":
			t.Errorf("scale arithmetic %s survived", graph.NodeName(n))
		case n.OpType == "QuantizeLinear" && n.Input[0] != "x" && n.Input[0] != "h":
			t.Errorf("%s quantizes %q at run time", graph.NodeName(n), n.Input[0])
		case n.OpType == "Transpose":
			t.Errorf("%s: the transposed weight should be stored transposed", graph.NodeName(n))
		case n.OpType == "Gather" && graph.TensorType(m.Initializer(n.Input[0])) != graph.Int8:
			t.Errorf("Gather reads %q, want the int8 table", n.Input[0])
		}
	}
	for _, name := range m.InitializerNames() {
		if strings.HasSuffix(name, "_clip_max") || strings.HasSuffix(name, "_tiny") || strings.HasSuffix(name, "_qmax") {
			t.Errorf("initializer %q survived", name)
		}
		if init := m.Initializer(name); graph.TensorType(init) == graph.Float && graph.NumElements(init.Dims) > 5 {
			t.Errorf("float initializer %q %v survived", name, init.Dims)
		}
	}
	if f, _ := m.Metadata(fold.FormatKey); f != "qdq" {
		t.Errorf("format metadata %q, want qdq", f)
	}
	if r, _ := m.Metadata(fold.RecordKey); r != `{"version":1}` {
		t.Errorf("quantization record %q not kept", r)
	}

	// Integers: exactly onnxruntime's QuantizeLinear of the QAT weights
	// (and the 4-bit one held to [-8, 7] by the Clip).
	var qouts []string
	for _, w := range []string{"W", "V", "F", "E", "U"} {
		qouts = append(qouts, w+"_q")
	}
	qouts[2] = "F_clipped"
	s, err := ort.Open(qat, &ort.Options{Outputs: qouts})
	if err != nil {
		t.Fatal(err)
	}
	onTheFly, err := s.Run(in, qouts...)
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range res.Quantizers {
		if f.Kind != quantize.KindWeight {
			continue
		}
		want := onTheFly[qouts[map[string]int{"W": 0, "V": 1, "F": 2, "E": 3, "U": 4}[f.Tensor]]].Data.([]int8)
		init := m.Initializer(f.Int)
		if init == nil {
			t.Fatalf("quantizer %d on %q: no initializer %q", i, f.Tensor, f.Int)
		}
		if f.Tensor == "V" {
			// Stored transposed: [8, 5], channel axis now 1.
			if f.Perm == nil || f.Axis != 1 || init.Dims[0] != 8 {
				t.Errorf("V stored %v perm %v axis %d, want [8 5] perm [1 0] axis 1", init.Dims, f.Perm, f.Axis)
			}
			tw := make([]int8, 40)
			for r := range 5 {
				for c := range 8 {
					tw[c*5+r] = want[r*8+c]
				}
			}
			want = tw
		}
		for j, v := range want {
			if int8(init.RawData[j]) != v {
				t.Fatalf("%q element %d: stored %d, QuantizeLinear gives %d", f.Tensor, j, int8(init.RawData[j]), v)
			}
		}
	}

	// Values: the folded graph computes what the QAT graph computes.
	ref := runAll(t, qat, in, &ort.Options{Optimization: ort.OptimizeBasic})
	got := runAll(t, m, in, &ort.Options{Optimization: ort.OptimizeBasic})
	for name, want := range ref {
		if d := maxDiff(want.Float32s(), got[name].Float32s()); d > 1e-6 {
			t.Errorf("output %s differs by %g after Fold", name, d)
		}
	}

	// 4 bits: the integer formats refuse, naming qdq.
	for name, pass := range map[string]func(*graph.Model, *fold.Result) error{"qoperator": fold.QOperator, "dynamic": fold.Dynamic} {
		if err := pass(clone(t, m), res); err == nil || !strings.Contains(err.Error(), "export with --format qdq") {
			t.Errorf("%s with a 4-bit weight: got %v, want an error naming --format qdq", name, err)
		}
	}
}

// TestIntegerFormats checks that QOperator and Dynamic replace every
// quantized MatMul by an integer one and stay close to the QAT model.
func TestIntegerFormats(t *testing.T) {
	qat, in := qatModel(t, 8)
	ref := runAll(t, qat, in, &ort.Options{Optimization: ort.OptimizeBasic})
	for _, tc := range []struct {
		format string
		pass   func(*graph.Model, *fold.Result) error
		op     string
		n      int
		tol    float64 // static scales: float summation order only
	}{
		// mm1, mm2 and mm3 read x: one product of their weights side by side.
		{"qoperator", fold.QOperator, "MatMulIntegerToFloat", 2, 1e-5},
		{"dynamic", fold.Dynamic, "MatMulInteger", 4, 0.5},
	} {
		m := clone(t, qat)
		res, err := fold.Fold(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := tc.pass(m, res); err != nil {
			t.Fatalf("%s: %v", tc.format, err)
		}
		n := 0
		for _, node := range m.Graph().Node {
			if node.OpType == tc.op {
				n++
			}
			if node.OpType == "MatMul" {
				t.Errorf("%s: %s still runs in float", tc.format, graph.NodeName(node))
			}
		}
		if n != tc.n {
			t.Errorf("%s: %d %s nodes, want %d", tc.format, n, tc.op, tc.n)
		}
		if f, _ := m.Metadata(fold.FormatKey); f != tc.format {
			t.Errorf("format metadata %q, want %s", f, tc.format)
		}
		got := runAll(t, m, in, nil)
		for name, want := range ref {
			d := maxDiff(want.Float32s(), got[name].Float32s())
			t.Logf("%s: %s max abs diff %.3g", tc.format, name, d)
			if d > tc.tol {
				t.Errorf("%s: output %s differs by %g (> %g)", tc.format, name, d, tc.tol)
			}
		}
	}
}

func TestFoldNoQuantizers(t *testing.T) {
	m := graph.New("fp32", 17)
	m.AddInput("x", graph.Float, []int64{2, 2})
	m.AddInitializer(graph.FloatTensor("W", []int64{2, 2}, []float32{1, 2, 3, 4}))
	m.Op("MatMul", "mm", []string{"x", "W"}, []string{"y"})
	m.AddOutput("y", graph.Float, nil)
	if _, err := fold.Fold(m); err == nil || !strings.Contains(err.Error(), "qatc insert") {
		t.Fatalf("got %v, want an error naming qatc insert", err)
	}
}

// TestQOperatorFusions checks that QOperator gives the projections of one
// activation (Q, K and V) one integer product with their biases inside:
// one MatMulIntegerToFloat with a bias input and a Split, no Add, and the
// QAT model's outputs to float rounding.
func TestQOperatorFusions(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	m := graph.New("qkv", 17)
	m.AddInput("x", graph.Float, []int64{2, 3, 8})
	for i, p := range []string{"q", "k", "v"} {
		w, b := p+"/kernel", p+"/bias"
		m.AddInitializer(graph.FloatTensor(w, []int64{8, 6}, randn(r, 48, 0.5)))
		m.AddInitializer(graph.FloatTensor(b, []int64{6}, randn(r, 6, 0.2)))
		m.Op("MatMul", p+"/MatMul", []string{"x", w}, []string{p + "/mm"})
		m.Op("Add", p+"/BiasAdd", []string{p + "/mm", b}, []string{p})
		m.AddOutput(p, graph.Float, nil)
		quantizer(m, w, quantize.KindWeight, 8, []float32{0.8 + 0.1*float32(i)}, 1)
	}
	quantizer(m, "x", quantize.KindAct, 8, []float32{2}, 1)
	if err := m.TopoSort(); err != nil {
		t.Fatal(err)
	}
	in := map[string]*ort.Tensor{"x": ort.Float32([]int64{2, 3, 8}, randn(r, 48, 1))}
	ref := runAll(t, m, in, &ort.Options{Optimization: ort.OptimizeBasic})
	res, err := fold.Fold(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := fold.QOperator(m, res); err != nil {
		t.Fatal(err)
	}
	ops := map[string]int{}
	for _, n := range m.Graph().Node {
		ops[n.OpType]++
		if n.OpType == "MatMulIntegerToFloat" && len(n.Input) != 7 {
			t.Errorf("%s has no bias input: %v", n.Name, n.Input)
		}
	}
	if ops["MatMulIntegerToFloat"] != 1 || ops["Split"] != 1 || ops["Add"] != 0 {
		t.Errorf("ops %v: want one MatMulIntegerToFloat, one Split, no Add", ops)
	}
	got := runAll(t, m, in, nil)
	for name, want := range ref {
		if d := maxDiff(want.Float32s(), got[name].Float32s()); d > 1e-5 {
			t.Errorf("output %s differs by %g", name, d)
		}
	}
}

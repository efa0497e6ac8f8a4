package autodiff_test

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/autodiff"
)

// arg is one input of the op under test: a float variable of the given
// shape (differentiated), a constant int64 or bool tensor, or absent.
type arg struct {
	shape  []int64
	ints   []int64 // constant int64 input
	bools  []bool  // constant bool input
	fconst bool    // a float input that is a constant, not a variable
	absent bool
}

func v(shape ...int64) arg { return arg{shape: append([]int64{}, shape...)} }
func ci(shape []int64, vals ...int64) arg {
	if shape == nil {
		shape = []int64{int64(len(vals))}
	}
	return arg{shape: shape, ints: vals}
}

var none = arg{absent: true}

type fdCase struct {
	name     string
	op       string
	attrs    []*onnx.AttributeProto
	args     []arg
	nout     int   // outputs (default 1)
	skipOut  []int // outputs left out of the loss (their gradient is zero)
	opset    int64 // default 17
	float32  bool  // the op has no double kernel in onnxruntime
	positive bool  // variables drawn from (0.5, 2)
	spread   bool  // variables spaced apart (no ties for Max/Relu/Clip)
}

var (
	I   = graph.AttrInt
	Is  = graph.AttrInts
	F   = graph.AttrFloat
	Str = graph.AttrString
)

var fdCases = []fdCase{
	{name: "Add", op: "Add", args: []arg{v(2, 3), v(2, 3)}},
	{name: "Add/broadcast", op: "Add", args: []arg{v(2, 1, 4), v(3, 1)}},
	{name: "Add/scalar", op: "Add", args: []arg{v(2, 3), v()}},
	{name: "Sub/broadcast", op: "Sub", args: []arg{v(4), v(3, 4)}},
	{name: "Mul/broadcast", op: "Mul", args: []arg{v(2, 3, 4), v(1, 3, 1)}},
	{name: "Div/broadcast", op: "Div", args: []arg{v(3, 1), v(2, 1, 4)}, positive: true},
	{name: "Pow/square", op: "Pow", args: []arg{v(2, 3), {shape: []int64{}, fconst: true}}, positive: true},
	{name: "Pow/both", op: "Pow", args: []arg{v(2, 3), v(3)}, positive: true},
	{name: "Sqrt", op: "Sqrt", args: []arg{v(2, 3)}, positive: true},
	{name: "Neg", op: "Neg", args: []arg{v(5)}},
	{name: "Reciprocal", op: "Reciprocal", args: []arg{v(2, 3)}, positive: true},
	{name: "Exp", op: "Exp", args: []arg{v(2, 3)}},
	{name: "Log", op: "Log", args: []arg{v(2, 3)}, positive: true},
	{name: "Max", op: "Max", args: []arg{v(2, 3), v(3)}, spread: true},
	{name: "Min", op: "Min", args: []arg{v(2, 3), v()}, spread: true},
	{name: "Sum", op: "Sum", args: []arg{v(2, 3), v(3), v(1, 1)}},
	{name: "ReduceMean/keep", op: "ReduceMean", attrs: []*onnx.AttributeProto{Is("axes", -1)}, args: []arg{v(2, 3, 4)}},
	{name: "ReduceMean/drop", op: "ReduceMean", attrs: []*onnx.AttributeProto{Is("axes", 0, 2), I("keepdims", 0)}, args: []arg{v(2, 3, 4)}},
	{name: "ReduceMean/all", op: "ReduceMean", attrs: []*onnx.AttributeProto{I("keepdims", 0)}, args: []arg{v(2, 3)}},
	{name: "ReduceMean/opset18", op: "ReduceMean", opset: 18, attrs: []*onnx.AttributeProto{I("keepdims", 0)}, args: []arg{v(2, 3, 4), ci(nil, 1)}},
	{name: "ReduceSum/input", op: "ReduceSum", attrs: []*onnx.AttributeProto{I("keepdims", 0)}, args: []arg{v(2, 3, 4), ci(nil, -2)}},
	{name: "ReduceSum/all", op: "ReduceSum", args: []arg{v(2, 3)}},
	{name: "ReduceSum/opset11", op: "ReduceSum", opset: 11, attrs: []*onnx.AttributeProto{Is("axes", 1), I("keepdims", 0)}, args: []arg{v(2, 3, 4)}},
	{name: "Softmax", op: "Softmax", attrs: []*onnx.AttributeProto{I("axis", 1)}, args: []arg{v(2, 3, 4)}},
	{name: "Softmax/opset11", op: "Softmax", opset: 11, attrs: []*onnx.AttributeProto{I("axis", 1)}, args: []arg{v(2, 3, 4)}},
	{name: "LogSoftmax", op: "LogSoftmax", args: []arg{v(2, 3, 4)}},
	{name: "LogSoftmax/opset11", op: "LogSoftmax", opset: 11, args: []arg{v(2, 3, 4)}},
	{name: "LayerNormalization", op: "LayerNormalization", attrs: []*onnx.AttributeProto{F("epsilon", 1e-5)}, args: []arg{v(2, 3, 4), v(4), v(4)}, float32: true},
	{name: "LayerNormalization/axis1/3out", op: "LayerNormalization", attrs: []*onnx.AttributeProto{I("axis", 1)}, args: []arg{v(2, 3, 4), v(3, 4), v(4)}, nout: 3, float32: true},
	{name: "Relu", op: "Relu", args: []arg{v(3, 4)}, spread: true},
	{name: "Gelu", op: "Gelu", opset: 20, args: []arg{v(3, 4)}, float32: true},
	{name: "Gelu/tanh", op: "Gelu", opset: 20, attrs: []*onnx.AttributeProto{Str("approximate", "tanh")}, args: []arg{v(3, 4)}, float32: true},
	{name: "Erf", op: "Erf", args: []arg{v(3, 4)}, float32: true},
	{name: "Tanh", op: "Tanh", args: []arg{v(3, 4)}},
	{name: "Sigmoid", op: "Sigmoid", args: []arg{v(3, 4)}},
	{name: "Transpose", op: "Transpose", attrs: []*onnx.AttributeProto{Is("perm", 1, 2, 0)}, args: []arg{v(2, 3, 4)}},
	{name: "Transpose/default", op: "Transpose", args: []arg{v(2, 3, 4)}},
	{name: "Reshape", op: "Reshape", args: []arg{v(2, 3, 4), ci(nil, 4, -1)}},
	{name: "Flatten", op: "Flatten", attrs: []*onnx.AttributeProto{I("axis", 2)}, args: []arg{v(2, 3, 4)}},
	{name: "Squeeze/input", op: "Squeeze", args: []arg{v(2, 1, 4), ci(nil, 1)}},
	{name: "Squeeze/attr", op: "Squeeze", opset: 11, attrs: []*onnx.AttributeProto{Is("axes", 1)}, args: []arg{v(2, 1, 4)}},
	{name: "Unsqueeze/input", op: "Unsqueeze", args: []arg{v(2, 4), ci(nil, 0, -1)}},
	{name: "Unsqueeze/attr", op: "Unsqueeze", opset: 11, attrs: []*onnx.AttributeProto{Is("axes", 1)}, args: []arg{v(2, 4)}},
	{name: "Concat", op: "Concat", attrs: []*onnx.AttributeProto{I("axis", 1)}, args: []arg{v(2, 1, 3), v(2, 2, 3), v(2, 3, 3)}},
	{name: "Concat/negative", op: "Concat", attrs: []*onnx.AttributeProto{I("axis", -1)}, args: []arg{v(2, 2), v(2, 3)}},
	{name: "Split/attr", op: "Split", opset: 11, attrs: []*onnx.AttributeProto{I("axis", 1), Is("split", 1, 2, 1)}, args: []arg{v(2, 4)}, nout: 3, skipOut: []int{1}},
	{name: "Split/input", op: "Split", attrs: []*onnx.AttributeProto{I("axis", -1)}, args: []arg{v(2, 5), ci(nil, 2, 3)}, nout: 2},
	{name: "Split/num_outputs", op: "Split", opset: 18, attrs: []*onnx.AttributeProto{I("axis", 0), I("num_outputs", 2)}, args: []arg{v(4, 3)}, nout: 2, skipOut: []int{0}},
	{name: "Slice", op: "Slice", args: []arg{v(4, 5), ci(nil, 1, -4), ci(nil, 3, 100), ci(nil, 0, 1)}},
	{name: "Slice/steps", op: "Slice", args: []arg{v(6, 5), ci(nil, 5, 0), ci(nil, 0, 5), ci(nil, 0, 1), ci(nil, -2, 2)}},
	{name: "Gather/repeat", op: "Gather", args: []arg{v(5, 3), ci([]int64{2, 3}, 1, 4, 1, 0, 1, -1)}},
	{name: "Gather/axis1", op: "Gather", attrs: []*onnx.AttributeProto{I("axis", 1)}, args: []arg{v(2, 4, 3), ci([]int64{3}, 3, 0, 3)}},
	{name: "Gather/onehot", op: "Gather", opset: 12, args: []arg{v(5, 2, 2), ci([]int64{4}, 1, 1, 4, 0)}},
	{name: "Gather/scalar", op: "Gather", args: []arg{v(4, 3), ci([]int64{}, 2)}},
	{name: "Expand", op: "Expand", args: []arg{v(3, 1), ci(nil, 2, 3, 4)}},
	{name: "Expand/one-dim-shape", op: "Expand", args: []arg{v(1), ci(nil, 5)}},
	{name: "Expand/smaller-shape", op: "Expand", args: []arg{v(2, 3), ci(nil, 1)}},
	{name: "Where", op: "Where", args: []arg{{shape: []int64{2, 3}, bools: []bool{true, false, true, false, false, true}}, v(2, 3), v(3)}},
	{name: "Cast", op: "Cast", attrs: []*onnx.AttributeProto{I("to", int64(graph.Double))}, args: []arg{v(2, 3)}, float32: true},
	{name: "Identity", op: "Identity", args: []arg{v(2, 3)}},
	{name: "Dropout", op: "Dropout", args: []arg{v(2, 3)}},
	{name: "Clip", op: "Clip", args: []arg{v(3, 4), v(), v()}, spread: true},
	{name: "Clip/min", op: "Clip", args: []arg{v(3, 4), v(), none}, spread: true},
	{name: "MatMul", op: "MatMul", args: []arg{v(3, 4), v(4, 2)}},
	{name: "MatMul/batched", op: "MatMul", args: []arg{v(2, 3, 4), v(2, 4, 5)}},
	{name: "MatMul/broadcast", op: "MatMul", args: []arg{v(2, 1, 3, 4), v(3, 4, 2)}},
	{name: "MatMul/weight", op: "MatMul", args: []arg{v(2, 3, 4), v(4, 5)}},
	{name: "MatMul/vec-left", op: "MatMul", args: []arg{v(4), v(2, 4, 3)}},
	{name: "MatMul/vec-right", op: "MatMul", args: []arg{v(2, 3, 4), v(4)}},
	{name: "MatMul/vec-vec", op: "MatMul", args: []arg{v(4), v(4)}},
	{name: "Gemm", op: "Gemm", args: []arg{v(3, 4), v(4, 2), v(2)}},
	{name: "Gemm/trans", op: "Gemm", attrs: []*onnx.AttributeProto{F("alpha", 0.5), F("beta", 2), I("transA", 1), I("transB", 1)}, args: []arg{v(4, 3), v(2, 4), v(3, 1)}},
	{name: "Gemm/transB", op: "Gemm", attrs: []*onnx.AttributeProto{I("transB", 1)}, args: []arg{v(3, 4), v(2, 4), v()}},
}

func doubleTensor(name string, dims []int64, vals []float64) *onnx.TensorProto {
	raw := make([]byte, 8*len(vals))
	for i, x := range vals {
		binary.LittleEndian.PutUint64(raw[8*i:], math.Float64bits(x))
	}
	return &onnx.TensorProto{Name: name, Dims: dims, DataType: int32(graph.Double), RawData: raw}
}

func boolTensor(name string, dims []int64, vals []bool) *onnx.TensorProto {
	raw := make([]byte, len(vals))
	for i, x := range vals {
		if x {
			raw[i] = 1
		}
	}
	return &onnx.TensorProto{Name: name, Dims: dims, DataType: int32(graph.Bool), RawData: raw}
}

func floatInit(name string, dims []int64, vals []float64, f32 bool) *onnx.TensorProto {
	if !f32 {
		return doubleTensor(name, dims, vals)
	}
	v := make([]float32, len(vals))
	for i, x := range vals {
		v[i] = float32(x)
	}
	return graph.FloatTensor(name, dims, v)
}

// fdModel builds L = Σ_i Σ w_i ⊙ op(args)_i for the case, with the
// variables as initializers, and returns it with the variables' values.
func fdModel(t *testing.T, c fdCase, rng *rand.Rand, weights map[int][]float64, shapes map[int][]int64) (*graph.Model, map[string][]float64, map[string][]int64) {
	opset := c.opset
	if opset == 0 {
		opset = 17
	}
	m := graph.New("fd", opset)
	m.Proto.IrVersion = 9
	dt := graph.Double
	if c.float32 {
		dt = graph.Float
	}
	vars := map[string][]float64{}
	vshape := map[string][]int64{}
	var inputs []string
	for i, a := range c.args {
		name := fmt.Sprintf("x%d", i)
		switch {
		case a.absent:
			name = ""
		case a.ints != nil:
			m.AddInitializer(graph.Int64Tensor(name, a.shape, a.ints))
		case a.bools != nil:
			m.AddInitializer(boolTensor(name, a.shape, a.bools))
		case a.fconst:
			m.AddInitializer(floatInit(name, a.shape, []float64{2}, c.float32))
		default:
			n := graph.NumElements(a.shape)
			vals := make([]float64, n)
			perm := rng.Perm(int(n))
			for j := range vals {
				switch {
				case c.positive:
					vals[j] = 0.5 + 1.5*rng.Float64()
				case c.spread:
					// distinct values at least 0.1 apart, shifted per input
					vals[j] = -1 + 2*float64(perm[j])/float64(n) + 0.05*float64(i) + 0.013
				default:
					vals[j] = rng.NormFloat64()
				}
			}
			m.AddInitializer(floatInit(name, a.shape, vals, c.float32))
			vars[name] = vals
			vshape[name] = a.shape
		}
		inputs = append(inputs, name)
	}
	nout := max(c.nout, 1)
	outs := make([]string, nout)
	for i := range outs {
		outs[i] = fmt.Sprintf("y%d", i)
	}
	m.Op(c.op, "op", inputs, outs, c.attrs...)
	if weights == nil {
		for _, o := range outs {
			ot := dt
			if c.op == "Cast" {
				ot = graph.Double
			}
			m.AddOutput(o, ot, nil)
		}
		// Variables as inputs: the forward run feeds them.
		for name, shape := range vshape {
			m.RemoveInitializer(name)
			m.AddInput(name, dt, shape)
		}
		return m, vars, vshape
	}
	skip := map[int]bool{}
	for _, i := range c.skipOut {
		skip[i] = true
	}
	var terms []string
	for i, o := range outs {
		if skip[i] {
			continue
		}
		y := o
		if c.op == "Cast" || c.op == "LayerNormalization" && i > 0 && !c.float32 {
			y = m.UniqueName("cast")
			m.Op("Cast", "", []string{o}, []string{y}, I("to", int64(dt)))
		}
		w := fmt.Sprintf("w%d", i)
		m.AddInitializer(floatInit(w, shapes[i], weights[i], c.float32))
		p := m.UniqueName("prod")
		m.Op("Mul", "", []string{y, w}, []string{p})
		s := m.UniqueName("sum")
		if opset >= 13 {
			m.Op("ReduceSum", "", []string{p}, []string{s}, I("keepdims", 0))
		} else {
			m.Op("ReduceSum", "", []string{p}, []string{s}, I("keepdims", 0))
		}
		terms = append(terms, s)
	}
	m.Op("Sum", "", terms, []string{"L"})
	m.AddOutput("L", dt, []int64{})
	return m, vars, vshape
}

func toTensor(shape []int64, vals []float64, f32 bool) *ort.Tensor {
	if !f32 {
		return ort.Float64(shape, append([]float64(nil), vals...))
	}
	v := make([]float32, len(vals))
	for i, x := range vals {
		v[i] = float32(x)
	}
	return ort.Float32(shape, v)
}

func toFloat64s(t *ort.Tensor) []float64 {
	switch d := t.Data.(type) {
	case []float64:
		return d
	case []float32:
		out := make([]float64, len(d))
		for i, x := range d {
			out[i] = float64(x)
		}
		return out
	}
	panic(fmt.Sprintf("not a float tensor: %T", t.Data))
}

// TestRulesFiniteDifferences compares each rule's symbolic gradient, run
// by onnxruntime, with central differences of a random linear functional
// of the op's outputs.
func TestRulesFiniteDifferences(t *testing.T) {
	if err := ort.Init(); err != nil {
		t.Fatal(err)
	}
	for ci, c := range fdCases {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(ci), 7))
			// Forward once for the output shapes.
			fm, vars, vshape := fdModel(t, c, rng, nil, nil)
			s, err := ort.Open(fm, nil)
			if err != nil {
				t.Fatalf("forward model: %v", err)
			}
			feeds := map[string]*ort.Tensor{}
			for name, x := range vars {
				feeds[name] = toTensor(vshape[name], x, c.float32)
			}
			outs, err := s.Run(feeds)
			s.Close()
			if err != nil {
				t.Fatal(err)
			}
			weights, shapes := map[int][]float64{}, map[int][]int64{}
			for i := 0; i < max(c.nout, 1); i++ {
				y := outs[fmt.Sprintf("y%d", i)]
				w := make([]float64, y.Len())
				for j := range w {
					w[j] = rng.NormFloat64()
				}
				weights[i], shapes[i] = w, y.Shape
			}
			rng = rand.New(rand.NewPCG(uint64(ci), 7))
			m, _, _ := fdModel(t, c, rng, weights, shapes)
			var trainable []string
			for name := range vars {
				trainable = append(trainable, name)
			}
			tm, info, err := autodiff.Build(m, autodiff.Options{Logits: "L", Trainable: trainable, Loss: autodiff.Loss{Kind: "scalar"}})
			if err != nil {
				t.Fatal(err)
			}
			ts, err := ort.Open(tm, nil)
			if err != nil {
				t.Fatalf("training graph: %v", err)
			}
			defer ts.Close()
			run := func(vals map[string][]float64) map[string]*ort.Tensor {
				feeds := map[string]*ort.Tensor{}
				for name, x := range vals {
					feeds[name] = toTensor(vshape[name], x, c.float32)
				}
				res, err := ts.Run(feeds)
				if err != nil {
					t.Fatal(err)
				}
				return res
			}
			base := run(vars)
			h, tol := 1e-5, 1e-7
			if c.float32 {
				h, tol = 1e-2, 3e-3
			}
			for _, p := range info.Params {
				sym := toFloat64s(base[p.Grad])
				x := vars[p.Name]
				worst, scale := 0.0, 1e-3
				for _, g := range sym {
					scale = max(scale, math.Abs(g))
				}
				for j := range x {
					plus := cloneVars(vars)
					plus[p.Name][j] += h
					minus := cloneVars(vars)
					minus[p.Name][j] -= h
					num := (toFloat64s(run(plus)["loss"])[0] - toFloat64s(run(minus)["loss"])[0]) / (2 * h)
					worst = max(worst, math.Abs(num-sym[j]))
				}
				if worst > tol*scale {
					t.Errorf("d/d%s: max |symbolic − numeric| = %.3g (%.3g × max|g|)", p.Name, worst, worst/scale)
				}
			}
		})
	}
}

func cloneVars(v map[string][]float64) map[string][]float64 {
	out := make(map[string][]float64, len(v))
	for k, x := range v {
		out[k] = append([]float64(nil), x...)
	}
	return out
}

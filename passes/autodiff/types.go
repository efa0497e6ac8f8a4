package autodiff

import (
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// facts is what the pass knows statically about the forward graph's
// values: element types and ranks (constants are read with
// graph.Model.Const). It is a
// small inference of its own so that the pass does not depend on full
// shape inference; InferShapes, where it succeeds, only fills in ranks
// this one cannot see.
type facts struct {
	m    *graph.Model
	elem map[string]graph.DataType
	rank map[string]int
	hint map[string]graph.TensorInfo
}

func isFloat(t graph.DataType) bool {
	return t == graph.Float || t == graph.Double || t == graph.Float16 || t == graph.BFloat16
}

func newFacts(m *graph.Model) *facts {
	f := &facts{m: m, elem: map[string]graph.DataType{}, rank: map[string]int{}}
	if info, err := m.InferShapes(); err == nil {
		f.hint = info
	}
	g := m.Graph()
	for _, v := range g.Input {
		dt, r := valueType(v)
		f.elem[v.Name], f.rank[v.Name] = dt, r
	}
	for _, v := range g.ValueInfo {
		dt, r := valueType(v)
		f.elem[v.Name], f.rank[v.Name] = dt, r
	}
	for _, t := range g.Initializer {
		f.elem[t.Name] = graph.DataType(t.DataType)
		f.rank[t.Name] = len(t.Dims)
	}
	for _, n := range g.Node {
		f.node(n)
	}
	return f
}

func valueType(v *onnx.ValueInfoProto) (graph.DataType, int) {
	tt := v.GetType().GetTensorType()
	if tt == nil {
		return graph.Undefined, -1
	}
	if tt.Shape == nil {
		return graph.DataType(tt.ElemType), -1
	}
	return graph.DataType(tt.ElemType), len(tt.Shape.Dim)
}

// Rank returns v's rank, or -1 when it is not known.
func (f *facts) Rank(v string) int {
	if r, ok := f.rank[v]; ok && r >= 0 {
		return r
	}
	if ti, ok := f.hint[v]; ok && ti.RankKnown {
		return len(ti.Dims)
	}
	return -1
}

// Elem returns v's element type (Undefined when not known).
func (f *facts) Elem(v string) graph.DataType {
	if t := f.elem[v]; t != graph.Undefined {
		return t
	}
	if ti, ok := f.hint[v]; ok {
		return ti.Elem
	}
	return graph.Undefined
}

// length returns the static length of a 1-D integer tensor (a shape
// operand), following the Concat/Unsqueeze/Shape arithmetic exporters write.
func (f *facts) length(v string) int {
	if t := f.m.Const(v); t != nil {
		if len(t.Dims) == 1 {
			return int(t.Dims[0])
		}
		if len(t.Dims) == 0 {
			return 1
		}
		return -1
	}
	n := f.m.Producer(v)
	if n == nil {
		return -1
	}
	switch n.OpType {
	case "Shape":
		if graph.Attr(n, "start") != nil || graph.Attr(n, "end") != nil {
			return -1
		}
		return f.Rank(n.Input[0])
	case "Concat":
		total := 0
		for _, in := range n.Input {
			l := f.length(in)
			if l < 0 {
				return -1
			}
			total += l
		}
		return total
	case "Unsqueeze":
		if f.Rank(n.Input[0]) == 0 {
			return 1
		}
	case "Cast", "Identity":
		return f.length(n.Input[0])
	}
	if ti, ok := f.hint[v]; ok && ti.RankKnown && len(ti.Dims) == 1 && ti.Dims[0].Static() {
		return int(ti.Dims[0].Value)
	}
	return -1
}

// axesOf returns the axes of a reduce/squeeze-like node: from the
// attribute, or from constant input i at opsets that take them as input.
// given is false when the node has none (meaning "all" for reductions).
func (f *facts) axesOf(n *onnx.NodeProto, i int) (axes []int64, given, ok bool) {
	if a := graph.Attr(n, "axes"); a != nil {
		return a.Ints, true, true
	}
	if len(n.Input) > i && n.Input[i] != "" {
		ax, ok := f.m.ConstInts(n.Input[i])
		return ax, true, ok
	}
	return nil, false, true
}

func (f *facts) set(v string, dt graph.DataType, r int) {
	if v == "" {
		return
	}
	if _, ok := f.elem[v]; !ok || f.elem[v] == graph.Undefined {
		f.elem[v] = dt
	}
	if old, ok := f.rank[v]; !ok || old < 0 {
		f.rank[v] = r
	}
}

// node records the element types and ranks of n's outputs.
func (f *facts) node(n *onnx.NodeProto) {
	in := func(i int) string {
		if i < len(n.Input) {
			return n.Input[i]
		}
		return ""
	}
	r0, e0 := f.Rank(in(0)), f.Elem(in(0))
	maxRank := func(ins []string) int {
		r := 0
		for _, x := range ins {
			if x == "" {
				continue
			}
			rx := f.Rank(x)
			if rx < 0 {
				return -1
			}
			r = max(r, rx)
		}
		return r
	}
	out := func(dt graph.DataType, r int) {
		for _, o := range n.Output {
			f.set(o, dt, r)
		}
	}
	switch n.OpType {
	case "Constant":
		if a := graph.Attr(n, "value"); a != nil && a.T != nil {
			t := a.T
			out(graph.DataType(t.DataType), len(t.Dims))
			return
		}
		if a := graph.Attr(n, "value_float"); a != nil {
			out(graph.Float, 0)
		} else if a := graph.Attr(n, "value_int"); a != nil {
			out(graph.Int64, 0)
		} else if a := graph.Attr(n, "value_ints"); a != nil {
			out(graph.Int64, 1)
		} else if a := graph.Attr(n, "value_floats"); a != nil {
			out(graph.Float, 1)
		}
	case "Shape":
		out(graph.Int64, 1)
	case "Size":
		out(graph.Int64, 0)
	case "NonZero":
		out(graph.Int64, 2)
	case "Cast":
		out(graph.DataType(graph.IntAttr(n, "to", 0)), r0)
	case "CastLike":
		out(f.Elem(in(1)), r0)
	case "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor":
		out(graph.Bool, maxRank(n.Input))
	case "Not", "IsNaN", "IsInf":
		out(graph.Bool, r0)
	case "ConstantOfShape":
		dt := graph.Float
		if a := graph.Attr(n, "value"); a != nil && a.T != nil {
			dt = graph.DataType(a.T.DataType)
		}
		out(dt, f.length(in(0)))
	case "QuantizeLinear":
		dt := graph.Uint8
		if z := in(2); z != "" {
			dt = f.Elem(z)
		} else if a := graph.Attr(n, "output_dtype"); a != nil && a.I != 0 {
			dt = graph.DataType(a.I)
		}
		out(dt, r0)
	case "DequantizeLinear":
		out(f.Elem(in(1)), r0)
	case "Where":
		out(f.Elem(in(1)), maxRank(n.Input))
	case "MatMul":
		ra, rb := r0, f.Rank(in(1))
		r := -1
		switch {
		case ra < 0 || rb < 0:
		case ra == 1 && rb == 1:
			r = 0
		case ra == 1:
			r = rb - 1
		case rb == 1:
			r = ra - 1
		default:
			r = max(ra, rb)
		}
		out(e0, r)
	case "Gemm", "Flatten":
		out(e0, 2)
	case "Transpose":
		if p := graph.IntsAttr(n, "perm"); p != nil {
			out(e0, len(p))
		} else {
			out(e0, r0)
		}
	case "Reshape":
		out(e0, f.length(in(1)))
	case "Expand":
		l := f.length(in(1))
		if l < 0 || r0 < 0 {
			out(e0, -1)
		} else {
			out(e0, max(l, r0))
		}
	case "Unsqueeze", "Squeeze":
		axes, given, ok := f.axesOf(n, 1)
		switch {
		case r0 < 0 || !ok || (!given && n.OpType == "Squeeze"):
			out(e0, -1)
		case n.OpType == "Unsqueeze":
			out(e0, r0+len(axes))
		default:
			out(e0, r0-len(axes))
		}
	case "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceL1",
		"ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin":
		dt := e0
		if n.OpType == "ArgMax" || n.OpType == "ArgMin" {
			dt = graph.Int64
		}
		axesInput := n.OpType == "ReduceSum" && f.m.Opset("") >= 13 || f.m.Opset("") >= 18 && n.OpType != "ArgMax" && n.OpType != "ArgMin"
		var axes []int64
		given, ok := true, true
		if n.OpType == "ArgMax" || n.OpType == "ArgMin" {
			axes = []int64{graph.IntAttr(n, "axis", 0)}
		} else if axesInput {
			axes, given, ok = f.axesOf(n, 1)
		} else {
			axes, given, ok = f.axesOf(n, 99)
		}
		keep := graph.IntAttr(n, "keepdims", 1) == 1
		switch {
		case r0 < 0 || !ok:
			out(dt, -1)
		case keep:
			out(dt, r0)
		case !given || len(axes) == 0:
			if graph.IntAttr(n, "noop_with_empty_axes", 0) == 1 {
				out(dt, r0)
			} else {
				out(dt, 0)
			}
		default:
			out(dt, r0-len(axes))
		}
	case "Gather":
		ri := f.Rank(in(1))
		if r0 < 0 || ri < 0 {
			out(e0, -1)
		} else {
			out(e0, r0-1+ri)
		}
	case "GatherElements":
		out(e0, f.Rank(in(1)))
	case "Concat":
		r := -1
		for _, x := range n.Input {
			if rx := f.Rank(x); rx >= 0 {
				r = rx
			}
		}
		out(e0, r)
	case "Range":
		out(e0, 1)
	case "OneHot":
		out(f.Elem(in(2)), -1)
		if r := f.Rank(in(0)); r >= 0 {
			f.set(n.Output[0], f.Elem(in(2)), r+1)
		}
	case "LayerNormalization":
		f.set(n.Output[0], e0, r0)
		for _, o := range n.Output[1:] {
			f.set(o, graph.Float, r0)
		}
	case "Dropout":
		f.set(n.Output[0], e0, r0)
		if len(n.Output) > 1 {
			f.set(n.Output[1], graph.Bool, r0)
		}
	case "TopK":
		f.set(n.Output[0], e0, r0)
		if len(n.Output) > 1 {
			f.set(n.Output[1], graph.Int64, r0)
		}
	case "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Mod", "BitShift", "PRelu":
		out(e0, maxRank(n.Input))
	default:
		// Elementwise and shape-preserving ops (Relu, Softmax, Slice,
		// Split, Clip, Trilu, Tile, ...) keep the first input's type and
		// rank.
		out(e0, r0)
	}
}

// dims returns v's dims from shape inference when every one is static or
// named, so that equal dims are provably equal.
func (f *facts) dims(v string) ([]graph.Dim, bool) {
	if v == "" {
		return nil, false
	}
	ti, ok := f.hint[v]
	if !ok || !ti.RankKnown {
		return nil, false
	}
	for _, d := range ti.Dims {
		if !d.Static() && d.Param == "" {
			return nil, false
		}
	}
	return ti.Dims, true
}

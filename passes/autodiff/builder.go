package autodiff

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// builder emits the backward graph into the training model. Rules use its
// helpers so that every emitted op is valid at the model's opset.
type builder struct {
	m      *graph.Model
	f      *facts
	opset  int64
	active map[string]bool     // float values that depend on a trainable input
	grads  map[string][]string // gradient contributions per value, summed lazily
	quant  map[*onnx.NodeProto]*quantUnit
	opts   *Options
	node   *onnx.NodeProto   // the forward node whose rule runs now (names)
	consts map[string]string // constants already emitted, by type and value
}

// needs reports whether value v takes a gradient.
func (b *builder) needs(v string) bool { return v != "" && b.active[v] }

// accum adds g to v's gradient when v takes one.
func (b *builder) accum(v, g string) {
	if g == "" || !b.needs(v) {
		return
	}
	b.grads[v] = append(b.grads[v], g)
}

// grad returns the summed gradient of v ("" when none reached it).
func (b *builder) grad(v string) string {
	gs := b.grads[v]
	switch len(gs) {
	case 0:
		return ""
	case 1:
		return gs[0]
	}
	s := b.op("Sum", gs)
	b.grads[v] = []string{s}
	b.f.set(s, b.f.Elem(v), b.f.Rank(v))
	return s
}

// name returns a fresh value name derived from the current forward node.
func (b *builder) name(op string) string {
	base := "grad"
	if b.node != nil {
		base = graph.NodeName(b.node) + "_grad"
	}
	return b.m.UniqueName(base + "/" + op)
}

// op emits a single-output node and returns its output.
func (b *builder) op(op string, inputs []string, attrs ...*onnx.AttributeProto) string {
	out := b.name(op)
	b.m.AddNode(&onnx.NodeProto{OpType: op, Name: out, Input: inputs, Output: []string{out}, Attribute: attrs})
	return out
}

// typed emits op and records its output's element type and rank, which
// later helpers (constants, reductions) consult.
func (b *builder) typed(dt graph.DataType, rank int, op string, inputs []string, attrs ...*onnx.AttributeProto) string {
	out := b.op(op, inputs, attrs...)
	b.f.set(out, dt, rank)
	return out
}

// like emits an op whose result has v's element type and rank.
func (b *builder) like(v, op string, inputs []string, attrs ...*onnx.AttributeProto) string {
	return b.typed(b.f.Elem(v), b.f.Rank(v), op, inputs, attrs...)
}

func (b *builder) mul(x, y string) string { return b.like(x, "Mul", []string{x, y}) }
func (b *builder) div(x, y string) string { return b.like(x, "Div", []string{x, y}) }
func (b *builder) add(x, y string) string { return b.like(x, "Add", []string{x, y}) }
func (b *builder) sub(x, y string) string { return b.like(x, "Sub", []string{x, y}) }
func (b *builder) neg(x string) string    { return b.like(x, "Neg", []string{x}) }

// scalar returns a scalar constant of element type dt.
func (b *builder) scalar(dt graph.DataType, v float64) string {
	key := fmt.Sprintf("%d:%v", dt, v)
	if name, ok := b.consts[key]; ok {
		return name
	}
	name := b.scalarConst(dt, v)
	if b.consts == nil {
		b.consts = map[string]string{}
	}
	b.consts[key] = name
	return name
}

func (b *builder) scalarConst(dt graph.DataType, v float64) string {
	name := b.m.UniqueName(fmt.Sprintf("grad/const_%v", v))
	var t *onnx.TensorProto
	switch dt {
	case graph.Double:
		raw := make([]byte, 8)
		binary.LittleEndian.PutUint64(raw, math.Float64bits(v))
		t = &onnx.TensorProto{Name: name, DataType: int32(graph.Double), RawData: raw}
	case graph.Float:
		t = graph.FloatTensor(name, nil, []float32{float32(v)})
	case graph.Int64:
		t = graph.Int64Tensor(name, nil, []int64{int64(v)})
	default:
		// Half-precision models get a float constant cast to their type.
		f := b.scalar(graph.Float, v)
		return b.typed(dt, 0, "Cast", []string{f}, graph.AttrInt("to", int64(dt)))
	}
	b.m.AddInitializer(t)
	b.f.set(name, dt, 0)
	return name
}

// constOf returns a scalar constant with v's element type.
func (b *builder) constOf(v string, x float64) string { return b.scalar(b.f.Elem(v), x) }

// ints returns a 1-D int64 constant.
func (b *builder) ints(vals ...int64) string {
	key := fmt.Sprint("ints:", vals)
	if name, ok := b.consts[key]; ok {
		return name
	}
	name := b.m.UniqueName("grad/ints")
	if b.consts == nil {
		b.consts = map[string]string{}
	}
	b.consts[key] = name
	b.m.AddInitializer(graph.Int64Tensor(name, []int64{int64(len(vals))}, vals))
	b.f.set(name, graph.Int64, 1)
	return name
}

func (b *builder) shape(x string) string { return b.typed(graph.Int64, 1, "Shape", []string{x}) }

// zerosLike returns zeros of x's shape and type.
func (b *builder) zerosLike(x string) string {
	dt := b.f.Elem(x)
	var val *onnx.TensorProto
	switch dt {
	case graph.Double:
		val = &onnx.TensorProto{DataType: int32(graph.Double), Dims: []int64{1}, RawData: make([]byte, 8)}
	default:
		val = graph.FloatTensor("", []int64{1}, []float32{0})
	}
	z := b.typed(graph.Float, b.f.Rank(x), "ConstantOfShape", []string{b.shape(x)}, graph.AttrTensor("value", val))
	if dt != graph.Float && dt != graph.Double {
		z = b.typed(dt, b.f.Rank(x), "Cast", []string{z}, graph.AttrInt("to", int64(dt)))
	}
	b.f.set(z, dt, b.f.Rank(x))
	return z
}

// maskOf casts a boolean tensor to like's element type.
func (b *builder) maskOf(cond, like string) string {
	return b.typed(b.f.Elem(like), b.f.Rank(cond), "Cast", []string{cond}, graph.AttrInt("to", int64(b.f.Elem(like))))
}

func (b *builder) cmp(op, x, y string) string {
	return b.typed(graph.Bool, max(b.f.Rank(x), b.f.Rank(y)), op, []string{x, y})
}

// reduceSum sums x over static axes, in the form the opset takes.
func (b *builder) reduceSum(x string, axes []int64, keep bool) string {
	k := int64(0)
	if keep {
		k = 1
	}
	r := b.f.Rank(x)
	if r >= 0 && !keep {
		r -= len(axes)
	}
	if b.opset >= 13 {
		return b.typed(b.f.Elem(x), r, "ReduceSum", []string{x, b.ints(axes...)}, graph.AttrInt("keepdims", k))
	}
	return b.typed(b.f.Elem(x), r, "ReduceSum", []string{x}, graph.AttrInts("axes", axes...), graph.AttrInt("keepdims", k))
}

// unsqueeze inserts size-1 axes at static positions.
func (b *builder) unsqueeze(x string, axes ...int64) string {
	r := b.f.Rank(x)
	if r >= 0 {
		r += len(axes)
	}
	if b.opset >= 13 {
		return b.typed(b.f.Elem(x), r, "Unsqueeze", []string{x, b.ints(axes...)})
	}
	return b.typed(b.f.Elem(x), r, "Unsqueeze", []string{x}, graph.AttrInts("axes", axes...))
}

// reshapeLike reshapes g to the (runtime) shape of x.
func (b *builder) reshapeLike(g, x string) string {
	return b.typed(b.f.Elem(g), b.f.Rank(x), "Reshape", []string{g, b.shape(x)})
}

// reshape reshapes g to a static target shape.
func (b *builder) reshape(g string, dims ...int64) string {
	return b.typed(b.f.Elem(g), len(dims), "Reshape", []string{g, b.ints(dims...)})
}

func (b *builder) transpose(x string, perm ...int64) string {
	return b.typed(b.f.Elem(x), len(perm), "Transpose", []string{x}, graph.AttrInts("perm", perm...))
}

// unbroadcast reduces g, the gradient of forward value y ("" when there is
// none) into which operand x was broadcast, back to x's shape: a ReduceSum
// over the broadcast axes. The axes are static where x's shape is a
// constant or the shapes of x and y are known well enough to compare, and
// computed in the graph otherwise (Shape arithmetic, opset 13 or later).
func (b *builder) unbroadcast(g, x, y string) (string, error) {
	ry := b.f.Rank(g)
	if y != "" && b.f.Rank(y) >= 0 {
		ry = b.f.Rank(y)
	}
	if axes, ok := b.broadcastAxes(x, y, ry); ok {
		if len(axes) == 0 {
			return g, nil
		}
		if s, ok := b.sumLeading(g, x, axes, ry); ok {
			return s, nil
		}
		s := b.reduceSum(g, axes, true)
		if rx := b.f.Rank(x); rx != ry {
			if t := b.staticDims(x); t != nil {
				return b.reshape(s, t...), nil
			}
			return b.reshapeLike(s, x), nil
		}
		return s, nil
	}
	if b.f.Rank(x) == 0 {
		// A scalar takes the sum of everything.
		return b.typed(b.f.Elem(g), 0, "ReduceSum", []string{g}, graph.AttrInt("keepdims", 0)), nil
	}
	if b.opset < 13 {
		return "", fmt.Errorf("cannot undo the broadcast of %q without its static shape at opset %d (the graph computes the axes from opset 13 on)", x, b.opset)
	}
	// axes = positions where x, left-padded with ones to g's rank, is 1.
	sx, sy := b.shape(x), b.shape(g)
	rxv := b.typed(graph.Int64, 1, "Shape", []string{sx})
	ryv := b.typed(graph.Int64, 1, "Shape", []string{sy})
	pad := b.typed(graph.Int64, 1, "Sub", []string{ryv, rxv})
	one := &onnx.TensorProto{DataType: int32(graph.Int64), Dims: []int64{1}, RawData: []byte{1, 0, 0, 0, 0, 0, 0, 0}}
	ones := b.typed(graph.Int64, 1, "ConstantOfShape", []string{pad}, graph.AttrTensor("value", one))
	padded := b.typed(graph.Int64, 1, "Concat", []string{ones, sx}, graph.AttrInt("axis", 0))
	isOne := b.typed(graph.Bool, 1, "Equal", []string{padded, b.ints(1)})
	nz := b.typed(graph.Int64, 2, "NonZero", []string{isOne})
	axes := b.typed(graph.Int64, 1, "Reshape", []string{nz, b.ints(-1)})
	s := b.like(g, "ReduceSum", []string{g, axes}, graph.AttrInt("keepdims", 1), graph.AttrInt("noop_with_empty_axes", 1))
	return b.reshapeLike(s, x), nil
}

// sumLeading sums g over its leading axes when those are exactly the axes
// x (of static shape) was broadcast along, as the product of a row of ones
// and g viewed as a [rows, size of x] matrix: onnxruntime's ReduceSum over
// leading axes (every bias and LayerNorm gradient) is an order of
// magnitude slower than the matrix-vector product.
func (b *builder) sumLeading(g, x string, axes []int64, ry int) (string, bool) {
	t := b.staticDims(x)
	dt := b.f.Elem(g)
	if t == nil || dt != graph.Float || b.opset < 10 || len(t) > ry || len(axes) == ry {
		// (A full reduction is fast as it is.)
		return "", false
	}
	for i, a := range axes {
		if a != int64(i) {
			return "", false
		}
	}
	k := len(axes)
	n := int64(1)
	for i := k; i < ry; i++ {
		n *= t[i-(ry-len(t))]
	}
	g2 := b.reshape(g, -1, n)
	rows := b.typed(graph.Int64, 1, "Slice", []string{b.shape(g2), b.ints(0), b.ints(1)})
	shape := b.typed(graph.Int64, 1, "Concat", []string{b.ints(1), rows}, graph.AttrInt("axis", 0))
	ones := b.typed(dt, 2, "ConstantOfShape", []string{shape}, graph.AttrTensor("value", graph.FloatTensor("", []int64{1}, []float32{1})))
	sum := b.typed(dt, 2, "MatMul", []string{ones, g2})
	return b.reshape(sum, t...), true
}

// broadcastAxes returns the axes of y (of rank ry) that x was broadcast
// along, when that is known statically.
func (b *builder) broadcastAxes(x, y string, ry int) ([]int64, bool) {
	if ry < 0 {
		return nil, false
	}
	if t := b.staticDims(x); t != nil && len(t) <= ry {
		var axes []int64
		for i := 0; i < ry; i++ {
			j := i - (ry - len(t))
			if j < 0 || t[j] == 1 {
				axes = append(axes, int64(i))
			}
		}
		return axes, true
	}
	xd, ok1 := b.f.dims(x)
	yd, ok2 := b.f.dims(y)
	if !ok1 || !ok2 || len(xd) > len(yd) || len(yd) != ry {
		return nil, false
	}
	var axes []int64
	for i := range yd {
		j := i - (len(yd) - len(xd))
		switch {
		case j < 0 || xd[j].Value == 1:
			if !(yd[i].Value == 1 && j >= 0) {
				axes = append(axes, int64(i))
			}
		case xd[j] == yd[i]:
		default:
			return nil, false
		}
	}
	return axes, true
}

// staticDims returns x's dims when x is a constant or a parameter (whose
// shape the pass recorded), else nil.
func (b *builder) staticDims(x string) []int64 {
	if t := b.m.Const(x); t != nil {
		if t.Dims == nil {
			return []int64{}
		}
		return t.Dims
	}
	if v := b.m.Input(x); v != nil {
		tt := v.GetType().GetTensorType()
		if tt == nil || tt.Shape == nil {
			return nil
		}
		dims := make([]int64, len(tt.Shape.Dim))
		for i, d := range tt.Shape.Dim {
			dv, ok := d.Value.(*onnx.TensorShapeProto_Dimension_DimValue)
			if !ok {
				return nil
			}
			dims[i] = dv.DimValue
		}
		return dims
	}
	return nil
}

// staticShape returns x's dims when they are all known: from a constant
// or parameter, or from shape inference.
func (b *builder) staticShape(x string) []int64 {
	if t := b.staticDims(x); t != nil {
		return t
	}
	d, ok := b.f.dims(x)
	if !ok {
		return nil
	}
	out := make([]int64, len(d))
	for i, v := range d {
		if !v.Static() {
			return nil
		}
		out[i] = v.Value
	}
	return out
}

// normAxis turns a negative axis into a positive one given the rank.
func normAxis(axis int64, rank int) (int64, bool) {
	if axis < 0 {
		if rank < 0 {
			return 0, false
		}
		axis += int64(rank)
	}
	return axis, axis >= 0 && (rank < 0 || axis < int64(rank))
}

package autodiff

import (
	"fmt"
	"math"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// A rule emits the gradients of node n's inputs given the gradients gy of
// its outputs ("" for an output no gradient reached). It hands each
// input's gradient to b.accum, and only computes those b.needs.
type rule func(b *builder, n *onnx.NodeProto, gy []string) error

// rules maps op types to their gradient rules, one function per op, in
// the manner of a compiler's rewrite table.
var rules map[string]rule

func init() {
	rules = map[string]rule{
		"Add":                gradAdd,
		"Cast":               gradCast,
		"Clip":               gradClip,
		"Concat":             gradConcat,
		"DequantizeLinear":   gradDequantize,
		"Div":                gradDiv,
		"Dropout":            gradIdentity,
		"Erf":                gradErf,
		"Exp":                gradExp,
		"Expand":             gradExpand,
		"Flatten":            gradReshapeLike,
		"Gather":             gradGather,
		"Gelu":               gradGelu,
		"Gemm":               gradGemm,
		"Identity":           gradIdentity,
		"LayerNormalization": gradLayerNorm,
		"Log":                gradLog,
		"LogSoftmax":         gradLogSoftmax,
		"MatMul":             gradMatMul,
		"Max":                gradMaxMin,
		"Min":                gradMaxMin,
		"Mul":                gradMul,
		"Neg":                gradNeg,
		"Pow":                gradPow,
		"Reciprocal":         gradReciprocal,
		"ReduceMean":         gradReduce,
		"ReduceSum":          gradReduce,
		"Relu":               gradRelu,
		"Reshape":            gradReshapeLike,
		"Sigmoid":            gradSigmoid,
		"Slice":              gradSlice,
		"Softmax":            gradSoftmax,
		"Split":              gradSplit,
		"Sqrt":               gradSqrt,
		"Squeeze":            gradReshapeLike,
		"Sub":                gradSub,
		"Sum":                gradSum,
		"Tanh":               gradTanh,
		"Transpose":          gradTranspose,
		"Unsqueeze":          gradReshapeLike,
		"Where":              gradWhere,
	}
}

// elementwise ops broadcast their data operands against each other, so
// an operand's gradient is the output's summed over the broadcast axes.
var elementwise = map[string]bool{
	"Add": true, "Sub": true, "Mul": true, "Div": true, "Pow": true, "Max": true,
	"Min": true, "Sum": true, "Where": true, "Clip": true,
}

func in(n *onnx.NodeProto, i int) string {
	if i < len(n.Input) {
		return n.Input[i]
	}
	return ""
}

// accumUnb hands g, the gradient of y, to x after undoing broadcasting.
func accumUnb(b *builder, x, g, y string) error {
	if !b.needs(x) {
		return nil
	}
	if p := b.m.Producer(y); p != nil && elementwise[p.OpType] && onlyOnes(b, p, x) {
		// Every other operand is a constant of ones in shape no larger
		// than x: y has x's shape.
		b.accum(x, g)
		return nil
	}
	u, err := b.unbroadcast(g, x, y)
	if err != nil {
		return err
	}
	b.accum(x, u)
	return nil
}

// onlyOnes reports whether every input of n other than x is a constant
// whose dims are all 1 and whose rank does not exceed x's.
func onlyOnes(b *builder, n *onnx.NodeProto, x string) bool {
	rx := b.f.Rank(x)
	if rx < 0 {
		return false
	}
	for _, o := range n.Input {
		if o == x || o == "" {
			continue
		}
		t := b.m.Const(o)
		if t == nil || len(t.Dims) > rx {
			return false
		}
		for _, d := range t.Dims {
			if d != 1 {
				return false
			}
		}
	}
	return true
}

func gradAdd(b *builder, n *onnx.NodeProto, gy []string) error {
	if err := accumUnb(b, in(n, 0), gy[0], n.Output[0]); err != nil {
		return err
	}
	return accumUnb(b, in(n, 1), gy[0], n.Output[0])
}

func gradSum(b *builder, n *onnx.NodeProto, gy []string) error {
	for _, x := range n.Input {
		if err := accumUnb(b, x, gy[0], n.Output[0]); err != nil {
			return err
		}
	}
	return nil
}

func gradSub(b *builder, n *onnx.NodeProto, gy []string) error {
	if err := accumUnb(b, in(n, 0), gy[0], n.Output[0]); err != nil {
		return err
	}
	if b.needs(in(n, 1)) {
		return accumUnb(b, in(n, 1), b.neg(gy[0]), n.Output[0])
	}
	return nil
}

func gradMul(b *builder, n *onnx.NodeProto, gy []string) error {
	x, y := in(n, 0), in(n, 1)
	if b.needs(x) {
		if err := accumUnb(b, x, b.mul(gy[0], y), n.Output[0]); err != nil {
			return err
		}
	}
	if b.needs(y) {
		return accumUnb(b, y, b.mul(gy[0], x), n.Output[0])
	}
	return nil
}

func gradDiv(b *builder, n *onnx.NodeProto, gy []string) error {
	x, y, out := in(n, 0), in(n, 1), n.Output[0]
	if b.needs(x) {
		if err := accumUnb(b, x, b.div(gy[0], y), n.Output[0]); err != nil {
			return err
		}
	}
	if b.needs(y) {
		// d(x/y)/dy = -out/y
		return accumUnb(b, y, b.neg(b.div(b.mul(gy[0], out), y)), n.Output[0])
	}
	return nil
}

func gradPow(b *builder, n *onnx.NodeProto, gy []string) error {
	x, e, out := in(n, 0), in(n, 1), n.Output[0]
	if b.needs(x) {
		var d string
		if v, ok := b.m.ConstFloats(e); ok && len(v) == 1 && v[0] == 2 {
			d = b.mul(x, b.constOf(x, 2))
		} else {
			ef := e
			if b.f.Elem(e) != b.f.Elem(x) {
				ef = b.like(x, "Cast", []string{e}, graph.AttrInt("to", int64(b.f.Elem(x))))
			}
			d = b.mul(b.like(x, "Pow", []string{x, b.sub(ef, b.constOf(x, 1))}), ef)
		}
		if err := accumUnb(b, x, b.mul(gy[0], d), n.Output[0]); err != nil {
			return err
		}
	}
	if b.needs(e) {
		return accumUnb(b, e, b.mul(b.mul(gy[0], out), b.like(x, "Log", []string{x})), n.Output[0])
	}
	return nil
}

func gradSqrt(b *builder, n *onnx.NodeProto, gy []string) error {
	x := in(n, 0)
	b.accum(x, b.div(b.mul(gy[0], b.constOf(x, 0.5)), n.Output[0]))
	return nil
}

func gradNeg(b *builder, n *onnx.NodeProto, gy []string) error {
	b.accum(in(n, 0), b.neg(gy[0]))
	return nil
}

func gradReciprocal(b *builder, n *onnx.NodeProto, gy []string) error {
	y := n.Output[0]
	b.accum(in(n, 0), b.neg(b.mul(gy[0], b.mul(y, y))))
	return nil
}

func gradExp(b *builder, n *onnx.NodeProto, gy []string) error {
	b.accum(in(n, 0), b.mul(gy[0], n.Output[0]))
	return nil
}

func gradLog(b *builder, n *onnx.NodeProto, gy []string) error {
	b.accum(in(n, 0), b.div(gy[0], in(n, 0)))
	return nil
}

// gradMaxMin routes the gradient to the operand that was selected; on a
// tie the first operand takes it.
func gradMaxMin(b *builder, n *onnx.NodeProto, gy []string) error {
	switch len(n.Input) {
	case 1:
		b.accum(in(n, 0), gy[0])
		return nil
	case 2:
	default:
		return fmt.Errorf("%s with %d operands has no gradient rule (only 1 or 2)", n.OpType, len(n.Input))
	}
	x, y := in(n, 0), in(n, 1)
	op := "Less" // Max: x wins unless x < y
	if n.OpType == "Min" {
		op = "Greater"
	}
	lose := b.cmp(op, x, y)
	winX := b.typed(graph.Bool, b.f.Rank(lose), "Not", []string{lose})
	if b.needs(x) {
		if err := accumUnb(b, x, b.mul(gy[0], b.maskOf(winX, gy[0])), n.Output[0]); err != nil {
			return err
		}
	}
	if b.needs(y) {
		return accumUnb(b, y, b.mul(gy[0], b.maskOf(lose, gy[0])), n.Output[0])
	}
	return nil
}

// gradReduce spreads the output gradient back over the reduced axes.
func gradReduce(b *builder, n *onnx.NodeProto, gy []string) error {
	x, y := in(n, 0), n.Output[0]
	axesInput := n.OpType == "ReduceSum" && b.opset >= 13 || b.opset >= 18
	idx := 99
	if axesInput {
		idx = 1
	}
	axes, given, ok := b.f.axesOf(n, idx)
	if !ok {
		return fmt.Errorf("axes of %s are not constant", graph.NodeName(n))
	}
	g := gy[0]
	if given && len(axes) == 0 && graph.IntAttr(n, "noop_with_empty_axes", 0) == 1 {
		b.accum(x, g) // the identity
		return nil
	}
	if graph.IntAttr(n, "keepdims", 1) == 0 && given && len(axes) > 0 {
		// The reduced axes are positions in x's rank, which is also the
		// rank after unsqueezing them back, so negative axes work as is.
		g = b.unsqueeze(g, axes...)
	}
	g = b.like(x, "Expand", []string{g, b.shape(x)})
	if n.OpType == "ReduceMean" {
		sx := b.typed(graph.Int64, 0, "Size", []string{x})
		sy := b.typed(graph.Int64, 0, "Size", []string{y})
		ratio := b.typed(b.f.Elem(x), 0, "Cast", []string{b.typed(graph.Int64, 0, "Div", []string{sx, sy})}, graph.AttrInt("to", int64(b.f.Elem(x))))
		g = b.div(g, ratio)
	}
	b.accum(x, g)
	return nil
}

// softmaxAxis returns the axis and whether the op uses the opset < 13
// meaning (the input coerced to 2-D at the axis).
func softmaxAxis(b *builder, n *onnx.NodeProto) (int64, bool) {
	if b.opset >= 13 {
		return graph.IntAttr(n, "axis", -1), false
	}
	return graph.IntAttr(n, "axis", 1), true
}

// flat2D views x as the 2-D matrix opset < 13 softmax works on.
func flat2D(b *builder, x string, axis int64) string {
	return b.typed(b.f.Elem(x), 2, "Flatten", []string{x}, graph.AttrInt("axis", axis))
}

func gradSoftmax(b *builder, n *onnx.NodeProto, gy []string) error {
	x, y, g := in(n, 0), n.Output[0], gy[0]
	axis, coerced := softmaxAxis(b, n)
	yy, gg := y, g
	if coerced {
		yy, gg, axis = flat2D(b, y, axis), flat2D(b, g, axis), 1
	}
	gyy := b.mul(gg, yy)
	s := b.reduceSum(gyy, []int64{axis}, true)
	dx := b.sub(gyy, b.mul(yy, s))
	if coerced {
		dx = b.reshapeLike(dx, x)
	}
	b.accum(x, dx)
	return nil
}

func gradLogSoftmax(b *builder, n *onnx.NodeProto, gy []string) error {
	x, y, g := in(n, 0), n.Output[0], gy[0]
	axis, coerced := softmaxAxis(b, n)
	yy, gg := y, g
	if coerced {
		yy, gg, axis = flat2D(b, y, axis), flat2D(b, g, axis), 1
	}
	s := b.reduceSum(gg, []int64{axis}, true)
	dx := b.sub(gg, b.mul(b.like(yy, "Exp", []string{yy}), s))
	if coerced {
		dx = b.reshapeLike(dx, x)
	}
	b.accum(x, dx)
	return nil
}

// gradLayerNorm differentiates LayerNormalization through all three
// outputs, reading the mean and inverse standard deviation from the
// forward node itself (its optional outputs are named if unused).
func gradLayerNorm(b *builder, n *onnx.NodeProto, gy []string) error {
	x, scale, bias := in(n, 0), in(n, 1), in(n, 2)
	r := b.f.Rank(x)
	axis := graph.IntAttr(n, "axis", -1)
	var normAxes []int64
	switch {
	case axis < 0:
		for a := axis; a < 0; a++ {
			normAxes = append(normAxes, a)
		}
	case r >= 0:
		for a := axis; a < int64(r); a++ {
			normAxes = append(normAxes, a)
		}
	default:
		return fmt.Errorf("rank of %q is unknown", x)
	}
	for len(n.Output) < 3 {
		n.Output = append(n.Output, "")
	}
	for i := 1; i < 3; i++ {
		if n.Output[i] == "" {
			n.Output[i] = b.m.UniqueName(graph.NodeName(n) + []string{"", "/mean", "/inv_std_dev"}[i])
			b.f.set(n.Output[i], graph.Float, r)
		}
	}
	mean, rstd := n.Output[1], n.Output[2]
	if dt := b.f.Elem(x); dt != graph.Float {
		mean = b.like(x, "Cast", []string{mean}, graph.AttrInt("to", int64(dt)))
		rstd = b.like(x, "Cast", []string{rstd}, graph.AttrInt("to", int64(dt)))
	}
	xhat := b.mul(b.sub(x, mean), rstd)
	meanOver := func(v string) string {
		if b.opset >= 18 {
			return b.like(v, "ReduceMean", []string{v, b.ints(normAxes...)}, graph.AttrInt("keepdims", 1))
		}
		return b.like(v, "ReduceMean", []string{v}, graph.AttrInts("axes", normAxes...), graph.AttrInt("keepdims", 1))
	}
	g := gy[0]
	var dx []string
	if g != "" {
		if b.needs(bias) {
			if err := accumUnb(b, bias, g, n.Output[0]); err != nil {
				return err
			}
		}
		if b.needs(scale) {
			if err := accumUnb(b, scale, b.mul(g, xhat), n.Output[0]); err != nil {
				return err
			}
		}
		if b.needs(x) {
			dxhat := b.mul(g, scale)
			t := b.sub(b.sub(dxhat, meanOver(dxhat)), b.mul(xhat, meanOver(b.mul(dxhat, xhat))))
			dx = append(dx, b.mul(t, rstd))
		}
	}
	if b.needs(x) {
		// Through Mean: each element shares the mean's gradient equally;
		// through InvStdDev: d rstd/dx = -rstd^3 (x - mean)/N.
		invN := func() string { // 1/N, N the size of the normalised axes
			sx := b.typed(graph.Int64, 0, "Size", []string{x})
			sm := b.typed(graph.Int64, 0, "Size", []string{n.Output[1]})
			nf := b.typed(b.f.Elem(x), 0, "Cast", []string{b.typed(graph.Int64, 0, "Div", []string{sx, sm})}, graph.AttrInt("to", int64(b.f.Elem(x))))
			return b.like(nf, "Reciprocal", []string{nf})
		}
		if len(gy) > 1 && gy[1] != "" {
			dx = append(dx, b.mul(b.like(x, "Expand", []string{castTo(b, gy[1], x), b.shape(x)}), invN()))
		}
		if len(gy) > 2 && gy[2] != "" {
			r3 := b.mul(b.mul(rstd, rstd), rstd)
			t := b.mul(b.mul(castTo(b, gy[2], x), r3), b.sub(x, mean))
			dx = append(dx, b.neg(b.mul(t, invN())))
		}
	}
	for _, d := range dx {
		b.accum(x, d)
	}
	return nil
}

func castTo(b *builder, v, like string) string {
	if b.f.Elem(v) == b.f.Elem(like) {
		return v
	}
	return b.typed(b.f.Elem(like), b.f.Rank(v), "Cast", []string{v}, graph.AttrInt("to", int64(b.f.Elem(like))))
}

func gradRelu(b *builder, n *onnx.NodeProto, gy []string) error {
	x, y := in(n, 0), n.Output[0]
	pos := b.cmp("Greater", y, b.constOf(x, 0))
	b.accum(x, b.mul(gy[0], b.maskOf(pos, x)))
	return nil
}

func gradGelu(b *builder, n *onnx.NodeProto, gy []string) error {
	x := in(n, 0)
	c := func(v float64) string { return b.constOf(x, v) }
	var d string
	if graph.StringAttr(n, "approximate", "none") == "tanh" {
		// y = 0.5 x (1 + tanh(u)), u = k (x + 0.044715 x^3)
		k := math.Sqrt(2 / math.Pi)
		x2 := b.mul(x, x)
		u := b.mul(b.mul(x, b.add(c(1), b.mul(x2, c(0.044715)))), c(k))
		t := b.like(x, "Tanh", []string{u})
		du := b.mul(b.add(c(1), b.mul(x2, c(3*0.044715))), c(k))
		sech2 := b.sub(c(1), b.mul(t, t))
		d = b.add(b.mul(b.add(c(1), t), c(0.5)), b.mul(b.mul(b.mul(x, c(0.5)), sech2), du))
	} else {
		// y = x Φ(x): dy/dx = Φ(x) + x φ(x)
		cdf := b.mul(b.add(c(1), b.like(x, "Erf", []string{b.mul(x, c(1/math.Sqrt2))})), c(0.5))
		pdf := b.mul(b.like(x, "Exp", []string{b.mul(b.mul(x, x), c(-0.5))}), c(1/math.Sqrt(2*math.Pi)))
		d = b.add(cdf, b.mul(x, pdf))
	}
	b.accum(x, b.mul(gy[0], d))
	return nil
}

func gradErf(b *builder, n *onnx.NodeProto, gy []string) error {
	x := in(n, 0)
	e := b.like(x, "Exp", []string{b.neg(b.mul(x, x))})
	b.accum(x, b.mul(gy[0], b.mul(e, b.constOf(x, 2/math.Sqrt(math.Pi)))))
	return nil
}

func gradTanh(b *builder, n *onnx.NodeProto, gy []string) error {
	x, y := in(n, 0), n.Output[0]
	b.accum(x, b.mul(gy[0], b.sub(b.constOf(x, 1), b.mul(y, y))))
	return nil
}

func gradSigmoid(b *builder, n *onnx.NodeProto, gy []string) error {
	x, y := in(n, 0), n.Output[0]
	b.accum(x, b.mul(gy[0], b.mul(y, b.sub(b.constOf(x, 1), y))))
	return nil
}

func gradTranspose(b *builder, n *onnx.NodeProto, gy []string) error {
	x := in(n, 0)
	perm := graph.IntsAttr(n, "perm")
	if perm == nil {
		// The default reverses the axes, which is its own inverse.
		b.accum(x, b.like(x, "Transpose", []string{gy[0]}))
		return nil
	}
	inv := make([]int64, len(perm))
	for i, p := range perm {
		inv[p] = int64(i)
	}
	b.accum(x, b.transpose(gy[0], inv...))
	return nil
}

// gradReshapeLike covers every op that only relabels the elements.
func gradReshapeLike(b *builder, n *onnx.NodeProto, gy []string) error {
	x := in(n, 0)
	b.accum(x, b.reshapeLike(gy[0], x))
	return nil
}

func gradIdentity(b *builder, n *onnx.NodeProto, gy []string) error {
	// Dropout in inference mode (no training_mode input, or a false one)
	// is the identity too.
	if n.OpType == "Dropout" && len(n.Input) > 2 && n.Input[2] != "" {
		v, ok := b.m.ConstInts(n.Input[2])
		if !ok || len(v) != 1 || v[0] != 0 {
			return fmt.Errorf("Dropout in training mode has no gradient rule (export the model in inference mode)")
		}
	}
	b.accum(in(n, 0), gy[0])
	return nil
}

func gradCast(b *builder, n *onnx.NodeProto, gy []string) error {
	x := in(n, 0)
	b.accum(x, b.like(x, "Cast", []string{gy[0]}, graph.AttrInt("to", int64(b.f.Elem(x)))))
	return nil
}

func gradExpand(b *builder, n *onnx.NodeProto, gy []string) error {
	return accumUnb(b, in(n, 0), gy[0], n.Output[0])
}

func gradWhere(b *builder, n *onnx.NodeProto, gy []string) error {
	c, x, y := in(n, 0), in(n, 1), in(n, 2)
	g := gy[0]
	if b.needs(x) {
		if err := accumUnb(b, x, b.like(g, "Where", []string{c, g, b.constOf(g, 0)}), n.Output[0]); err != nil {
			return err
		}
	}
	if b.needs(y) {
		return accumUnb(b, y, b.like(g, "Where", []string{c, b.constOf(g, 0), g}), n.Output[0])
	}
	return nil
}

// gradClip passes the gradient where min <= x <= max (PyTorch's clamp)
// and gives the bounds the rest.
func gradClip(b *builder, n *onnx.NodeProto, gy []string) error {
	x, g := in(n, 0), gy[0]
	lo, hi := in(n, 1), in(n, 2)
	if b.opset < 11 {
		lo = b.constOf(x, float64(graph.FloatAttr(n, "min", -math.MaxFloat32)))
		hi = b.constOf(x, float64(graph.FloatAttr(n, "max", math.MaxFloat32)))
	}
	pass := ""
	and := func(c string) {
		if pass == "" {
			pass = c
		} else {
			pass = b.typed(graph.Bool, b.f.Rank(x), "And", []string{pass, c})
		}
	}
	if lo != "" {
		below := b.cmp("Less", x, lo)
		and(b.typed(graph.Bool, b.f.Rank(x), "Not", []string{below}))
		if err := accumUnb(b, lo, b.mul(g, b.maskOf(below, g)), n.Output[0]); err != nil {
			return err
		}
	}
	if hi != "" {
		above := b.cmp("Greater", x, hi)
		and(b.typed(graph.Bool, b.f.Rank(x), "Not", []string{above}))
		if err := accumUnb(b, hi, b.mul(g, b.maskOf(above, g)), n.Output[0]); err != nil {
			return err
		}
	}
	if pass == "" {
		b.accum(x, g)
		return nil
	}
	b.accum(x, b.mul(g, b.maskOf(pass, g)))
	return nil
}

// gradConcat slices the output gradient back into the inputs' parts,
// with offsets from the inputs' runtime shapes.
func gradConcat(b *builder, n *onnx.NodeProto, gy []string) error {
	axis := graph.IntAttr(n, "axis", 0)
	ax := b.ints(axis)
	start := b.ints(0)
	for _, x := range n.Input {
		size := b.typed(graph.Int64, 1, "Gather", []string{b.shape(x), ax})
		end := b.typed(graph.Int64, 1, "Add", []string{start, size})
		if b.needs(x) {
			b.accum(x, b.like(x, "Slice", []string{gy[0], start, end, ax}))
		}
		start = end
	}
	return nil
}

// gradSplit concatenates the outputs' gradients, with zeros for outputs
// no gradient reached.
func gradSplit(b *builder, n *onnx.NodeProto, gy []string) error {
	x := in(n, 0)
	parts := make([]string, len(n.Output))
	for i, o := range n.Output {
		parts[i] = gy[i]
		if parts[i] == "" {
			parts[i] = b.zerosLike(o)
		}
	}
	b.accum(x, b.like(x, "Concat", parts, graph.AttrInt("axis", graph.IntAttr(n, "axis", 0))))
	return nil
}

// gradSlice scatters the gradient into the sliced positions: the same
// Slice applied to a tensor of flat element indices says where each
// output element came from (exact for any starts, ends, axes and steps).
func gradSlice(b *builder, n *onnx.NodeProto, gy []string) error {
	x := in(n, 0)
	if b.opset < 11 {
		return fmt.Errorf("the Slice gradient needs opset 11 or later (ScatterElements), the model has %d", b.opset)
	}
	size := b.typed(graph.Int64, 0, "Size", []string{x})
	one := b.scalar(graph.Int64, 1)
	zero := b.scalar(graph.Int64, 0)
	flat := b.typed(graph.Int64, 1, "Range", []string{zero, size, one})
	idx := b.typed(graph.Int64, b.f.Rank(x), "Reshape", []string{flat, b.shape(x)})
	sl := &onnx.NodeProto{OpType: "Slice", Input: append([]string{idx}, n.Input[1:]...), Attribute: n.Attribute}
	sl.Name = b.name("Slice")
	sl.Output = []string{sl.Name}
	b.m.AddNode(sl)
	pos := b.typed(graph.Int64, 1, "Reshape", []string{sl.Name, b.ints(-1)})
	upd := b.typed(b.f.Elem(x), 1, "Reshape", []string{gy[0], b.ints(-1)})
	zeros := b.typed(b.f.Elem(x), 1, "Reshape", []string{b.zerosLike(x), b.ints(-1)})
	sc := b.typed(b.f.Elem(x), 1, "ScatterElements", []string{zeros, pos, upd}, graph.AttrInt("axis", 0))
	b.accum(x, b.reshapeLike(sc, x))
	return nil
}

// gradGather accumulates the gradient rows of repeated indices. From
// opset 11 the rows of each distinct index are summed by a product with a
// [distinct, indices] one-hot matrix (Unique's inverse indices) and
// scattered once per distinct row, with no duplicate indices: ScatterND's
// reduction add loses additions when onnxruntime runs it on several
// threads and indices repeat, as token ids do. Where another contribution
// to the gradient of data is already built (a tied embedding's output
// projection) the rows are added into it rather than into zeros, which
// onnxruntime would fold into a constant table of data's size. Below
// opset 11 a one-hot product over the whole axis is used. Any axis is
// moved to the front first.
func gradGather(b *builder, n *onnx.NodeProto, gy []string) error {
	data, idx, g := in(n, 0), in(n, 1), gy[0]
	if !b.needs(data) {
		return nil
	}
	rd, ri := b.f.Rank(data), b.f.Rank(idx)
	axis, ok := normAxis(graph.IntAttr(n, "axis", 0), rd)
	if !ok || ri < 0 || rd < 0 {
		return fmt.Errorf("Gather needs static ranks of %q and %q and a valid axis", data, idx)
	}
	// Wrap negative indices the way Gather reads them.
	dimSize := b.typed(graph.Int64, 0, "Gather", []string{b.shape(data), b.scalar(graph.Int64, float64(axis))})
	idxI := idx
	if b.f.Elem(idx) != graph.Int64 {
		idxI = b.typed(graph.Int64, ri, "Cast", []string{idx}, graph.AttrInt("to", int64(graph.Int64)))
	}
	neg := b.cmp("Less", idxI, b.scalar(graph.Int64, 0))
	idxI = b.typed(graph.Int64, ri, "Where", []string{neg, b.typed(graph.Int64, ri, "Add", []string{idxI, dimSize}), idxI})

	// g has shape data[:axis] + idx + data[axis+1:]; bring the index axes
	// first: idx + data[:axis] + data[axis+1:].
	gt, dt := g, data
	if axis != 0 {
		var perm []int64
		for i := axis; i < axis+int64(ri); i++ {
			perm = append(perm, i)
		}
		for i := int64(0); i < axis; i++ {
			perm = append(perm, i)
		}
		for i := axis + int64(ri); i < int64(rd-1+ri); i++ {
			perm = append(perm, i)
		}
		gt = b.transpose(g, perm...)
		dperm := []int64{axis}
		for i := int64(0); i < int64(rd); i++ {
			if i != axis {
				dperm = append(dperm, i)
			}
		}
		dt = b.transpose(data, dperm...)
	}
	var d string
	if b.opset >= 11 {
		base := ""
		if axis == 0 {
			base = b.grad(data)
			delete(b.grads, data)
		}
		d = scatterRows(b, dt, idxI, gt, base)
	} else {
		// one-hot [N, V]ᵀ · g [N, rest] = [V, rest]
		flatIdx := b.typed(graph.Int64, 2, "Reshape", []string{idxI, b.ints(-1, 1)})
		rng := b.typed(graph.Int64, 1, "Range", []string{b.scalar(graph.Int64, 0), dimSize, b.scalar(graph.Int64, 1)})
		hot := b.maskOf(b.cmp("Equal", flatIdx, rng), g)
		count := b.typed(graph.Int64, 1, "Reshape", []string{b.typed(graph.Int64, 0, "Size", []string{idxI}), b.ints(1)})
		g2 := b.typed(b.f.Elem(g), 2, "Reshape", []string{gt, b.typed(graph.Int64, 1, "Concat", []string{count, b.ints(-1)}, graph.AttrInt("axis", 0))})
		prod := b.typed(b.f.Elem(g), 2, "MatMul", []string{b.transpose(hot, 1, 0), g2})
		d = b.reshapeLike(prod, dt)
	}
	if axis != 0 {
		inv := make([]int64, rd)
		inv[axis] = 0
		j := int64(1)
		for i := int64(0); i < int64(rd); i++ {
			if i != axis {
				inv[i] = j
				j++
			}
		}
		d = b.transpose(d, inv...)
	}
	b.accum(data, d)
	return nil
}

// scatterRows returns base (zeros of dt's shape when "") plus, in each
// row idx[i] of dt's first axis, the rows g[i] summed per distinct index.
func scatterRows(b *builder, dt, idx, g, base string) string {
	flat := b.typed(graph.Int64, 1, "Reshape", []string{idx, b.ints(-1)})
	uniq, inv := b.name("Unique"), b.name("Unique_inverse")
	b.m.AddNode(&onnx.NodeProto{OpType: "Unique", Name: uniq, Input: []string{flat}, Output: []string{uniq, "", inv}, Attribute: []*onnx.AttributeProto{graph.AttrInt("sorted", 1)}})
	b.f.set(uniq, graph.Int64, 1)
	b.f.set(inv, graph.Int64, 1)
	nu := b.typed(graph.Int64, 1, "Shape", []string{uniq})
	rng := b.typed(graph.Int64, 1, "Range", []string{b.scalar(graph.Int64, 0), b.typed(graph.Int64, 0, "Reshape", []string{nu, b.ints()}), b.scalar(graph.Int64, 1)})
	hot := b.maskOf(b.cmp("Equal", b.unsqueeze(rng, 1), b.unsqueeze(inv, 0)), g) // [distinct, n]
	b.f.rank[hot] = 2
	count := b.typed(graph.Int64, 1, "Reshape", []string{b.typed(graph.Int64, 0, "Size", []string{idx}), b.ints(1)})
	g2 := b.typed(b.f.Elem(g), 2, "Reshape", []string{g, b.typed(graph.Int64, 1, "Concat", []string{count, b.ints(-1)}, graph.AttrInt("axis", 0))})
	sums := b.typed(b.f.Elem(g), 2, "MatMul", []string{hot, g2})
	rest := b.typed(graph.Int64, 1, "Slice", []string{b.shape(dt), b.ints(1), b.ints(1 << 62)})
	upd := b.typed(b.f.Elem(g), b.f.Rank(dt), "Reshape", []string{sums, b.typed(graph.Int64, 1, "Concat", []string{nu, rest}, graph.AttrInt("axis", 0))})
	rows := b.unsqueeze(uniq, 1)
	if base == "" {
		base = b.zerosLike(dt)
	} else {
		upd = b.add(b.typed(b.f.Elem(g), b.f.Rank(dt), "GatherND", []string{base, rows}), upd)
	}
	return b.like(dt, "ScatterND", []string{base, rows, upd})
}

// gradMatMul handles batched and broadcast operands and 1-D operands (as
// numpy does: a vector is a row on the left, a column on the right).
func gradMatMul(b *builder, n *onnx.NodeProto, gy []string) error {
	A, B, g := in(n, 0), in(n, 1), gy[0]
	ra, rb := b.f.Rank(A), b.f.Rank(B)
	if ra < 0 || rb < 0 {
		return fmt.Errorf("MatMul needs the ranks of %q and %q", A, B)
	}
	a2, b2, g2 := A, B, g
	rg := max(ra, rb)
	// Restore the axes a vector operand dropped from g: the column's
	// last, then the row's second to last.
	if rb == 1 {
		b2 = b.unsqueeze(B, 1)
		g2 = b.unsqueeze(g2, -1)
		rg = max(rg, 2)
	}
	if ra == 1 {
		a2 = b.unsqueeze(A, 0)
		g2 = b.unsqueeze(g2, -2)
		rg = max(rg, 2)
	}
	b.f.rank[g2] = rg
	swap := func(v string) string {
		r := b.f.Rank(v)
		perm := make([]int64, r)
		for i := range perm {
			perm[i] = int64(i)
		}
		perm[r-1], perm[r-2] = perm[r-2], perm[r-1]
		return b.transpose(v, perm...)
	}
	if b.needs(A) {
		da := b.typed(b.f.Elem(g), rg, "MatMul", []string{g2, swap(b2)})
		var err error
		if ra == 1 || rb > 2 && !sameBatch(b, A, B) {
			da, err = b.unbroadcast(da, a2, "")
			if err != nil {
				return err
			}
		}
		if ra == 1 {
			da = b.reshapeLike(da, A)
		}
		b.accum(A, da)
	}
	if b.needs(B) {
		var db string
		if rb == 2 && ra >= 2 {
			// A weight shared across the batch: one product over all rows.
			k := b.typed(graph.Int64, 1, "Slice", []string{b.shape(A), b.ints(-1), b.ints(math.MaxInt64)})
			af := b.typed(b.f.Elem(A), 2, "Reshape", []string{A, b.typed(graph.Int64, 1, "Concat", []string{b.ints(-1), k}, graph.AttrInt("axis", 0))})
			nn := b.typed(graph.Int64, 1, "Slice", []string{b.shape(g), b.ints(-1), b.ints(math.MaxInt64)})
			gf := b.typed(b.f.Elem(g), 2, "Reshape", []string{g, b.typed(graph.Int64, 1, "Concat", []string{b.ints(-1), nn}, graph.AttrInt("axis", 0))})
			db = b.typed(b.f.Elem(g), 2, "MatMul", []string{b.transpose(af, 1, 0), gf})
		} else {
			db = b.typed(b.f.Elem(g), rg, "MatMul", []string{swap(a2), g2})
			if rb == 1 || ra > 2 && !sameBatch(b, A, B) {
				var err error
				db, err = b.unbroadcast(db, b2, "")
				if err != nil {
					return err
				}
			}
			if rb == 1 {
				db = b.reshapeLike(db, B)
			}
		}
		b.accum(B, db)
	}
	return nil
}

// sameBatch reports whether two matmul operands provably have the same
// batch dimensions.
func sameBatch(b *builder, A, B string) bool {
	da, ok1 := b.f.dims(A)
	db, ok2 := b.f.dims(B)
	if !ok1 || !ok2 || len(da) != len(db) {
		return false
	}
	for i := 0; i < len(da)-2; i++ {
		if da[i] != db[i] {
			return false
		}
	}
	return true
}

// gradGemm uses Gemm itself for the transposed products.
func gradGemm(b *builder, n *onnx.NodeProto, gy []string) error {
	A, B, C, g := in(n, 0), in(n, 1), in(n, 2), gy[0]
	alpha := graph.FloatAttr(n, "alpha", 1)
	beta := graph.FloatAttr(n, "beta", 1)
	ta := graph.IntAttr(n, "transA", 0) != 0
	tb := graph.IntAttr(n, "transB", 0) != 0
	gemm := func(x, y string, tx, ty bool) string {
		bi := func(v bool) int64 {
			if v {
				return 1
			}
			return 0
		}
		return b.typed(b.f.Elem(g), 2, "Gemm", []string{x, y}, graph.AttrFloat("alpha", alpha),
			graph.AttrInt("transA", bi(tx)), graph.AttrInt("transB", bi(ty)))
	}
	if b.needs(A) {
		if !ta {
			b.accum(A, gemm(g, B, false, !tb)) // g · B'ᵀ
		} else {
			b.accum(A, gemm(B, g, tb, true)) // B' · gᵀ
		}
	}
	if b.needs(B) {
		if !tb {
			b.accum(B, gemm(A, g, !ta, false)) // A'ᵀ · g
		} else {
			b.accum(B, gemm(g, A, true, ta)) // gᵀ · A'
		}
	}
	if b.needs(C) {
		gc := g
		if beta != 1 {
			gc = b.mul(g, b.constOf(g, float64(beta)))
		}
		return accumUnb(b, C, gc, n.Output[0])
	}
	return nil
}

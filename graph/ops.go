package graph

import "github.com/qatc/qatc/onnx"

// An inferRule sets the type and shape of n's outputs (s.set, and the
// tracked contents of small integer values, s.setVal) from its inputs
// (s.in, s.inVal). x is input 0's info (xok when known); opset is the
// version of n's domain.
type inferRule func(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, opset int64)

// inferRules maps op types to their inference rules, one function per op
// or family of ops, as passes/autodiff maps op types to gradient rules;
// onnxruntime's contrib ops are keyed "com.microsoft.<op>". An op without
// a rule leaves its outputs unknown (or as the model's value_info
// declares them). passes/autodiff types the forward graph with these
// rules too: adding an op here teaches both.
var inferRules map[string]inferRule

func init() {
	inferRules = map[string]inferRule{
		"Identity":                  inferIdentity,
		"Neg":                       inferNeg,
		"IsNaN":                     inferBoolLike,
		"IsInf":                     inferBoolLike,
		"Not":                       inferNot,
		"Dropout":                   inferDropout,
		"Where":                     inferWhere,
		"MatMul":                    inferMatMul,
		"MatMulInteger":             inferMatMul,
		"QLinearMatMul":             inferMatMul,
		"Gemm":                      inferGemm,
		"Transpose":                 inferTranspose,
		"Reshape":                   func(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) { s.reshape(n, x, xok) },
		"Flatten":                   inferFlatten,
		"Squeeze":                   (*inferer).squeeze,
		"Unsqueeze":                 (*inferer).unsqueeze,
		"Concat":                    func(s *inferer, n *onnx.NodeProto, _ TensorInfo, _ bool, _ int64) { s.concat(n) },
		"Split":                     (*inferer).split,
		"Slice":                     (*inferer).slice,
		"Gather":                    func(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) { s.gather(n, x, xok) },
		"GatherElements":            inferGatherElements,
		"Expand":                    func(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) { s.expand(n, x, xok) },
		"Tile":                      inferTile,
		"Pad":                       inferPad,
		"Cast":                      inferCast,
		"CastLike":                  inferCastLike,
		"Constant":                  func(s *inferer, n *onnx.NodeProto, _ TensorInfo, _ bool, _ int64) { s.constant(n) },
		"ConstantOfShape":           func(s *inferer, n *onnx.NodeProto, _ TensorInfo, _ bool, _ int64) { s.constantOfShape(n) },
		"Shape":                     func(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) { s.shape(n, x, xok) },
		"Size":                      inferSize,
		"Range":                     func(s *inferer, n *onnx.NodeProto, x TensorInfo, _ bool, _ int64) { s.rangeOp(n, x) },
		"ArgMax":                    inferArgMax,
		"ArgMin":                    inferArgMax,
		"LayerNormalization":        inferLayerNorm,
		"QuantizeLinear":            inferQuantize,
		"DequantizeLinear":          inferDequantize,
		"DynamicQuantizeLinear":     inferDynamicQuantize,
		"NonZero":                   inferNonZero,
		"OneHot":                    inferOneHot,
		"TopK":                      inferTopK,
		"com.microsoft.MatMulNBits": inferMatMulNBits,
		"com.microsoft.Gelu":        inferSame,
		"com.microsoft.FastGelu":    inferSame,
		"com.microsoft.BiasGelu":    inferSame,
		"com.microsoft.QuickGelu":   inferSame,
	}
	for _, op := range []string{"Abs", "Reciprocal", "Sqrt", "Erf", "Tanh", "Sigmoid", "Relu", "Gelu", "Exp", "Log",
		"Softmax", "LogSoftmax", "Round", "Floor", "Ceil", "Clip", "Trilu", "CumSum",
		"ScatterND", "ScatterElements", "LeakyRelu", "Elu", "Selu", "HardSigmoid", "HardSwish",
		"Softplus", "Softsign", "Sin", "Cos", "Sign", "Hardmax", "Mish", "Celu", "ThresholdedRelu",
		"LpNormalization", "InstanceNormalization", "MeanVarianceNormalization"} {
		inferRules[op] = inferSame
	}
	for _, op := range []string{"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "PRelu", "BitShift",
		"BitwiseAnd", "BitwiseOr", "BitwiseXor"} {
		inferRules[op] = inferArith
	}
	for _, op := range []string{"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor"} {
		inferRules[op] = inferCompare
	}
	for _, op := range []string{"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
		"ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"} {
		inferRules[op] = inferReduce
	}
}

// node infers the outputs of n with its op's rule.
func (s *inferer) node(n *onnx.NodeProto) {
	domain := n.Domain
	if domain == "ai.onnx" {
		domain = ""
	}
	key := n.OpType
	if domain != "" {
		key = domain + "." + n.OpType
	}
	if r := inferRules[key]; r != nil {
		x, xok := s.in(n, 0)
		r(s, n, x, xok, s.m.Opset(domain))
	}
}

func inferSame(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) {
	if xok {
		s.set(n, 0, x)
	}
}

func inferIdentity(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, opset int64) {
	inferSame(s, n, x, xok, opset)
	s.setVal(n, 0, s.inVal(n, 0))
}

func inferNeg(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, opset int64) {
	inferSame(s, n, x, xok, opset)
	if v := s.inVal(n, 0); v != nil {
		s.setVal(n, 0, symBinary(constSym(nil, []int64{0}), v, symArith("Sub")))
	}
}

// inferBoolLike types IsNaN and IsInf: a boolean of the input's shape.
func inferBoolLike(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) {
	if xok {
		s.set(n, 0, ranked(Bool, x.Dims))
		if !x.RankKnown {
			s.set(n, 0, TensorInfo{Elem: Bool})
		}
	}
}

func inferNot(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, opset int64) {
	inferSame(s, n, x, xok, opset)
	if v := s.inVal(n, 0); v != nil {
		s.setVal(n, 0, symBinary(v, constSym(nil, []int64{0}), symCompare("Equal")))
	}
}

func inferDropout(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, opset int64) {
	inferSame(s, n, x, xok, opset)
	if xok {
		mask := x
		mask.Elem = Bool
		s.set(n, 1, mask)
	}
}

// inferArith types the broadcasting arithmetic ops and tracks small
// integer results.
func inferArith(s *inferer, n *onnx.NodeProto, x TensorInfo, _ bool, _ int64) {
	s.elementwise(n, x.Elem)
	switch n.OpType {
	case "Add", "Sub", "Mul", "Div", "Max", "Min":
		if len(n.Input) == 2 {
			s.setVal(n, 0, symBinary(s.inVal(n, 0), s.inVal(n, 1), symArith(n.OpType)))
		}
	case "Sum":
		if len(n.Input) == 1 {
			s.setVal(n, 0, s.inVal(n, 0))
		}
	}
}

// inferCompare types the broadcasting comparisons and logic ops.
func inferCompare(s *inferer, n *onnx.NodeProto, _ TensorInfo, _ bool, _ int64) {
	s.elementwise(n, Bool)
	switch n.OpType {
	case "Equal", "Less", "Greater":
		s.setVal(n, 0, symBinary(s.inVal(n, 0), s.inVal(n, 1), symCompare(n.OpType)))
	case "And", "Or":
		s.setVal(n, 0, symBinary(s.inVal(n, 0), s.inVal(n, 1), symLogic(n.OpType)))
	}
}

func inferWhere(s *inferer, n *onnx.NodeProto, _ TensorInfo, _ bool, _ int64) {
	y, _ := s.in(n, 1)
	s.elementwise(n, y.Elem)
	s.setVal(n, 0, symWhere(s.inVal(n, 0), s.inVal(n, 1), s.inVal(n, 2)))
}

// inferMatMul types MatMul and its integer forms.
func inferMatMul(s *inferer, n *onnx.NodeProto, x TensorInfo, _ bool, _ int64) {
	ai, bi, elem := 0, 1, x.Elem
	switch n.OpType {
	case "MatMulInteger":
		elem = Int32
	case "QLinearMatMul":
		ai, bi = 0, 3
		zp, _ := s.in(n, 7)
		elem = zp.Elem
	}
	a, aok := s.in(n, ai)
	b, bok := s.in(n, bi)
	if aok && bok {
		if d, ok := matmulDims(a, b); ok {
			s.set(n, 0, ranked(elem, d))
			return
		}
	}
	s.set(n, 0, TensorInfo{Elem: elem})
}

func inferGemm(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) {
	b, bok := s.in(n, 1)
	out := TensorInfo{Elem: x.Elem}
	if xok && bok && x.RankKnown && b.RankKnown && len(x.Dims) == 2 && len(b.Dims) == 2 {
		m, k := x.Dims[0], x.Dims[1]
		if IntAttr(n, "transA", 0) != 0 {
			m = k
		}
		nn := b.Dims[1]
		if IntAttr(n, "transB", 0) != 0 {
			nn = b.Dims[0]
		}
		out = ranked(x.Elem, []Dim{m, nn})
	} else if xok || bok {
		out = ranked(x.Elem, unknownDims(2))
	}
	s.set(n, 0, out)
}

func inferTranspose(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) {
	if !xok {
		return
	}
	if !x.RankKnown {
		s.set(n, 0, TensorInfo{Elem: x.Elem})
		return
	}
	r := len(x.Dims)
	perm := IntsAttr(n, "perm")
	if perm == nil {
		for i := r - 1; i >= 0; i-- {
			perm = append(perm, int64(i))
		}
	}
	if len(perm) != r {
		s.set(n, 0, TensorInfo{Elem: x.Elem})
		return
	}
	d := make([]Dim, r)
	for i, p := range perm {
		a, ok := normAxis(p, r)
		if !ok {
			s.set(n, 0, TensorInfo{Elem: x.Elem})
			return
		}
		d[i] = x.Dims[a]
	}
	s.set(n, 0, ranked(x.Elem, d))
}

func inferFlatten(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) {
	if !xok || !x.RankKnown {
		s.set(n, 0, ranked(x.Elem, unknownDims(2)))
		return
	}
	axis := IntAttr(n, "axis", 1)
	if axis < 0 {
		axis += int64(len(x.Dims))
	}
	if axis < 0 || axis > int64(len(x.Dims)) {
		s.set(n, 0, ranked(x.Elem, unknownDims(2)))
		return
	}
	s.set(n, 0, ranked(x.Elem, []Dim{product(x.Dims[:axis]), product(x.Dims[axis:])}))
}

func inferGatherElements(s *inferer, n *onnx.NodeProto, x TensorInfo, _ bool, _ int64) {
	if idx, ok := s.in(n, 1); ok {
		idx.Elem = x.Elem
		s.set(n, 0, idx)
	}
}

func inferTile(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) {
	if !xok || !x.RankKnown {
		s.set(n, 0, TensorInfo{Elem: x.Elem})
		return
	}
	d := unknownDims(len(x.Dims))
	if reps, ok := s.inInts(n, 1); ok && len(reps) == len(d) {
		for i, r := range reps {
			switch {
			case r == 1:
				d[i] = x.Dims[i]
			case x.Dims[i].Static() && r >= 0:
				d[i] = Dim{Value: x.Dims[i].Value * r}
			}
		}
	}
	s.set(n, 0, ranked(x.Elem, d))
}

func inferPad(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) {
	if xok && x.RankKnown {
		s.set(n, 0, ranked(x.Elem, unknownDims(len(x.Dims))))
	} else {
		s.set(n, 0, TensorInfo{Elem: x.Elem})
	}
}

func inferCast(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) {
	to := DataType(IntAttr(n, "to", 0))
	if xok {
		x.Elem = to
		s.set(n, 0, x)
	} else {
		s.set(n, 0, TensorInfo{Elem: to})
	}
	if v := s.inVal(n, 0); v != nil {
		switch to {
		case Int64, Int32, Int16, Int8, Uint8, Uint16, Uint32, Uint64:
			s.setVal(n, 0, v)
		case Bool:
			s.setVal(n, 0, symBinary(symBinary(v, constSym(nil, []int64{0}), symCompare("Equal")), constSym(nil, []int64{0}), symCompare("Equal")))
		}
	}
}

func inferCastLike(s *inferer, n *onnx.NodeProto, x TensorInfo, _ bool, _ int64) {
	y, _ := s.in(n, 1)
	x.Elem = y.Elem
	s.set(n, 0, x)
	if v := s.inVal(n, 0); v != nil && y.Elem == Int64 {
		s.setVal(n, 0, v)
	}
}

func inferSize(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) {
	s.set(n, 0, ranked(Int64, []Dim{}))
	if xok && x.RankKnown {
		if p := product(x.Dims); p.Static() {
			s.setVal(n, 0, constSym(nil, []int64{p.Value}))
		}
	}
}

func inferReduce(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, opset int64) {
	axesInput := opset >= 18 || (n.OpType == "ReduceSum" && opset >= 13)
	s.reduce(n, x, xok, axesInput, x.Elem)
}

// inferArgMax types ArgMax and ArgMin: int64 indices along one axis.
func inferArgMax(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) {
	if xok && x.RankKnown {
		s.reduceAxes(n, x, []int64{IntAttr(n, "axis", 0)}, Int64)
	} else {
		s.set(n, 0, TensorInfo{Elem: Int64})
	}
}

func inferLayerNorm(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, opset int64) {
	inferSame(s, n, x, xok, opset)
	stash := DataType(IntAttr(n, "stash_type", int64(Float)))
	if xok && x.RankKnown {
		if a, ok := normAxis(IntAttr(n, "axis", -1), len(x.Dims)); ok {
			d := cloneDims(x.Dims)
			for i := a; i < len(d); i++ {
				d[i] = Dim{Value: 1}
			}
			s.set(n, 1, ranked(stash, d))
			s.set(n, 2, ranked(stash, d))
		}
	}
}

// inferQuantize types QuantizeLinear: its zero point's type, else
// output_dtype, else uint8.
func inferQuantize(s *inferer, n *onnx.NodeProto, x TensorInfo, _ bool, _ int64) {
	elem := Uint8
	if zp, ok := s.in(n, 2); ok {
		elem = zp.Elem
	} else if dt := IntAttr(n, "output_dtype", 0); dt != 0 {
		elem = DataType(dt)
	}
	x.Elem = elem
	s.set(n, 0, x)
}

// inferDequantize types DequantizeLinear: its scale's type.
func inferDequantize(s *inferer, n *onnx.NodeProto, x TensorInfo, _ bool, _ int64) {
	sc, _ := s.in(n, 1)
	x.Elem = sc.Elem
	if x.Elem == Undefined {
		x.Elem = Float
	}
	s.set(n, 0, x)
}

func inferDynamicQuantize(s *inferer, n *onnx.NodeProto, x TensorInfo, _ bool, _ int64) {
	x.Elem = Uint8
	s.set(n, 0, x)
	s.set(n, 1, ranked(Float, []Dim{}))
	s.set(n, 2, ranked(Uint8, []Dim{}))
}

func inferNonZero(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) {
	if xok && x.RankKnown {
		s.set(n, 0, ranked(Int64, []Dim{{Value: int64(len(x.Dims))}, {Value: -1}}))
	} else {
		s.set(n, 0, ranked(Int64, unknownDims(2)))
	}
}

// inferOneHot types OneHot: the values' type, the indices' rank plus the
// depth axis.
func inferOneHot(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) {
	vals, _ := s.in(n, 2)
	if !xok || !x.RankKnown {
		s.set(n, 0, TensorInfo{Elem: vals.Elem})
		return
	}
	r := len(x.Dims) + 1
	a, ok := normAxis(IntAttr(n, "axis", -1), r)
	if !ok {
		s.set(n, 0, TensorInfo{Elem: vals.Elem})
		return
	}
	depth := Dim{Value: -1}
	if d, ok := s.inInts(n, 1); ok && len(d) == 1 && d[0] >= 0 {
		depth = Dim{Value: d[0]}
	}
	d := append(append(cloneDims(x.Dims[:a]), depth), x.Dims[a:]...)
	s.set(n, 0, ranked(vals.Elem, d))
}

// inferTopK types TopK: values of the input's type and indices, both the
// input's shape with k along the axis.
func inferTopK(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) {
	if !xok {
		return
	}
	out := x
	if x.RankKnown {
		out = ranked(x.Elem, cloneDims(x.Dims))
		if a, ok := normAxis(IntAttr(n, "axis", -1), len(x.Dims)); ok {
			out.Dims[a] = Dim{Value: -1}
			if k, ok := s.inInts(n, 1); ok && len(k) == 1 && k[0] >= 0 {
				out.Dims[a] = Dim{Value: k[0]}
			}
		}
	}
	s.set(n, 0, out)
	out.Elem = Int64
	s.set(n, 1, out)
}

// inferMatMulNBits types onnxruntime's MatMulNBits: A's shape with its
// last dim N.
func inferMatMulNBits(s *inferer, n *onnx.NodeProto, x TensorInfo, xok bool, _ int64) {
	if xok && x.RankKnown && len(x.Dims) >= 1 {
		d := cloneDims(x.Dims)
		d[len(d)-1] = Dim{Value: IntAttr(n, "N", -1)}
		if d[len(d)-1].Value < 0 {
			d[len(d)-1] = Dim{Value: -1}
		}
		s.set(n, 0, ranked(x.Elem, d))
	}
}

// product multiplies dimensions: static when all are, the single named
// dimension when the rest are 1, else unknown.
func product(ds []Dim) Dim {
	p := int64(1)
	param := ""
	for _, d := range ds {
		switch {
		case d.Static():
			p *= d.Value
		case d.Param != "" && param == "":
			param = d.Param
		default:
			return Dim{Value: -1}
		}
	}
	if param != "" {
		if p == 1 {
			return Dim{Value: -1, Param: param}
		}
		return Dim{Value: -1}
	}
	return Dim{Value: p}
}

// elementwise sets a broadcasting op's output from all its inputs.
func (s *inferer) elementwise(n *onnx.NodeProto, elem DataType) {
	var shapes [][]Dim
	for i := range n.Input {
		ti, ok := s.in(n, i)
		if !ok || !ti.RankKnown {
			s.set(n, 0, TensorInfo{Elem: elem})
			return
		}
		shapes = append(shapes, ti.Dims)
	}
	if len(shapes) == 0 {
		return
	}
	s.set(n, 0, ranked(elem, broadcast(shapes...)))
}

func symWhere(c, a, b *symTensor) *symTensor {
	ab := symBinary(a, b, func(x, y sym) sym { return sym{} })
	if ab == nil {
		return nil
	}
	ca := symBinary(c, ab, func(x, y sym) sym { return x })
	if ca == nil || len(ca.elems) != len(ab.elems) {
		return nil
	}
	av := symBinary(a, ab, func(x, y sym) sym { return x })
	bv := symBinary(b, ab, func(x, y sym) sym { return x })
	out := &symTensor{dims: ab.dims, elems: make([]sym, len(ab.elems))}
	for i, cond := range ca.elems {
		switch {
		case !cond.known:
		case cond.v != 0:
			out.elems[i] = av.elems[i]
		default:
			out.elems[i] = bv.elems[i]
		}
	}
	return out
}

// matmulDims is numpy matmul's shape rule.
func matmulDims(a, b TensorInfo) ([]Dim, bool) {
	if !a.RankKnown || !b.RankKnown || len(a.Dims) == 0 || len(b.Dims) == 0 {
		return nil, false
	}
	ad, bd := a.Dims, b.Dims
	if len(ad) == 1 && len(bd) == 1 {
		return []Dim{}, true
	}
	if len(ad) == 1 {
		return append(cloneDims(bd[:len(bd)-2]), bd[len(bd)-1]), true
	}
	if len(bd) == 1 {
		return cloneDims(ad[:len(ad)-1]), true
	}
	batch := broadcast(ad[:len(ad)-2], bd[:len(bd)-2])
	return append(batch, ad[len(ad)-2], bd[len(bd)-1]), true
}

func (s *inferer) reshape(n *onnx.NodeProto, x TensorInfo, xok bool) {
	shapeInfo, _ := s.in(n, 1)
	r, ok := shapeLen(shapeInfo)
	if !ok {
		s.set(n, 0, TensorInfo{Elem: x.Elem})
		return
	}
	v := s.inVal(n, 1)
	if v == nil || len(v.elems) != r {
		s.set(n, 0, ranked(x.Elem, unknownDims(r)))
		return
	}
	allowZero := IntAttr(n, "allowzero", 0) != 0
	d := make([]Dim, r)
	infer := -1
	for i, e := range v.elems {
		switch {
		case e.known && e.v == 0 && !allowZero:
			if xok && x.RankKnown && i < len(x.Dims) {
				d[i] = x.Dims[i]
			} else {
				d[i] = Dim{Value: -1}
			}
		case e.known && e.v == -1:
			infer = i
			d[i] = Dim{Value: -1}
		default:
			d[i] = e.dim()
		}
	}
	if infer >= 0 && xok && x.RankKnown {
		rest := append(cloneDims(d[:infer]), d[infer+1:]...)
		d[infer] = quotient(x.Dims, rest)
	}
	s.set(n, 0, ranked(x.Elem, d))
}

// quotient returns product(num)/product(den), cancelling named
// dimensions that appear in both.
func quotient(num, den []Dim) Dim {
	params := map[string]int{}
	pn, pd := int64(1), int64(1)
	for _, d := range num {
		switch {
		case d.Static():
			pn *= d.Value
		case d.Param != "":
			params[d.Param]++
		default:
			return Dim{Value: -1}
		}
	}
	for _, d := range den {
		switch {
		case d.Static():
			pd *= d.Value
		case d.Param != "":
			params[d.Param]--
		default:
			return Dim{Value: -1}
		}
	}
	left := ""
	for p, c := range params {
		switch {
		case c == 0:
		case c == 1 && left == "":
			left = p
		default:
			return Dim{Value: -1}
		}
	}
	if pd == 0 || pn%pd != 0 {
		return Dim{Value: -1}
	}
	if left != "" {
		if pn == pd {
			return Dim{Value: -1, Param: left}
		}
		return Dim{Value: -1}
	}
	return Dim{Value: pn / pd}
}

// axesOf returns an op's axes, from attribute "axes" before opset
// sinceInput and from input 1 from then on; ok is false when they are
// given but not known.
func (s *inferer) axesOf(n *onnx.NodeProto, opset, sinceInput int64, input int) (axes []int64, given, ok bool) {
	if opset < sinceInput {
		a := Attr(n, "axes")
		return IntsAttr(n, "axes"), a != nil, true
	}
	if !s.has(n, input) {
		return nil, false, true
	}
	axes, ok = s.inInts(n, input)
	return axes, true, ok
}

func (s *inferer) squeeze(n *onnx.NodeProto, x TensorInfo, xok bool, opset int64) {
	if !xok || !x.RankKnown {
		s.set(n, 0, TensorInfo{Elem: x.Elem})
		return
	}
	axes, given, ok := s.axesOf(n, opset, 13, 1)
	if !ok {
		s.set(n, 0, TensorInfo{Elem: x.Elem})
		return
	}
	drop := make([]bool, len(x.Dims))
	if !given {
		for i, d := range x.Dims {
			if !d.Static() {
				s.set(n, 0, TensorInfo{Elem: x.Elem})
				return
			}
			drop[i] = d.Value == 1
		}
	}
	for _, a := range axes {
		i, ok := normAxis(a, len(x.Dims))
		if !ok {
			s.set(n, 0, TensorInfo{Elem: x.Elem})
			return
		}
		drop[i] = true
	}
	d := []Dim{}
	for i, dd := range x.Dims {
		if !drop[i] {
			d = append(d, dd)
		}
	}
	s.set(n, 0, ranked(x.Elem, d))
	if v := s.inVal(n, 0); v != nil {
		var vd []int64
		for i, dd := range v.dims {
			if i >= len(drop) || !drop[i] {
				vd = append(vd, dd)
			}
		}
		s.setVal(n, 0, &symTensor{dims: vd, elems: v.elems})
	}
}

func (s *inferer) unsqueeze(n *onnx.NodeProto, x TensorInfo, xok bool, opset int64) {
	axes, _, ok := s.axesOf(n, opset, 13, 1)
	if !xok || !x.RankKnown || !ok {
		s.set(n, 0, TensorInfo{Elem: x.Elem})
		return
	}
	r := len(x.Dims) + len(axes)
	ins := make([]bool, r)
	for _, a := range axes {
		i, ok := normAxis(a, r)
		if !ok || ins[i] {
			s.set(n, 0, TensorInfo{Elem: x.Elem})
			return
		}
		ins[i] = true
	}
	d := make([]Dim, r)
	j := 0
	for i := range d {
		if ins[i] {
			d[i] = Dim{Value: 1}
			continue
		}
		d[i] = x.Dims[j]
		j++
	}
	s.set(n, 0, ranked(x.Elem, d))
	if v := s.inVal(n, 0); v != nil {
		if len(v.dims) == len(x.Dims) {
			vd := make([]int64, 0, r)
			j := 0
			for i := range d {
				if ins[i] {
					vd = append(vd, 1)
					continue
				}
				vd = append(vd, v.dims[j])
				j++
			}
			s.setVal(n, 0, &symTensor{dims: vd, elems: v.elems})
		}
	}
}

func (s *inferer) concat(n *onnx.NodeProto) {
	var elem DataType
	var ins []TensorInfo
	for i := range n.Input {
		ti, ok := s.in(n, i)
		if !ok {
			return
		}
		if elem == Undefined {
			elem = ti.Elem
		}
		ins = append(ins, ti)
	}
	if len(ins) == 0 {
		return
	}
	r := -1
	for _, ti := range ins {
		if ti.RankKnown {
			r = len(ti.Dims)
		}
	}
	if r < 0 {
		s.set(n, 0, TensorInfo{Elem: elem})
		return
	}
	axis, ok := normAxis(IntAttr(n, "axis", 0), r)
	if !ok {
		s.set(n, 0, TensorInfo{Elem: elem})
		return
	}
	d := unknownDims(r)
	var along []Dim
	first := true
	for _, ti := range ins {
		if !ti.RankKnown {
			along = append(along, Dim{Value: -1})
			continue
		}
		if len(ti.Dims) != r {
			s.set(n, 0, TensorInfo{Elem: elem})
			return
		}
		for i, dd := range ti.Dims {
			if i == axis {
				continue
			}
			if first {
				d[i] = dd
			} else {
				d[i] = sameDim(d[i], dd)
			}
		}
		first = false
		along = append(along, ti.Dims[axis])
	}
	d[axis] = sum(along)
	s.set(n, 0, ranked(elem, d))

	// Concatenate tracked vectors.
	var elems []sym
	for i := range n.Input {
		v := s.inVal(n, i)
		if v == nil || len(v.dims) != 1 {
			return
		}
		elems = append(elems, v.elems...)
	}
	s.setVal(n, 0, &symTensor{dims: []int64{int64(len(elems))}, elems: elems})
}

// sum adds dimensions: static when all are, a named dimension plus zeros
// keeps its name.
func sum(ds []Dim) Dim {
	total := int64(0)
	param := ""
	for _, d := range ds {
		switch {
		case d.Static():
			total += d.Value
		case d.Param != "" && param == "":
			param = d.Param
		default:
			return Dim{Value: -1}
		}
	}
	if param != "" {
		if total == 0 {
			return Dim{Value: -1, Param: param}
		}
		return Dim{Value: -1}
	}
	return Dim{Value: total}
}

func (s *inferer) split(n *onnx.NodeProto, x TensorInfo, xok bool, opset int64) {
	outs := len(n.Output)
	if !xok || !x.RankKnown {
		for i := 0; i < outs; i++ {
			s.set(n, i, TensorInfo{Elem: x.Elem})
		}
		return
	}
	axis, ok := normAxis(IntAttr(n, "axis", 0), len(x.Dims))
	if !ok {
		for i := 0; i < outs; i++ {
			s.set(n, i, TensorInfo{Elem: x.Elem})
		}
		return
	}
	var sizes []int64
	known := true
	if opset < 13 {
		sizes = IntsAttr(n, "split")
	} else if s.has(n, 1) {
		sizes, known = s.inInts(n, 1)
	}
	for i := 0; i < outs; i++ {
		d := cloneDims(x.Dims)
		switch {
		case known && len(sizes) == outs:
			d[axis] = Dim{Value: sizes[i]}
		case known && sizes == nil && x.Dims[axis].Static() && outs > 0:
			total := x.Dims[axis].Value
			chunk := (total + int64(outs) - 1) / int64(outs)
			sz := min(chunk, max(total-int64(i)*chunk, 0))
			if total%int64(outs) == 0 || opset >= 18 {
				d[axis] = Dim{Value: sz}
			} else {
				d[axis] = Dim{Value: -1}
			}
		default:
			d[axis] = Dim{Value: -1}
		}
		s.set(n, i, ranked(x.Elem, d))
	}
}

func (s *inferer) slice(n *onnx.NodeProto, x TensorInfo, xok bool, opset int64) {
	if !xok || !x.RankKnown {
		s.set(n, 0, TensorInfo{Elem: x.Elem})
		return
	}
	r := len(x.Dims)
	// Parameters as tracked elements: ends are often a dimension of
	// another tensor (x[:len]).
	var starts, ends, axes, steps []sym
	ok := true
	if opset < 10 {
		starts = constSym(nil, IntsAttr(n, "starts")).elems
		ends = constSym(nil, IntsAttr(n, "ends")).elems
		if a := Attr(n, "axes"); a != nil {
			axes = constSym(nil, a.Ints).elems
		}
	} else {
		get := func(i int) []sym {
			if !s.has(n, i) {
				return nil
			}
			if v := s.inVal(n, i); v != nil {
				return v.elems
			}
			ok = false
			return nil
		}
		starts, ends, axes, steps = get(1), get(2), get(3), get(4)
	}
	unknownAll := func() {
		d := cloneDims(x.Dims)
		if ax := axes; ax != nil {
			for _, a := range ax {
				i, ok := normAxis(a.v, r)
				if !a.known || !ok {
					s.set(n, 0, ranked(x.Elem, unknownDims(r)))
					return
				}
				d[i] = Dim{Value: -1}
			}
			s.set(n, 0, ranked(x.Elem, d))
			return
		}
		s.set(n, 0, ranked(x.Elem, unknownDims(r)))
	}
	if !ok || len(starts) != len(ends) || (axes != nil && len(axes) != len(starts)) || (steps != nil && len(steps) != len(starts)) {
		unknownAll()
		return
	}
	type span struct {
		start, end, step int64
		known            bool
	}
	d := cloneDims(x.Dims)
	spans := map[int]span{}
	for i := range starts {
		a := known(int64(i))
		if axes != nil {
			a = axes[i]
		}
		step := known(1)
		if steps != nil {
			step = steps[i]
		}
		ax, ok := normAxis(a.v, r)
		if !a.known || !ok || !step.known || step.v == 0 {
			unknownAll()
			return
		}
		st, en := starts[i], ends[i]
		switch {
		case st.known && en.known:
			spans[ax] = span{st.v, en.v, step.v, true}
			d[ax] = sliceDim(x.Dims[ax], st.v, en.v, step.v)
		case st.known && st.v == 0 && step.v == 1 && en.param != "":
			// x[:n] with n a named dimension no larger than x's.
			d[ax] = Dim{Value: -1, Param: en.param}
			spans[ax] = span{}
		default:
			d[ax] = Dim{Value: -1}
			spans[ax] = span{}
		}
	}
	s.set(n, 0, ranked(x.Elem, d))

	// Slice a tracked vector.
	if v := s.inVal(n, 0); v != nil && len(v.dims) == 1 {
		sp, ok := spans[0]
		if !ok {
			s.setVal(n, 0, v)
			return
		}
		if !sp.known {
			return
		}
		lo, hi := clampSlice(int64(len(v.elems)), sp.start, sp.end, sp.step)
		var elems []sym
		for i := lo; (sp.step > 0 && i < hi) || (sp.step < 0 && i > hi); i += sp.step {
			elems = append(elems, v.elems[i])
			if len(elems) > maxSymElems {
				return
			}
		}
		s.setVal(n, 0, &symTensor{dims: []int64{int64(len(elems))}, elems: elems})
	}
}

// clampSlice applies ONNX Slice's clamping of start and end to a dim of
// size n.
func clampSlice(n, start, end, step int64) (int64, int64) {
	if start < 0 {
		start += n
	}
	if end < 0 {
		end += n
	}
	if step > 0 {
		start = min(max(start, 0), n)
		end = min(max(end, 0), n)
	} else {
		start = min(max(start, 0), n-1)
		end = min(max(end, -1), n-1)
	}
	return start, end
}

// sliceDim is the size of a sliced dimension.
func sliceDim(d Dim, start, end, step int64) Dim {
	if !d.Static() {
		// Taking everything keeps the dimension.
		if step == 1 && start == 0 && end >= 1<<31-1 {
			return d
		}
		return Dim{Value: -1}
	}
	lo, hi := clampSlice(d.Value, start, end, step)
	if step > 0 {
		if hi <= lo {
			return Dim{Value: 0}
		}
		return Dim{Value: (hi - lo + step - 1) / step}
	}
	if lo <= hi {
		return Dim{Value: 0}
	}
	return Dim{Value: (lo - hi - step - 1) / -step}
}

func (s *inferer) gather(n *onnx.NodeProto, x TensorInfo, xok bool) {
	idx, iok := s.in(n, 1)
	if !xok || !iok || !x.RankKnown || !idx.RankKnown {
		s.set(n, 0, TensorInfo{Elem: x.Elem})
		return
	}
	axis, ok := normAxis(IntAttr(n, "axis", 0), len(x.Dims))
	if !ok {
		s.set(n, 0, TensorInfo{Elem: x.Elem})
		return
	}
	d := cloneDims(x.Dims[:axis])
	d = append(d, idx.Dims...)
	d = append(d, x.Dims[axis+1:]...)
	s.set(n, 0, ranked(x.Elem, d))

	v := s.inVal(n, 0)
	ids, ok := s.inInts(n, 1)
	if v == nil || !ok || len(v.dims) != 1 || axis != 0 {
		return
	}
	elems := make([]sym, len(ids))
	for i, id := range ids {
		if id < 0 {
			id += int64(len(v.elems))
		}
		if id < 0 || id >= int64(len(v.elems)) {
			return
		}
		elems[i] = v.elems[id]
	}
	vd := s.inVal(n, 1).dims
	s.setVal(n, 0, &symTensor{dims: append([]int64(nil), vd...), elems: elems})
}

func (s *inferer) expand(n *onnx.NodeProto, x TensorInfo, xok bool) {
	shapeInfo, _ := s.in(n, 1)
	r, ok := shapeLen(shapeInfo)
	if !xok || !ok || !x.RankKnown {
		s.set(n, 0, TensorInfo{Elem: x.Elem})
		return
	}
	target := unknownDims(r)
	if v := s.inVal(n, 1); v != nil && len(v.elems) == r {
		for i, e := range v.elems {
			target[i] = e.dim()
		}
	}
	s.set(n, 0, ranked(x.Elem, broadcast(x.Dims, target)))
	if v := s.inVal(n, 0); v != nil {
		if dims, ok := s.inInts(n, 1); ok && len(v.elems) == 1 && len(dims) <= 1 {
			cnt := NumElements(dims)
			if cnt >= 0 && cnt <= maxSymElems {
				elems := make([]sym, cnt)
				for i := range elems {
					elems[i] = v.elems[0]
				}
				s.setVal(n, 0, &symTensor{dims: dims, elems: elems})
			}
		}
	}
}

func (s *inferer) constant(n *onnx.NodeProto) {
	for _, a := range n.Attribute {
		switch a.Name {
		case "value":
			if a.T != nil {
				s.set(n, 0, tensorInfo(a.T))
				s.setVal(n, 0, tensorSym(a.T))
			}
		case "value_float":
			s.set(n, 0, ranked(Float, []Dim{}))
		case "value_floats":
			s.set(n, 0, ranked(Float, []Dim{{Value: int64(len(a.Floats))}}))
		case "value_int":
			s.set(n, 0, ranked(Int64, []Dim{}))
			s.setVal(n, 0, constSym(nil, []int64{a.I}))
		case "value_ints":
			s.set(n, 0, ranked(Int64, []Dim{{Value: int64(len(a.Ints))}}))
			s.setVal(n, 0, constSym([]int64{int64(len(a.Ints))}, a.Ints))
		case "value_string":
			s.set(n, 0, ranked(String, []Dim{}))
		case "value_strings":
			s.set(n, 0, ranked(String, []Dim{{Value: int64(len(a.Strings))}}))
		case "sparse_value":
			if st := a.SparseTensor; st != nil && st.Values != nil {
				s.set(n, 0, ranked(TensorType(st.Values), staticDims(st.Dims)))
			}
		}
	}
}

func (s *inferer) constantOfShape(n *onnx.NodeProto) {
	elem := Float
	var fill *symTensor
	if a := Attr(n, "value"); a != nil && a.T != nil {
		elem = TensorType(a.T)
		fill = tensorSym(a.T)
	}
	shapeInfo, _ := s.in(n, 0)
	r, ok := shapeLen(shapeInfo)
	if !ok {
		s.set(n, 0, TensorInfo{Elem: elem})
		return
	}
	d := unknownDims(r)
	if v := s.inVal(n, 0); v != nil && len(v.elems) == r {
		for i, e := range v.elems {
			d[i] = e.dim()
		}
	}
	s.set(n, 0, ranked(elem, d))
	if dims, ok := s.inInts(n, 0); ok && fill != nil && len(fill.elems) == 1 {
		cnt := NumElements(dims)
		if cnt >= 0 && cnt <= maxSymElems {
			elems := make([]sym, cnt)
			for i := range elems {
				elems[i] = fill.elems[0]
			}
			s.setVal(n, 0, &symTensor{dims: dims, elems: elems})
		}
	}
}

func (s *inferer) shape(n *onnx.NodeProto, x TensorInfo, xok bool) {
	if !xok || !x.RankKnown {
		s.set(n, 0, ranked(Int64, unknownDims(1)))
		return
	}
	r := int64(len(x.Dims))
	start, end := IntAttr(n, "start", 0), IntAttr(n, "end", r)
	if start < 0 {
		start += r
	}
	if end < 0 {
		end += r
	}
	start, end = min(max(start, 0), r), min(max(end, 0), r)
	if end < start {
		end = start
	}
	elems := make([]sym, 0, end-start)
	for _, d := range x.Dims[start:end] {
		elems = append(elems, symDim(d))
	}
	s.set(n, 0, ranked(Int64, []Dim{{Value: int64(len(elems))}}))
	s.setVal(n, 0, &symTensor{dims: []int64{int64(len(elems))}, elems: elems})
}

func (s *inferer) rangeOp(n *onnx.NodeProto, x TensorInfo) {
	d := Dim{Value: -1}
	st, l, dl := s.inVal(n, 0), s.inVal(n, 1), s.inVal(n, 2)
	if st != nil && l != nil && dl != nil && len(st.elems) == 1 && len(l.elems) == 1 && len(dl.elems) == 1 {
		a, b, c := st.elems[0], l.elems[0], dl.elems[0]
		switch {
		case a.known && b.known && c.known && c.v != 0:
			cnt := max((b.v-a.v+c.v-sign(c.v))/c.v, 0)
			d = Dim{Value: cnt}
			if cnt <= maxSymElems {
				elems := make([]sym, cnt)
				for i := range elems {
					elems[i] = known(a.v + int64(i)*c.v)
				}
				s.setVal(n, 0, &symTensor{dims: []int64{cnt}, elems: elems})
			}
		case a.known && a.v == 0 && c.known && c.v == 1:
			d = Dim{Value: -1, Param: b.param}
		}
	}
	s.set(n, 0, ranked(x.Elem, []Dim{d}))
}

func sign(v int64) int64 {
	if v < 0 {
		return -1
	}
	return 1
}

func (s *inferer) reduce(n *onnx.NodeProto, x TensorInfo, xok, axesInput bool, elem DataType) {
	if !xok || !x.RankKnown {
		s.set(n, 0, TensorInfo{Elem: elem})
		return
	}
	var axes []int64
	if axesInput {
		if s.has(n, 1) {
			var ok bool
			if axes, ok = s.inInts(n, 1); !ok {
				if IntAttr(n, "keepdims", 1) != 0 {
					s.set(n, 0, ranked(elem, unknownDims(len(x.Dims))))
				} else {
					s.set(n, 0, TensorInfo{Elem: elem})
				}
				return
			}
		}
	} else {
		axes = IntsAttr(n, "axes")
	}
	if len(axes) == 0 {
		if IntAttr(n, "noop_with_empty_axes", 0) != 0 {
			x.Elem = elem
			s.set(n, 0, x)
			return
		}
		for i := range x.Dims {
			axes = append(axes, int64(i))
		}
	}
	s.reduceAxes(n, x, axes, elem)
}

func (s *inferer) reduceAxes(n *onnx.NodeProto, x TensorInfo, axes []int64, elem DataType) {
	red := make([]bool, len(x.Dims))
	for _, a := range axes {
		i, ok := normAxis(a, len(x.Dims))
		if !ok {
			s.set(n, 0, TensorInfo{Elem: elem})
			return
		}
		red[i] = true
	}
	keep := IntAttr(n, "keepdims", 1) != 0
	d := []Dim{}
	for i, dd := range x.Dims {
		switch {
		case !red[i]:
			d = append(d, dd)
		case keep:
			d = append(d, Dim{Value: 1})
		}
	}
	s.set(n, 0, ranked(elem, d))
}

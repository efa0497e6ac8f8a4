package quantize

import (
	"slices"

	"fmt"
	"math"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// A Unit is one fake quantizer as a graph holds it (DESIGN.md, "A
// quantizer in the graph"):
//
//	clip ─▶ Max(·, tiny) ─▶ Div(·, qmax) ─▶ [Transpose] ─▶ [Reshape] = scale   (softmax: a constant scale)
//	T ─▶ [Reshape] ─▶ QuantizeLinear(·, scale, zp) ─▶ [Clip] ─▶ DequantizeLinear(·, scale, zp) ─▶ [Reshape] ─▶ consumers
//
// The Clip holds the integers to 2^bits levels below 8 bits; the
// Reshapes around the pair are a blocked weight's view (BlockView), and a
// Transpose on the scale is a tied, transposed copy reading its twin's
// clip. Every package that reads quantizers reads them as Units: Find (the
// record's view), fold (the integers an export stores), autodiff (the
// straight-through gradient), the recogniser and Strip.
type Unit struct {
	// Q, Clamp and DQ are the chain's nodes; Clamp is nil without an
	// integer Clip.
	Q, Clamp, DQ *onnx.NodeProto
	// View is a blocked weight's view around the pair, or nil.
	View *BlockedPair
	// Tensor is the quantized value (the weight behind a view) and Output
	// the value its consumers read (after the view).
	Tensor, Output string
	// Scale is the quantizer's scale input.
	Scale string

	// Type is the integers' type (the zero point's; uint8 without one);
	// ZeroPoint the zero point input ("" for none) and ZeroPoints its
	// values (nil when it is not a constant). Lo and Hi are the integer
	// range the chain can produce: the type's, narrowed by the Clip.
	Type       graph.DataType
	ZeroPoint  string
	ZeroPoints []int64
	Lo, Hi     int64

	// The scale's form, set by Resolve. Clip is the clip tensor
	// (initializer, or graph input in a training graph); "" for a constant
	// scale. Tiny ("" without the Max) and QMax are the constants the clip
	// is turned into a scale with; ClipPerm is the Transpose a tied copy
	// reads its twin's clip through (nil otherwise).
	Clip, Tiny, QMax string
	ClipPerm         []int64
	// Kind, Bits, Axis and BlockSize are as in Quantizer: Axis is the
	// quantized tensor's (the weight's own axis behind a view), nil for one
	// scale per tensor.
	Kind      string
	Bits      int
	Axis      *int
	BlockSize int
}

// Match returns the quantizer ending in dq, or nil when dq is no
// DequantizeLinear fed by a QuantizeLinear (through an integer Clip). It
// reads the chain's structure and integers only; Resolve reads the scale.
// A chain whose integers cannot be read is returned with the error.
func Match(m *graph.Model, dq *onnx.NodeProto) (*Unit, error) {
	if !isOp(dq, "DequantizeLinear") || len(dq.Input) < 2 || len(dq.Output) == 0 {
		return nil, nil
	}
	u := &Unit{DQ: dq}
	q := m.Producer(dq.Input[0])
	if q != nil && q.OpType == "Clip" && len(q.Input) > 0 {
		u.Clamp, q = q, m.Producer(q.Input[0])
	}
	if !isOp(q, "QuantizeLinear") || len(q.Input) < 2 || len(q.Output) == 0 {
		return nil, nil
	}
	u.Q, u.Tensor, u.Output, u.Scale = q, q.Input[0], dq.Output[0], q.Input[1]
	if v := FindBlockView(m, q, dq); v != nil {
		u.View, u.Tensor, u.Output = v, v.Weight, v.Out.Output[0]
	}
	return u, u.readIntegers(m)
}

// isOp reports whether n is the standard ONNX op.
func isOp(n *onnx.NodeProto, op string) bool {
	return n != nil && n.OpType == op && (n.Domain == "" || n.Domain == "ai.onnx")
}

// intRanges are the integer types a quantizer produces and their ranges.
var intRanges = map[graph.DataType][2]int64{
	graph.Int8: {-128, 127}, graph.Uint8: {0, 255}, graph.Int16: {-32768, 32767},
	graph.Uint16: {0, 65535}, graph.Int4: {-8, 7}, graph.Uint4: {0, 15},
}

// readIntegers reads the integers' type, zero point and range.
func (u *Unit) readIntegers(m *graph.Model) error {
	name := graph.NodeName(u.Q)
	u.Type = graph.Uint8 // QuantizeLinear's default without a zero point
	if len(u.Q.Input) > 2 && u.Q.Input[2] != "" {
		u.ZeroPoint = u.Q.Input[2]
		zp := m.Const(u.ZeroPoint)
		if zp == nil {
			return fmt.Errorf("quantizer %s: zero point %q is not a constant; only constant zero points are supported", name, u.ZeroPoint)
		}
		u.Type = graph.TensorType(zp)
		v, err := graph.Int64s(zp)
		if err != nil {
			return fmt.Errorf("quantizer %s: %w", name, err)
		}
		u.ZeroPoints = v
	} else if dt := graph.IntAttr(u.Q, "output_dtype", 0); dt != 0 {
		u.Type = graph.DataType(dt)
	}
	r, ok := intRanges[u.Type]
	if !ok {
		return fmt.Errorf("quantizer %s: %s integers are not supported; use int8/uint8 (or int4/uint4, int16/uint16) zero points", name, u.Type)
	}
	u.Lo, u.Hi = r[0], r[1]
	if u.Clamp == nil {
		return nil
	}
	for i := 1; i <= 2; i++ {
		if len(u.Clamp.Input) <= i || u.Clamp.Input[i] == "" {
			continue
		}
		v, ok := m.ConstInts(u.Clamp.Input[i])
		if !ok || len(v) != 1 {
			return fmt.Errorf("quantizer %s: the integer Clip's bound %q must be a constant integer scalar", graph.NodeName(u.Clamp), u.Clamp.Input[i])
		}
		if i == 1 {
			u.Lo = max(u.Lo, v[0])
		} else {
			u.Hi = min(u.Hi, v[0])
		}
	}
	return nil
}

// Signed reports whether the integers are signed.
func (u *Unit) Signed() bool {
	return u.Type == graph.Int8 || u.Type == graph.Int4 || u.Type == graph.Int16
}

// Resolve reads the scale's form, the kind and the bits:
// a constant scale (softmax: 1/2^bits) or Div(Max(clip, tiny), qmax),
// read through a tied copy's Transpose and a blocked view's Reshape. The
// clip may be an initializer or, in a training graph, an input; a clip
// that nothing makes is an error naming it.
func (u *Unit) Resolve(m *graph.Model) error {
	where := fmt.Sprintf("quantizer on %s (node %s)", u.Tensor, graph.NodeName(u.DQ))
	if u.DQ.Input[1] != u.Scale {
		return fmt.Errorf("%s: QuantizeLinear and DequantizeLinear use different scales (%s, %s): the graph was edited by hand; re-run insert on the fp32 model", where, u.Scale, u.DQ.Input[1])
	}
	sp := m.Producer(u.Scale)
	if u.View != nil && sp != nil && sp.OpType == "Reshape" {
		sp = m.Producer(sp.Input[0]) // the view's scale; the 2-D one it reshapes is the weight's
	}
	if sp != nil && sp.OpType == "Transpose" {
		u.ClipPerm = graph.IntsAttr(sp, "perm")
		sp = m.Producer(sp.Input[0])
	}
	switch {
	case sp == nil || sp.OpType == "Constant":
		v, ok := m.ConstFloats(u.Scale)
		if !ok || len(v) == 0 {
			return fmt.Errorf("%s: scale %s is neither computed from a clip nor a float constant", where, u.Scale)
		}
		for _, s := range v {
			if !(s > 0) || math.IsInf(float64(s), 0) {
				return fmt.Errorf("%s: scale %v is not positive and finite", where, s)
			}
		}
		if u.Signed() {
			// A constant signed scale (another tool's quantizer): the
			// bits are what the integer range spans.
			u.Bits = bitsOfRange(u.Lo, u.Hi)
		} else {
			u.Kind = KindSoftmax
			u.Bits = int(math.Round(-math.Log2(float64(v[0]))))
		}
	case sp.OpType == "Div" && len(sp.Input) == 2:
		qv, ok := m.ConstFloats(sp.Input[1])
		if !ok || len(qv) != 1 || !(qv[0] > 0) || qv[0] != float32(math.Round(float64(qv[0]))) {
			return fmt.Errorf("%s: scale divisor %s is not a constant positive integer qmax", where, sp.Input[1])
		}
		u.QMax, u.Clip = sp.Input[1], sp.Input[0]
		if mx := m.Producer(u.Clip); mx != nil && mx.OpType == "Max" && len(mx.Input) == 2 {
			// Max(clip, tiny): tiny is the scalar constant of the two (the
			// first one when both are, as insert writes them).
			c, t := mx.Input[0], mx.Input[1]
			if !isScalarConst(m, t) && isScalarConst(m, c) {
				c, t = t, c
			}
			u.Clip, u.Tiny = c, t
		}
		if m.Initializer(u.Clip) == nil && m.Input(u.Clip) == nil && m.Producer(u.Clip) == nil {
			return fmt.Errorf("%s: its clip tensor %s is missing (no initializer, input or node makes it): restore it or re-run insert on the fp32 model", where, u.Clip)
		}
		u.Bits = bitsOfQmax(int64(qv[0]), u.Signed())
	default:
		return fmt.Errorf("%s: scale %s is made by %s, not Max(clip, tiny)/qmax", where, u.Scale, sp.OpType)
	}
	if u.Kind == "" {
		switch {
		case !u.Signed():
			u.Kind = KindReLU
		case m.Const(u.Tensor) != nil:
			u.Kind = KindWeight
		default:
			u.Kind = KindAct
		}
	}
	if u.Kind == KindSoftmax && u.Clamp != nil && u.Hi < 255 {
		u.Bits = bitsOfRange(0, u.Hi)
	}
	switch {
	case u.View != nil:
		u.Axis, u.BlockSize = &u.View.Axis, u.View.Block
	case !scalarScale(m, u.Scale):
		ax := int(graph.IntAttr(u.DQ, "axis", 1))
		if t := m.Initializer(u.Tensor); t != nil && ax < 0 {
			ax += len(t.Dims)
		}
		u.Axis = &ax
		u.BlockSize = int(graph.IntAttr(u.DQ, "block_size", 0))
	}
	return nil
}

// Units returns every quantizer of m in graph order, resolved.
func Units(m *graph.Model) ([]*Unit, error) {
	var us []*Unit
	for _, n := range m.Graph().Node {
		u, err := Match(m, n)
		if err != nil {
			return nil, err
		}
		if u == nil {
			continue
		}
		if err := u.Resolve(m); err != nil {
			return nil, err
		}
		us = append(us, u)
	}
	return us, nil
}

// Quantizer describes u as the record does.
func (u *Unit) Quantizer(m *graph.Model) Quantizer {
	q := Quantizer{Tensor: u.Tensor, Kind: u.Kind, Bits: u.Bits, Axis: u.Axis, BlockSize: u.BlockSize, Clip: u.Clip,
		Quantize: u.Q.Name, Dequantize: u.DQ.Name, Output: u.Output}
	for _, c := range m.Consumers(u.Output) {
		q.Consumers = append(q.Consumers, graph.NodeName(c))
	}
	return q
}

// Readers returns the quantizers whose QuantizeLinear reads v.
func Readers(m *graph.Model, v string) []*Unit {
	var us []*Unit
	for _, q := range m.Consumers(v) {
		if !isOp(q, "QuantizeLinear") || len(q.Input) == 0 || q.Input[0] != v || len(q.Output) == 0 {
			continue
		}
		for _, d := range m.Consumers(q.Output[0]) {
			if d.OpType == "Clip" && len(d.Output) > 0 {
				for _, e := range m.Consumers(d.Output[0]) {
					if u, _ := Match(m, e); u != nil && u.Q == q {
						us = append(us, u)
					}
				}
			} else if u, _ := Match(m, d); u != nil && u.Q == q {
				us = append(us, u)
			}
		}
	}
	return us
}

// QuantizedInput returns the value a fake quantizer reads when v is its
// output (after a blocked view's Reshape too); ok is false when v is no
// quantizer's output.
func QuantizedInput(m *graph.Model, v string) (x string, ok bool) {
	dq := m.Producer(v)
	if dq != nil && dq.OpType == "Reshape" && len(dq.Input) > 0 {
		if u, _ := Match(m, m.Producer(dq.Input[0])); u != nil && u.View != nil && u.Output == v {
			return u.Tensor, true
		}
		return v, false
	}
	if u, _ := Match(m, dq); u != nil && u.View == nil {
		return u.Tensor, true
	}
	return v, false
}

// isScalarConst reports whether v is a one-element constant.
func isScalarConst(m *graph.Model, v string) bool {
	t := m.Const(v)
	return t != nil && graph.NumElements(t.Dims) == 1
}

// scalarScale reports whether the scale is a scalar: a scalar constant
// or computed from a scalar clip (initializer or input).
func scalarScale(m *graph.Model, scale string) bool {
	for {
		if t := m.Const(scale); t != nil {
			return graph.NumElements(t.Dims) == 1
		}
		if in := m.Input(scale); in != nil {
			tt := in.GetType().GetTensorType()
			return tt != nil && tt.Shape != nil && len(tt.Shape.Dim) == 0
		}
		p := m.Producer(scale)
		if p == nil || len(p.Input) == 0 {
			return true
		}
		scale = p.Input[0]
	}
}

// bitsOfQmax inverts qmax = 2^(bits-1)-1 (signed) or 2^bits-1.
func bitsOfQmax(qmax int64, signed bool) int {
	b := 0
	for int64(1)<<b <= qmax {
		b++
	}
	if signed {
		b++
	}
	return b
}

// bitsOfRange counts the bits an integer range [lo, hi] spans.
func bitsOfRange(lo, hi int64) int {
	b := 0
	for int64(1)<<b < hi-lo+1 {
		b++
	}
	return b
}

// Quantized reports whether m holds a DequantizeLinear: fake quantizers,
// or an exported model's integer tensors.
func Quantized(m *graph.Model) bool {
	return slices.ContainsFunc(m.Graph().Node, func(n *onnx.NodeProto) bool { return isOp(n, "DequantizeLinear") })
}

// countQuantizers counts m's DequantizeLinear nodes (fake quantizers, or
// an exported model's int8 tensors), or the record's entries when only the
// record is left.
func countQuantizers(m *graph.Model) int {
	n := 0
	for _, nd := range m.Graph().Node {
		if isOp(nd, "DequantizeLinear") {
			n++
		}
	}
	if _, ok := m.Metadata(MetadataKey); ok && n == 0 {
		n = 1
		if r, err := ReadRecord(m); err == nil && len(r.Quantizers) > 0 {
			n = len(r.Quantizers)
		}
	}
	return n
}

// Nodes returns u's nodes in m's order: the chain, its view, and the
// nodes that compute its scale from the clip (Max, Div, a tied copy's
// Transpose, a view's Reshape), everything between u's tensor, the
// constants and u's output, so that a caller can copy the quantizer into
// another graph that holds the same tensor.
func (u *Unit) Nodes(m *graph.Model) []*onnx.NodeProto {
	in := map[*onnx.NodeProto]bool{}
	var visit func(v string)
	visit = func(v string) {
		if v == "" || v == u.Tensor || m.Initializer(v) != nil || m.Input(v) != nil {
			return
		}
		p := m.Producer(v)
		if p == nil || in[p] {
			return
		}
		in[p] = true
		for _, x := range p.Input {
			visit(x)
		}
	}
	visit(u.Output)
	var out []*onnx.NodeProto
	for _, n := range m.Graph().Node {
		if in[n] {
			out = append(out, n)
		}
	}
	return out
}

package fold

import (
	"fmt"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// QOperator rewrites a folded (qdq) model's MatMul and Gemm nodes whose
// both inputs are dequantized into onnxruntime's integer operator with
// static scales:
//
//	com.microsoft.MatMulIntegerToFloat(a_int, b_int, s_a, s_b, a_zp, b_zp [, bias])
//
// It accumulates exactly in int32 and rescales once to float, where
// QLinearMatMul would requantize its output (a rounding the QAT model does
// not have) and the standard MatMulInteger → Cast → Mul chain runs three
// kernels: onnxruntime fuses that chain only when the scales are computed
// at run time, and its constant folding computes static ones first. The
// activations' QuantizeLinear nodes stay: they quantize with the learned
// scales. Other quantized ops keep their DequantizeLinear. A bias Add
// after a product becomes the kernel's bias input, and the products of
// one activation (an attention's Q, K and V projections) become one
// product of their weights side by side and a Split (fuseShared): the
// same numbers from fewer, larger kernels.
//
// r is Fold's result. Every quantizer must have 8 bits; a weight's scale
// must be per tensor or per output column.
func QOperator(m *graph.Model, r *Result) error {
	for _, f := range r.Quantizers {
		if f.Bits != 8 {
			return fmt.Errorf("quantizer on %q has %d bits; qoperator's integer kernels take 8-bit operands: export with --format qdq, which keeps %d-bit values in int8", f.Tensor, f.Bits, f.Bits)
		}
	}
	for _, n := range append([]*onnx.NodeProto(nil), m.Graph().Node...) {
		if n.OpType != "MatMul" && n.OpType != "Gemm" {
			continue
		}
		a, err := dequantized(m, n.Input[0])
		if err != nil {
			return err
		}
		b, err := dequantized(m, n.Input[1])
		if err != nil {
			return err
		}
		switch {
		case a == nil && b == nil:
			r.leaveFloat(m, n, "neither input has a quantizer (excluded from insert)")
			continue
		case a == nil:
			r.leaveFloat(m, n, notInteger(m, n, 0))
			continue
		case b == nil:
			r.leaveFloat(m, n, notInteger(m, n, 1))
			continue
		case n.OpType == "Gemm" && graph.IntAttr(n, "transA", 0) != 0:
			r.leaveFloat(m, n, "a Gemm with transA has no integer form in onnxruntime")
			continue
		}
		if len(a.Scale) != 1 {
			return fmt.Errorf("%s: input %q is quantized per channel; an integer MatMul needs one scale for its left input: export with --format qdq, or re-insert it per tensor", graph.NodeName(n), n.Input[0])
		}
		bx := b.Ints
		if n.OpType == "Gemm" && graph.IntAttr(n, "transB", 0) != 0 {
			var err error
			if bx, err = transposedInts(m, b); err != nil {
				return fmt.Errorf("%s: %w", graph.NodeName(n), err)
			}
		}
		if !b.perColumn() {
			return fmt.Errorf("%s: weight %q is quantized per channel along its input axis; an integer MatMul can only rescale output columns: export with --format qdq, or re-insert it per output channel", graph.NodeName(n), n.Input[1])
		}
		bs := append([]float32(nil), b.Scale...)
		if n.OpType == "Gemm" {
			alpha := graph.FloatAttr(n, "alpha", 1)
			for i := range bs {
				bs[i] *= alpha
			}
		}
		sdims := []int64{}
		if len(bs) > 1 {
			sdims = []int64{int64(len(bs))}
		}
		bscale := m.AddInitializer(graph.FloatTensor(m.UniqueName(n.Output[0]+"_weight_scale"), sdims, bs))
		if err := integerToFloat(m, n, a, bx, b.ZeroPoint, bscale); err != nil {
			return err
		}
	}
	unsignActivations(m)
	fuseBias(m)
	fuseShared(m)
	m.SetOpset(msDomain, 1)
	m.RemoveDead()
	if err := m.TopoSort(); err != nil {
		return err
	}
	m.SetMetadata(FormatKey, "qoperator")
	return nil
}

// unsignActivations moves signed activation quantizers that feed integer
// MatMuls only as their left operand onto the uint8 grid with zero point
// 128: QuantizeLinear(x, s, 128 as uint8) is QuantizeLinear(x, s, 0 as
// int8) + 128 exactly, and onnxruntime's x86 kernels (VNNI: u8×s8) run
// unsigned×signed products several times faster than signed×signed ones.
func unsignActivations(m *graph.Model) {
	for _, q := range append([]*onnx.NodeProto(nil), m.Graph().Node...) {
		if q.OpType != "QuantizeLinear" || len(q.Input) < 3 || m.IsGraphOutput(q.Output[0]) {
			continue
		}
		zp := m.Const(q.Input[2])
		if zp == nil || graph.TensorType(zp) != graph.Int8 || graph.NumElements(zp.Dims) != 1 {
			continue
		}
		uses := m.Consumers(q.Output[0])
		ok := len(uses) > 0
		for _, c := range uses {
			switch {
			case c.OpType == "MatMulIntegerToFloat" && c.Input[0] == q.Output[0] && c.Input[1] != q.Output[0]:
			case isDequantize(c):
			default:
				ok = false
			}
		}
		if !ok {
			continue
		}
		u := m.AddInitializer(graph.Uint8Tensor(m.UniqueName(q.Output[0]+"_zero_point_u8"), zp.Dims, []uint8{128}))
		m.ReplaceInput(q, 2, u)
		for _, c := range uses {
			switch {
			case c.OpType == "MatMulIntegerToFloat":
				for len(c.Input) < 5 {
					c.Input = append(c.Input, "")
				}
				m.ReplaceInput(c, 4, u)
			case isDequantize(c):
				for len(c.Input) < 3 {
					c.Input = append(c.Input, "")
				}
				m.ReplaceInput(c, 2, u)
			}
		}
	}
	m.RemoveDead()
}

// fuseBias moves the bias Add after a MatMulIntegerToFloat into the
// kernel's bias input: the kernel adds it to the rescaled accumulator as
// the Add did, in one pass instead of two.
func fuseBias(m *graph.Model) {
	for _, n := range append([]*onnx.NodeProto(nil), m.Graph().Node...) {
		if n.OpType != "MatMulIntegerToFloat" || len(n.Input) > 6 || m.IsGraphOutput(n.Output[0]) {
			continue
		}
		uses := m.Consumers(n.Output[0])
		if len(uses) != 1 || uses[0].OpType != "Add" {
			continue
		}
		add := uses[0]
		bias := add.Input[1]
		if bias == n.Output[0] {
			bias = add.Input[0]
		}
		t := m.Const(bias)
		if t == nil || len(t.Dims) != 1 || graph.TensorType(t) != graph.Float || add.Input[0] == add.Input[1] {
			continue
		}
		if w := m.Initializer(n.Input[1]); w == nil || len(w.Dims) != 2 || w.Dims[1] != t.Dims[0] {
			continue
		}
		for len(n.Input) < 6 {
			n.Input = append(n.Input, "")
		}
		n.Input = append(n.Input, bias)
		n.Output[0] = add.Output[0]
		m.RemoveNodes(add)
	}
}

// msDomain is onnxruntime's contrib-operator domain.
const msDomain = "com.microsoft"

// integerToFloat replaces n (MatMul, or Gemm with transB folded into b) by
// MatMulIntegerToFloat; a Gemm's C becomes the bias when it is a 1-D
// constant (beta·C), else an Add.
func integerToFloat(m *graph.Model, n *onnx.NodeProto, a *Dequantized, b, bzp, bscale string) error {
	out := n.Output[0]
	base := n.Name
	if base == "" {
		base = out
	}
	ins := []string{a.Ints, b, a.Node.Input[1], bscale, a.ZeroPoint, bzp}
	var c string
	if n.OpType == "Gemm" && len(n.Input) > 2 && n.Input[2] != "" {
		c = n.Input[2]
		beta := graph.FloatAttr(n, "beta", 1)
		if ct := m.Const(c); ct != nil && len(ct.Dims) == 1 && graph.TensorType(ct) == graph.Float {
			v, err := graph.Floats(ct)
			if err != nil {
				return fmt.Errorf("%s: bias: %w", graph.NodeName(n), err)
			}
			if beta != 1 {
				scaled := make([]float32, len(v))
				for i, x := range v {
					scaled[i] = x * beta
				}
				c = m.AddInitializer(graph.FloatTensor(m.UniqueName(c+"_beta"), ct.Dims, scaled))
			}
			ins, c = append(ins, c), ""
		} else if beta != 1 {
			betaName := m.AddInitializer(graph.FloatTensor(m.UniqueName(base+"_beta"), nil, []float32{beta}))
			scaled := m.UniqueName(c + "_beta")
			m.Op("Mul", m.UniqueName(base+"/beta"), []string{c, betaName}, []string{scaled})
			c = scaled
		}
	}
	for len(ins) > 4 && ins[len(ins)-1] == "" {
		ins = ins[:len(ins)-1]
	}
	m.RemoveNodes(n)
	y := out
	if c != "" {
		y = m.UniqueName(out + "_matmul")
	}
	mm := m.Op("MatMulIntegerToFloat", m.UniqueName(base+"/MatMulIntegerToFloat"), ins, []string{y})
	mm.Domain = msDomain
	if c != "" {
		m.Op("Add", m.UniqueName(base+"/bias"), []string{y, c}, []string{out})
	}
	return nil
}

// transposedInts returns a [K, N] copy of Gemm's transposed B integers
// (stored [N, K]), with b's per-channel axis moved along.
func transposedInts(m *graph.Model, b *Dequantized) (string, error) {
	t := m.Initializer(b.Ints)
	if t == nil || len(t.Dims) != 2 || (graph.TensorType(t) != graph.Int8 && graph.TensorType(t) != graph.Uint8) {
		return "", fmt.Errorf("Gemm with transB reads %q, which is not a stored 8-bit matrix", b.Ints)
	}
	data, dims := graph.Transpose(t.RawData, t.Dims, []int64{1, 0})
	name := m.UniqueName(b.Ints + "_transposed")
	m.AddInitializer(&onnx.TensorProto{Name: name, Dims: dims, DataType: t.DataType, RawData: data})
	if len(b.Scale) > 1 {
		b.Axis = 1 - b.Axis
	}
	return name, nil
}

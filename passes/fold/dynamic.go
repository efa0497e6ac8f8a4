package fold

import (
	"fmt"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
)

// Dynamic rewrites a folded (qdq) model into onnxruntime's dynamic
// quantization form: the activation quantizers go (activations are
// quantized per batch instead, to uint8 over their observed range), and
// each MatMul or Gemm reading a stored 8-bit weight becomes
//
//	DynamicQuantizeLinear(a) ─▶ MatMulInteger(a_u8, w_int, a_zp, w_zp) ─▶ Cast ─▶ Mul(a_scale·w_scale)
//
// which onnxruntime fuses into DynamicQuantizeMatMul. The weights keep the
// integers of the learned clips. MatMuls of two activations (attention)
// run in float; embedding lookups stay int8 Gather + DequantizeLinear.
// Weights sliced at run time (a fused K/V kernel) are quantized too.
//
// r is Fold's result. Weight quantizers must have 8 bits and be per tensor
// or per output column.
func Dynamic(m *graph.Model, r *Result) error {
	for _, f := range r.Quantizers {
		if f.Kind == quantize.KindWeight && f.Bits != 8 {
			return fmt.Errorf("weight %q has %d bits; dynamic's MatMulInteger takes 8-bit weights: export with --format qdq, which keeps %d-bit values in int8", f.Tensor, f.Bits, f.Bits)
		}
	}
	// Drop the activation quantizers: their consumers read the float value.
	for _, n := range append([]*onnx.NodeProto(nil), m.Graph().Node...) {
		u, _ := quantize.Match(m, n)
		if u == nil {
			continue
		}
		out := u.DQ.Output[0]
		if m.IsGraphOutput(out) {
			m.RemoveNodes(u.DQ)
			m.Op("Identity", m.UniqueName(out+"/Identity"), []string{u.Q.Input[0]}, []string{out})
			continue
		}
		m.ReplaceUses(out, u.Q.Input[0])
	}
	m.RemoveDead()

	// One DynamicQuantizeLinear per activation, shared by the MatMuls
	// that read it (the Q, K and V projections).
	dq := map[string][3]string{}
	for _, n := range append([]*onnx.NodeProto(nil), m.Graph().Node...) {
		if n.OpType != "MatMul" && n.OpType != "Gemm" {
			continue
		}
		b, err := dequantized(m, n.Input[1])
		if err != nil {
			return err
		}
		switch {
		case b == nil || !storedInts(m, b.Ints):
			// An activation product stays float; a weight product is
			// named.
			r.leaveFloat(m, n, notInteger(m, n, 1))
			continue
		case m.Initializer(b.Ints) == nil && !b.perColumn():
			r.leaveFloat(m, n, "its weight is sliced at run time and quantized per channel along a sliced axis; MatMulInteger rescales per tensor only then")
			continue
		case m.Initializer(b.Ints) == nil && n.OpType == "Gemm":
			r.leaveFloat(m, n, "its weight is sliced at run time into a Gemm")
			continue
		case n.OpType == "Gemm" && graph.IntAttr(n, "transA", 0) != 0:
			r.leaveFloat(m, n, "a Gemm with transA has no integer form in onnxruntime")
			continue
		}
		bx := b.Ints
		if n.OpType == "Gemm" && graph.IntAttr(n, "transB", 0) != 0 {
			if bx, err = transposedInts(m, b); err != nil {
				return fmt.Errorf("%s: %w", graph.NodeName(n), err)
			}
		}
		if !b.perColumn() {
			return fmt.Errorf("%s: weight %q is quantized per channel along its input axis; an integer MatMul can only rescale output columns: export with --format qdq, or re-insert it per output channel", graph.NodeName(n), n.Input[1])
		}
		s := append([]float32(nil), b.Scale...)
		if n.OpType == "Gemm" {
			alpha := graph.FloatAttr(n, "alpha", 1)
			for i := range s {
				s[i] *= alpha
			}
		}
		sdims := []int64{}
		if len(s) > 1 {
			sdims = []int64{int64(len(s))}
		}
		ws := m.AddInitializer(graph.FloatTensor(m.UniqueName(n.Output[0]+"_weight_scale"), sdims, s))
		a := n.Input[0]
		q, ok := dq[a]
		if !ok {
			q = [3]string{m.UniqueName(a + "_dynamic_quantized"), m.UniqueName(a + "_dynamic_scale"), m.UniqueName(a + "_dynamic_zero_point")}
			m.Op("DynamicQuantizeLinear", m.UniqueName(a+"/DynamicQuantizeLinear"), []string{a}, q[:])
			dq[a] = q
		}
		integerMatMul(m, n, q[0], bx, q[2], b.ZeroPoint, []string{q[1], ws})
	}
	m.RemoveDead()
	if err := m.TopoSort(); err != nil {
		return err
	}
	m.SetMetadata(FormatKey, "dynamic")
	return nil
}

// integerMatMul replaces n (MatMul or Gemm with transB folded into b) by
// MatMulInteger(a, b, azp, bzp) ─▶ Cast ─▶ Mul(scales...) [─▶ Add(beta·C)].
// Two scale values (the batch's and the weight's) are multiplied first,
// the pattern onnxruntime fuses into DynamicQuantizeMatMul.
func integerMatMul(m *graph.Model, n *onnx.NodeProto, a, b, azp, bzp string, scales []string) {
	out := n.Output[0]
	base := n.Name
	if base == "" {
		base = out
	}
	ins := []string{a, b, azp, bzp}
	for len(ins) > 2 && ins[len(ins)-1] == "" {
		ins = ins[:len(ins)-1]
	}
	acc := m.UniqueName(out + "_int32")
	m.Op("MatMulInteger", m.UniqueName(base+"/MatMulInteger"), ins, []string{acc})
	acf := m.UniqueName(out + "_int32_float")
	m.Op("Cast", m.UniqueName(base+"/Cast"), []string{acc}, []string{acf}, graph.AttrInt("to", int64(graph.Float)))
	scale := scales[0]
	if len(scales) == 2 {
		scale = m.UniqueName(out + "_scale")
		m.Op("Mul", m.UniqueName(base+"/scale"), scales, []string{scale})
	}
	y := out
	c := ""
	if n.OpType == "Gemm" && len(n.Input) > 2 && n.Input[2] != "" {
		c = n.Input[2]
		y = m.UniqueName(out + "_matmul")
		if beta := graph.FloatAttr(n, "beta", 1); beta != 1 {
			betaName := m.AddInitializer(graph.FloatTensor(m.UniqueName(base+"_beta"), nil, []float32{beta}))
			scaled := m.UniqueName(c + "_beta")
			m.Op("Mul", m.UniqueName(base+"/beta"), []string{c, betaName}, []string{scaled})
			c = scaled
		}
	}
	m.RemoveNodes(n)
	m.Op("Mul", m.UniqueName(base+"/rescale"), []string{acf, scale}, []string{y})
	if c != "" {
		m.Op("Add", m.UniqueName(base+"/bias"), []string{y, c}, []string{out})
	}
}

// unIntegerMatMul undoes integerMatMul for Unfold: the weight product
// MatMulInteger(a_u8, b, a_zp[, b_zp]) ─▶ Cast ─▶ Mul(·, Mul(a_scale,
// b_scale)) of a DynamicQuantizeLinear(a) becomes the qdq form's
// MatMul(a, DequantizeLinear(b, b_scale[, b_zp])), b's scale per tensor
// or per output column.
func unIntegerMatMul(m *graph.Model, n *onnx.NodeProto, zeroPoint func(dims []int64) string) error {
	dql := m.Producer(n.Input[0])
	if dql == nil || dql.OpType != "DynamicQuantizeLinear" || len(dql.Output) != 3 || len(n.Input) < 3 || n.Input[2] != dql.Output[2] || !storedInts(m, n.Input[1]) {
		return fmt.Errorf("not the DynamicQuantizeLinear → MatMulInteger of a stored weight that dynamic writes")
	}
	cast := soleUse(m, n.Output[0], "Cast")
	var mul, scale *onnx.NodeProto
	if cast != nil {
		mul = soleUse(m, cast.Output[0], "Mul")
	}
	if mul != nil && len(mul.Input) == 2 && mul.Input[0] == cast.Output[0] {
		scale = m.Producer(mul.Input[1])
	}
	if scale == nil || scale.OpType != "Mul" || len(scale.Input) != 2 || scale.Input[0] != dql.Output[1] {
		return fmt.Errorf("its result is not rescaled by Cast → Mul(·, Mul(the activation's scale, the weight's))")
	}
	ws := m.Const(scale.Input[1])
	rank := intRank(m, n.Input[1])
	if ws == nil || graph.TensorType(ws) != graph.Float || graph.NumElements(ws.Dims) > 1 && rank < 2 {
		return fmt.Errorf("weight scale %q is not a constant per tensor or column", scale.Input[1])
	}
	zp := input(n, 3)
	if zp == "" {
		zp = zeroPoint(ws.Dims)
	}
	var attrs []*onnx.AttributeProto
	if graph.NumElements(ws.Dims) > 1 {
		attrs = append(attrs, graph.AttrInt("axis", int64(rank-1)))
	}
	b, out, base := n.Input[1], mul.Output[0], strings.TrimSuffix(n.Name, "/MatMulInteger")
	dq := m.UniqueName(b + "/dequantized")
	m.RemoveNodes(n, cast, mul)
	dequantize(m, m.UniqueName(b+"/dequantize"), []string{b, scale.Input[1], zp}, []string{dq}, attrs...)
	m.Op("MatMul", m.UniqueName(base), []string{dql.Input[0], dq}, []string{out})
	return nil
}

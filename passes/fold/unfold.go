package fold

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
)

// ErrUnfold is wrapped by Unfold's errors: the model is not one that
// Export wrote, or not in a form Unfold reads back exactly.
var ErrUnfold = errors.New("cannot read the exported model back into the QAT form")

// Unfold reads a model that qatc exported (its FormatKey metadata names
// the format, its quantization record the quantizers) back into the QAT
// form that Fold reads, and returns it with the format; m is left
// unchanged. Folding the result again in the same format gives the same
// integers, scales and kernels:
//
//   - qoperator's MatMulIntegerToFloat nodes (a fused weight split back
//     into its parts, a fused bias back into an Add, uint8 activations
//     back on the int8 grid) become the qdq form's DequantizeLinear →
//     MatMul;
//   - matmulnbits' MatMulNBits nodes become DequantizeLinear → MatMul
//     on the weight's integers (unpacked by storedNBits) with its
//     quantizer's per-tensor, per-column or per-block scale (unNBits),
//     and its gathered table rows a table's DequantizeLinear → Gather
//     again (unGatherRows);
//   - dynamic's MatMulInteger products become DequantizeLinear → MatMul
//     on the float activation (unIntegerMatMul); the activation
//     quantizers, which dynamic dropped, are dropped from the record;
//   - GuardBlocked's view of a blocked int8 weight is undone
//     (unguardBlocked), and so is a 2-D weight's transposed storage
//     (untranspose: a float Transpose, or the Gemm with transB whose copy
//     it was);
//   - a weight's integers (int8, or INT4 as Int4 stores them) become the
//     float values its DequantizeLinear computes, quantized in front of
//     the data movement that reads them (Fold sinks the DequantizeLinear
//     past it again; per-channel scales it sliced alike are whole again,
//     see unsliced), a blocked weight in insert's view of its blocks
//     (quantize.BlockView);
//   - every scale s becomes a clip c with max(c, tiny)/qmax = s in
//     float32, bit for bit, so that Fold computes s again.
//
// A model that is not in one of these forms (not exported by qatc, or
// edited since) is an error wrapping ErrUnfold that names what does not
// fit.
func Unfold(m *graph.Model) (*graph.Model, string, error) {
	format, ok := m.Metadata(FormatKey)
	if !ok {
		return nil, "", fmt.Errorf("%w: it has no %s metadata, so qatc did not export it", ErrUnfold, FormatKey)
	}
	rec, err := quantize.ReadRecord(m)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", ErrUnfold, err)
	}
	u := &unfolder{m: m.CloneShared(), rec: rec, consts: map[string]string{}}
	unguardBlocked(u.m)
	switch format {
	case "qdq":
	case "qoperator":
		err = u.integerToDequantized()
	case "matmulnbits":
		err = u.nbitsToDequantized()
	case "dynamic":
		err = u.integerToDequantizedDynamic()
	default:
		err = fmt.Errorf("the %s format's rewrites are not read back", format)
	}
	if err == nil {
		untranspose(u.m)
		err = u.qdq()
	}
	if err != nil {
		return nil, "", fmt.Errorf("%w (%s): %v", ErrUnfold, format, err)
	}
	return u.m, format, nil
}

// unfolder reads one exported model back.
type unfolder struct {
	m      *graph.Model
	rec    *quantize.Record
	consts map[string]string
	// dropActs drops the record's activation quantizers, which the
	// format removed from the graph.
	dropActs bool
}

// konst returns the shared initializer named base holding t's data,
// creating it once.
func (u *unfolder) konst(base string, t func(name string) *onnx.TensorProto) string {
	if n, ok := u.consts[base]; ok {
		return n
	}
	n := u.m.AddInitializer(t(u.m.UniqueName(base)))
	u.consts[base] = n
	return n
}

func (u *unfolder) int8Const(base string, dims []int64, v int8) string {
	return u.konst(fmt.Sprintf("%s%v", base, dims), func(n string) *onnx.TensorProto {
		d := make([]int8, graph.NumElements(dims))
		for i := range d {
			d[i] = v
		}
		return graph.Int8Tensor(n, dims, d)
	})
}

// zeroInt8 returns the shared int8 zero point of the given shape.
func (u *unfolder) zeroInt8(dims []int64) string { return u.int8Const("qatc/zero_int8", dims, 0) }

func (u *unfolder) shapeConst(dims []int64) string {
	return u.konst(fmt.Sprintf("qatc/shape%v", dims), func(n string) *onnx.TensorProto {
		return graph.Int64Tensor(n, []int64{int64(len(dims))}, dims)
	})
}

func (u *unfolder) floatConst(base string, v float32) string {
	return u.konst(base, func(n string) *onnx.TensorProto { return graph.FloatTensor(n, nil, []float32{v}) })
}

// integerToDequantized undoes QOperator: every MatMulIntegerToFloat
// becomes DequantizeLinear operands, a MatMul and its bias Add.
func (u *unfolder) integerToDequantized() error {
	m := u.m
	fused, err := FusedWeights(m)
	if err != nil {
		return err
	}
	for _, n := range slices.Clone(m.Graph().Node) {
		if n.OpType == "MatMulIntegerToFloat" && fused[input(n, 1)] != nil {
			if err := u.unfuse(n, fused[n.Input[1]]); err != nil {
				return err
			}
		}
	}
	// Activations moved to uint8 with zero point 128 go back to int8 0.
	for _, q := range m.Graph().Node {
		if q.OpType != "QuantizeLinear" || len(q.Input) < 3 {
			continue
		}
		zp := m.Const(q.Input[2])
		if zp == nil || graph.TensorType(zp) != graph.Uint8 || !strings.Contains(q.Input[2], "_zero_point_u8") {
			continue
		}
		v, err := graph.Int64s(zp)
		if err != nil || len(v) != 1 || v[0] != 128 {
			continue
		}
		z := u.zeroInt8(zp.Dims)
		old := q.Input[2]
		for _, c := range append(m.Consumers(q.Output[0]), q) {
			for i, in := range c.Input {
				if in == old && (i == 2 || i == 4 && c.OpType == "MatMulIntegerToFloat") {
					c.Input[i] = z
				}
			}
		}
		m.Reindex()
	}
	for _, n := range slices.Clone(m.Graph().Node) {
		if n.OpType != "MatMulIntegerToFloat" {
			continue
		}
		if len(n.Input) < 4 {
			return fmt.Errorf("%s has %d inputs", graph.NodeName(n), len(n.Input))
		}
		a, err := u.dequantizeActivation(n.Input[0], n.Input[2], input(n, 4))
		if err != nil {
			return fmt.Errorf("%s: %v", graph.NodeName(n), err)
		}
		var b string
		if storedInts(m, n.Input[1]) {
			// A stored weight, or data movement over one (a tied table's
			// integer Transpose).
			w := n.Input[1]
			if t := m.Initializer(throughMovement(m, w)); !isIntType(graph.TensorType(t)) {
				return fmt.Errorf("%s: weight %q is not stored as integers", graph.NodeName(n), t.Name)
			}
			s := m.Const(n.Input[3])
			if s == nil {
				return fmt.Errorf("%s: weight scale %q is not a constant", graph.NodeName(n), n.Input[3])
			}
			zp := input(n, 5)
			if zp == "" {
				zp = u.zeroInt8(s.Dims)
			}
			var attrs []*onnx.AttributeProto
			if graph.NumElements(s.Dims) > 1 {
				attrs = append(attrs, graph.AttrInt("axis", 1))
			}
			b = m.UniqueName(w + "/dequantized")
			dequantize(m, m.UniqueName(w+"/dequantize"), []string{w, n.Input[3], zp}, []string{b}, attrs...)
		} else if b, err = u.dequantizeActivation(n.Input[1], n.Input[3], input(n, 5)); err != nil {
			return fmt.Errorf("%s: %v", graph.NodeName(n), err)
		}
		out := n.Output[0]
		base := strings.TrimSuffix(n.Name, "/MatMulIntegerToFloat")
		bias := input(n, 6)
		m.RemoveNodes(n)
		y := out
		if bias != "" {
			y = m.UniqueName(out + "_matmul")
		}
		m.Op("MatMul", m.UniqueName(base), []string{a, b}, []string{y})
		if bias != "" {
			m.Op("Add", m.UniqueName(base+"/bias"), []string{y, bias}, []string{out})
		}
	}
	m.RemoveDead()
	return m.TopoSort()
}

// unfuse splits a MatMulIntegerToFloat of weights stored side by side
// (fuseShared) and the Split after it back into one product per part.
func (u *unfolder) unfuse(n *onnx.NodeProto, parts []FusedPart) error {
	m := u.m
	w := m.Initializer(n.Input[1])
	split := soleUse(m, n.Output[0], "Split")
	if w == nil || len(w.Dims) != 2 || split == nil || len(split.Output) != len(parts) {
		return fmt.Errorf("fused weight %q: not the MatMulIntegerToFloat → Split that qoperator writes", input(n, 1))
	}
	rows, total := int(w.Dims[0]), int(w.Dims[1])
	scale, ok := m.ConstFloats(n.Input[3])
	if !ok || len(scale) != total && len(scale) != 1 {
		return fmt.Errorf("fused weight %q: its scale is not one per column", w.Name)
	}
	var bias []float32
	if b := input(n, 6); b != "" {
		if bias, ok = m.ConstFloats(b); !ok || len(bias) != total {
			return fmt.Errorf("fused weight %q: its bias is not one per column", w.Name)
		}
	}
	lo := 0
	for i, p := range parts {
		cols := int(p.Columns)
		if lo+cols > total || m.HasName(p.Weight) {
			return fmt.Errorf("fused weight %q: part %q does not fit", w.Name, p.Weight)
		}
		data := make([]byte, 0, rows*cols)
		for r := range rows {
			data = append(data, w.RawData[r*total+lo:r*total+lo+cols]...)
		}
		m.AddInitializer(&onnx.TensorProto{Name: p.Weight, Dims: []int64{int64(rows), int64(cols)}, DataType: w.DataType, RawData: data})
		s := scale[:1]
		sdims := []int64{}
		if len(scale) == total {
			s = scale[lo : lo+cols]
			if slices.Min(s) == slices.Max(s) {
				s = s[:1]
			} else {
				sdims = []int64{int64(cols)}
			}
		}
		ins := []string{n.Input[0], p.Weight, n.Input[2],
			m.AddInitializer(graph.FloatTensor(m.UniqueName(split.Output[i]+"_weight_scale"), sdims, s)), input(n, 4), ""}
		if input(n, 5) != "" {
			ins[5] = u.zeroInt8(nil)
		}
		if bias != nil {
			ins = append(ins, m.AddInitializer(graph.FloatTensor(m.UniqueName(split.Output[i]+"_bias"), []int64{int64(cols)}, bias[lo:lo+cols])))
		}
		for len(ins) > 4 && ins[len(ins)-1] == "" {
			ins = ins[:len(ins)-1]
		}
		mm := m.Op("MatMulIntegerToFloat", m.UniqueName(split.Output[i]+"/MatMulIntegerToFloat"), ins, []string{split.Output[i]})
		mm.Domain = msDomain
		lo += cols
	}
	if lo != total {
		return fmt.Errorf("fused weight %q: its parts hold %d of %d columns", w.Name, lo, total)
	}
	m.RemoveNodes(n, split)
	return nil
}

// integerToDequantizedDynamic undoes Dynamic: every MatMulInteger of
// a stored weight becomes the qdq form's DequantizeLinear → MatMul
// (unIntegerMatMul). The activation quantizers Dynamic dropped are
// dropped from the record as well (the activations are quantized per
// batch, as the file does).
func (u *unfolder) integerToDequantizedDynamic() error {
	m := u.m
	for _, n := range slices.Clone(m.Graph().Node) {
		if n.OpType != "MatMulInteger" {
			continue
		}
		if err := unIntegerMatMul(m, n, u.zeroInt8); err != nil {
			return fmt.Errorf("%s: %v", graph.NodeName(n), err)
		}
	}
	u.dropActs = true
	m.RemoveDead()
	return m.TopoSort()
}

// nbitsToDequantized undoes MatMulNBits: embedding lookups dequantize
// the table again (unGatherRows), and every MatMulNBits becomes the
// DequantizeLinear → MatMul of its quantizer's integers (unNBits).
func (u *unfolder) nbitsToDequantized() error {
	m := u.m
	unGatherRows(m, u.zeroInt8)
	for _, n := range slices.Clone(m.Graph().Node) {
		if n.OpType != "MatMulNBits" || n.Domain != msDomain || len(n.Input) < 3 {
			continue
		}
		var r *quantize.Quantizer
		for i, q := range u.rec.Quantizers {
			if q.Kind == quantize.KindWeight && ownedAs(n.Input[1], q.Tensor, "_nbits") {
				r = &u.rec.Quantizers[i]
			}
		}
		if r == nil {
			return fmt.Errorf("%s: its weight %q is no quantizer's %s_nbits", graph.NodeName(n), n.Input[1], "<tensor>")
		}
		if err := unNBits(m, n, *r, u.zeroInt8); err != nil {
			return fmt.Errorf("%s: %v", graph.NodeName(n), err)
		}
	}
	m.RemoveDead()
	return m.TopoSort()
}

// dequantizeActivation returns the DequantizeLinear output of the
// activation integers v (a QuantizeLinear's output) with scale and zero
// point, reusing one that exists and naming a new one as the record does.
func (u *unfolder) dequantizeActivation(v, scale, zp string) (string, error) {
	m := u.m
	q := m.Producer(v)
	if q == nil || q.OpType != "QuantizeLinear" || len(q.Input) < 2 || !u.sameConst(q.Input[1], scale) || !u.sameConst(input(q, 2), zp) {
		return "", fmt.Errorf("operand %q is not made by a QuantizeLinear with its scale and zero point", v)
	}
	// The qdq form's DequantizeLinear reads the QuantizeLinear's own
	// scale and zero point (QOperator copies a right operand's scale).
	scale, zp = q.Input[1], input(q, 2)
	for _, c := range m.Consumers(v) {
		if isDequantize(c) && c.Input[0] == v && input(c, 1) == scale && input(c, 2) == zp {
			return c.Output[0], nil
		}
	}
	name, out := m.UniqueName(q.Name+"/dequantize"), m.UniqueName(v+"/dequantized")
	for _, r := range u.rec.Quantizers {
		if r.Quantize == q.Name && !m.HasName(r.Dequantize) && !m.HasName(r.Output) {
			name, out = r.Dequantize, r.Output
		}
	}
	ins := []string{v, scale}
	if zp != "" {
		ins = append(ins, zp)
	}
	dequantize(m, name, ins, []string{out})
	return out, nil
}

// sameConst reports whether the constants a and b (or two absent inputs)
// hold the same type, shape and values.
func (u *unfolder) sameConst(a, b string) bool {
	if a == b {
		return true
	}
	ta, tb := u.m.Const(a), u.m.Const(b)
	return ta != nil && tb != nil && sameTensor(ta, tb)
}

// sameTensor reports whether two constants hold the same type, shape and
// values, bit for bit.
func sameTensor(a, b *onnx.TensorProto) bool {
	if a.DataType != b.DataType || graph.NumElements(a.Dims) != graph.NumElements(b.Dims) {
		return false
	}
	if graph.TensorType(a) == graph.Float {
		fa, err1 := graph.Floats(a)
		fb, err2 := graph.Floats(b)
		return err1 == nil && err2 == nil && sameBits(fa, fb)
	}
	ia, err1 := graph.Int64s(a)
	ib, err2 := graph.Int64s(b)
	return err1 == nil && err2 == nil && slices.Equal(ia, ib)
}

// qdq reads the qdq form back into the QAT form: weights in float with
// their quantizers in front of the data movement, scales as clips.
func (u *unfolder) qdq() error {
	m := u.m
	clips := map[string][]float32{}
	var kept []quantize.Quantizer
	for _, r := range u.rec.Quantizers {
		var err error
		switch {
		case r.Kind == quantize.KindWeight:
			err = u.weight(r, clips)
		case u.dropActs:
			continue
		case r.Clip != "":
			err = u.activation(r, clips)
		}
		if err != nil {
			return fmt.Errorf("quantizer on %s: %v", r.Tensor, err)
		}
		kept = append(kept, r)
	}
	for _, n := range m.Graph().Node {
		if n.OpType == "MatMulIntegerToFloat" || n.OpType == "MatMulInteger" || n.OpType == "MatMulNBits" || n.OpType == "DynamicQuantizeLinear" {
			return fmt.Errorf("%s (%s) is left", graph.NodeName(n), n.OpType)
		}
		if isDequantize(n) && storedInts(m, n.Input[0]) {
			return fmt.Errorf("the stored integers %q are not listed in the quantization record", throughMovement(m, n.Input[0]))
		}
	}
	m.RemoveDead()
	if err := m.TopoSort(); err != nil {
		return err
	}
	props := m.Proto.MetadataProps[:0]
	for _, p := range m.Proto.MetadataProps {
		if p.Key != FormatKey && p.Key != FusedKey {
			props = append(props, p)
		}
	}
	m.Proto.MetadataProps = props
	u.rec.Quantizers = kept
	if err := quantize.WriteRecord(m, u.rec); err != nil {
		return err
	}
	_, err := quantize.Find(m)
	return err
}

// reader is a DequantizeLinear of stored integers and the data movement
// between them, from the integers on.
type reader struct {
	dq    *onnx.NodeProto
	chain []*onnx.NodeProto
}

// weight reads r's stored integers back into a float initializer named
// r.Tensor with r's quantizer on it, and re-points every DequantizeLinear
// of the integers (after data movement) at the quantizer's output.
func (u *unfolder) weight(r quantize.Quantizer, clips map[string][]float32) error {
	m := u.m
	var ints *onnx.TensorProto
	var readers []reader
	for _, n := range m.Graph().Node {
		if !isDequantize(n) || len(n.Input) < 2 {
			continue
		}
		var chain []*onnx.NodeProto
		v := n.Input[0]
		for m.Initializer(v) == nil {
			p := m.Producer(v)
			if p == nil || !movable(p.OpType) || len(m.Consumers(v)) != 1 {
				break
			}
			chain = append([]*onnx.NodeProto{p}, chain...)
			v = p.Input[0]
		}
		t := m.Initializer(v)
		if t == nil || !isIntType(graph.TensorType(t)) || !ownedBy(t.Name, r.Tensor) {
			continue
		}
		if ints != nil && ints != t {
			return fmt.Errorf("two stored integers %q and %q", ints.Name, t.Name)
		}
		ints = t
		readers = append(readers, reader{n, chain})
	}
	switch {
	case ints == nil:
		return fmt.Errorf("no stored integers %s_quantized read by a DequantizeLinear", r.Tensor)
	case graph.TensorType(ints) != graph.Int8 && graph.TensorType(ints) != graph.Int4:
		return fmt.Errorf("integers %q are stored as %s; a weight's integers are int8 or int4", ints.Name, graph.TensorType(ints))
	case strings.Contains(strings.TrimPrefix(ints.Name, r.Tensor), "_transposed"):
		return fmt.Errorf("integers %q are stored transposed, and not as the transposed matrix of %s's integers", ints.Name, r.Tensor)
	case m.HasName(r.Tensor):
		return fmt.Errorf("the name %s is taken", r.Tensor)
	}
	// The scale and axis on the stored integers, the same from every
	// reader.
	var scale []float32
	var sdims []int64
	axis, block := int64(-1), int64(0)
	zp := ""
	rank := int64(len(ints.Dims))
	for _, rd := range readers {
		st := unsliced(m, rd.dq.Input[1], rd.chain)
		if st == nil {
			return fmt.Errorf("%s: its scale is not a constant", graph.NodeName(rd.dq))
		}
		s, err := graph.Floats(st)
		if err != nil {
			return err
		}
		if z := unsliced(m, input(rd.dq, 2), rd.chain); z != nil {
			zv, err := graph.Int64s(z)
			if err != nil || slices.ContainsFunc(zv, func(x int64) bool { return x != 0 }) || graph.TensorType(z) != graph.Int8 {
				return fmt.Errorf("%s: its zero point is not int8 zeros", graph.NodeName(rd.dq))
			}
		} else if input(rd.dq, 2) != "" {
			return fmt.Errorf("%s: its zero point is not a constant", graph.NodeName(rd.dq))
		}
		ax, b := int64(-1), graph.IntAttr(rd.dq, "block_size", 0)
		if len(s) > 1 || b > 0 {
			if ax, err = axisOnStored(m, rd, rank); err != nil {
				return err
			}
		}
		if b > 0 && (len(rd.chain) > 0 || b != int64(r.BlockSize) || r.Axis == nil || int64(*r.Axis) != ax) {
			return fmt.Errorf("%s: blocks of %d along axis %d, not the quantizer's", graph.NodeName(rd.dq), b, ax)
		}
		switch {
		case scale == nil:
			scale, sdims, axis, block = s, st.Dims, ax, b
			if z := unsliced(m, input(rd.dq, 2), rd.chain); b == 0 && z != nil && (len(s) > 1 || input(rd.dq, 2) != "") {
				zp = z.Name
			}
		case !slices.Equal(scale, s) || ax != axis || b != block:
			return fmt.Errorf("its DequantizeLinear nodes read the integers with different scales")
		}
	}
	// The float weight: the values the DequantizeLinear computes.
	q, err := graph.Int64s(ints)
	if err != nil {
		return err
	}
	idx, err := ScaleIndex(ints.Dims, len(scale), axis, block)
	if err != nil {
		return err
	}
	w := make([]float32, len(q))
	for i, x := range q {
		w[i] = float32(x) * scale[idx(i)]
	}
	m.AddInitializer(graph.FloatTensor(r.Tensor, ints.Dims, w))
	sc, err := u.clipScale(r, scale, sdims, clips)
	if err != nil {
		return err
	}
	// The record's node and value names, freed by the reader that had them.
	for _, rd := range readers {
		if len(rd.chain) == 0 {
			m.RemoveNodes(rd.dq)
			if rd.dq.Output[0] != r.Output {
				m.ReplaceUses(rd.dq.Output[0], r.Output)
			}
		}
	}
	x, out := r.Tensor, r.Output
	var attrs []*onnx.AttributeProto
	switch {
	case block > 0:
		// Insert's view of a blocked weight (quantize.BlockView): the
		// blocks an axis of their own, the scale [.., n, 1, ..].
		v := quantize.NewBlockView(ints.Dims, int(axis), int(block))
		x = m.UniqueName(r.Tensor + "/blocks")
		m.Op("Reshape", "", []string{r.Tensor, u.shapeConst(v.Dims)}, []string{x})
		s := m.UniqueName(sc + "/blocks")
		m.Op("Reshape", "", []string{sc, u.shapeConst(v.ScaleDims)}, []string{s})
		sc, zp = s, u.zeroInt8(v.ScaleDims)
		out = m.UniqueName(r.Tensor + "/dequantized_blocks")
		m.Op("Reshape", "", []string{out, u.shapeConst(ints.Dims)}, []string{r.Output})
		attrs = append(attrs, graph.AttrInt("axis", int64(v.Axis)), graph.AttrInt("block_size", block))
	case len(scale) > 1:
		attrs = append(attrs, graph.AttrInt("axis", axis))
	}
	if zp == "" {
		zp = u.zeroInt8(sdims)
	}
	qn := m.Op("QuantizeLinear", r.Quantize, []string{x, sc, zp}, []string{m.UniqueName(r.Tensor + "/quantized")}, attrs...)
	ints8 := qn.Output[0]
	if lo, hi := r.QRange(); lo != -128 || hi != 127 {
		ints8 = m.UniqueName(r.Tensor + "/clipped")
		m.Op("Clip", "", []string{qn.Output[0], u.int8Const(fmt.Sprintf("qatc/qmin_%d", lo), nil, int8(lo)), u.int8Const(fmt.Sprintf("qatc/qmax_int_%d", hi), nil, int8(hi))}, []string{ints8})
	}
	dequantize(m, r.Dequantize, []string{ints8, sc, zp}, []string{out}, attrs...)
	for _, rd := range readers {
		if len(rd.chain) == 0 {
			continue
		}
		first, last := rd.chain[0], rd.chain[len(rd.chain)-1]
		m.ReplaceInput(first, 0, r.Output)
		out := rd.dq.Output[0]
		m.RemoveNodes(rd.dq)
		last.Output[0] = out
		m.Reindex()
	}
	return nil
}

// ownedBy reports whether the stored integers named name are fold's for
// the tensor: <tensor>_quantized, made unique with a suffix.
func ownedBy(name, tensor string) bool { return ownedAs(name, tensor, "_quantized") }

// ownedAs reports whether name is <tensor><suffix>, made unique with a
// suffix.
func ownedAs(name, tensor, suffix string) bool {
	rest, ok := strings.CutPrefix(name, tensor+suffix)
	return ok && (rest == "" || rest[0] == '_')
}

// axisOnStored maps a per-channel reader's axis back through its data
// movement onto the stored integers (the inverse of sinkPast).
func axisOnStored(m *graph.Model, rd reader, rank int64) (int64, error) {
	ax := graph.IntAttr(rd.dq, "axis", 1)
	for i := len(rd.chain) - 1; i >= 0; i-- {
		c := rd.chain[i]
		switch c.OpType {
		case "Transpose":
			p := transposePerm(c, int(rank))
			if ax < 0 {
				ax += rank
			}
			if ax < 0 || ax >= int64(len(p)) {
				return 0, fmt.Errorf("%s: axis %d out of range", graph.NodeName(rd.dq), ax)
			}
			ax = p[ax]
		case "Gather":
			if ax < 0 {
				ax += rank
			}
		case "Slice":
		default:
			return 0, fmt.Errorf("%s: a per-channel scale after %s is not read back", graph.NodeName(rd.dq), c.OpType)
		}
	}
	if ax < 0 {
		ax += rank
	}
	return ax, nil
}

// activation gives r's QuantizeLinear and DequantizeLinear the scale
// computed from a clip.
func (u *unfolder) activation(r quantize.Quantizer, clips map[string][]float32) error {
	m := u.m
	var q, dq *onnx.NodeProto
	for _, n := range m.Graph().Node {
		switch n.Name {
		case r.Quantize:
			q = n
		case r.Dequantize:
			dq = n
		}
	}
	if q == nil || dq == nil || len(q.Input) < 2 || len(dq.Input) < 2 || q.Input[1] != dq.Input[1] {
		return fmt.Errorf("no QuantizeLinear %s → DequantizeLinear %s with one scale", r.Quantize, r.Dequantize)
	}
	st := m.Const(q.Input[1])
	if st == nil {
		return fmt.Errorf("scale %q is not a constant", q.Input[1])
	}
	s, err := graph.Floats(st)
	if err != nil {
		return err
	}
	sc, err := u.clipScale(r, s, st.Dims, clips)
	if err != nil {
		return err
	}
	m.ReplaceInput(q, 1, sc)
	m.ReplaceInput(dq, 1, sc)
	return nil
}

// clipScale adds r's clip (once per clip name: tied copies share it),
// holding for each scale s a clip c with max(c, tiny)/qmax = s in
// float32, and returns the scale computed from it as insert computes it.
func (u *unfolder) clipScale(r quantize.Quantizer, scale []float32, dims []int64, clips map[string][]float32) (string, error) {
	m := u.m
	_, qmaxI := r.QRange()
	qmax := float32(qmaxI)
	if prev, ok := clips[r.Clip]; ok {
		if len(prev) != len(scale) {
			return "", fmt.Errorf("clip %s is shared with another quantizer of another shape", r.Clip)
		}
		for i, c := range prev {
			if max(c, quantize.Tiny)/qmax != scale[i] {
				return "", fmt.Errorf("clip %s is shared with a quantizer of another scale", r.Clip)
			}
		}
	} else {
		c := make([]float32, len(scale))
		for i, s := range scale {
			var ok bool
			if c[i], ok = clipFor(s, qmax); !ok {
				return "", fmt.Errorf("no float32 clip gives its scale %g (bits %08x) over qmax %g", s, math.Float32bits(s), qmax)
			}
		}
		if m.HasName(r.Clip) {
			return "", fmt.Errorf("the name %s is taken", r.Clip)
		}
		m.AddInitializer(graph.FloatTensor(r.Clip, dims, c))
		clips[r.Clip] = c
	}
	floor := m.UniqueName(r.Tensor + "/clip_floor")
	m.Op("Max", "", []string{r.Clip, u.floatConst("qatc/tiny", quantize.Tiny)}, []string{floor})
	sc := m.UniqueName(r.Tensor + "/scale")
	m.Op("Div", "", []string{floor, u.floatConst(fmt.Sprintf("qatc/qmax_%d", qmaxI), qmax)}, []string{sc})
	return sc, nil
}

// clipFor returns a float32 c with max(c, tiny)/qmax = s, computed in
// float32 as the QAT graph computes it: the float nearest s·qmax, or one
// of its neighbours (every scale Fold wrote came from some clip).
func clipFor(s, qmax float32) (float32, bool) {
	c0 := float32(float64(s) * float64(qmax))
	lo, hi := c0, c0
	for range 8 {
		for _, c := range []float32{lo, hi} {
			if max(c, quantize.Tiny)/qmax == s {
				return c, true
			}
		}
		lo, hi = math.Nextafter32(lo, 0), math.Nextafter32(hi, float32(math.Inf(1)))
	}
	return 0, false
}

// SameArithmetic checks that the exported models a and b compute the
// same: the same operators, the same stored integer weights (Stored) with
// bit-identical scales, and every QuantizeLinear of a, by name, in b with
// a bit-identical scale and the same zero point. It names the first
// difference.
func SameArithmetic(a, b *graph.Model) error {
	ops := func(m *graph.Model) map[string]int {
		c := map[string]int{}
		for _, n := range m.Graph().Node {
			c[n.Domain+"."+n.OpType]++
		}
		return c
	}
	if oa, ob := ops(a), ops(b); !maps.Equal(oa, ob) {
		return fmt.Errorf("the operators differ: %v against %v", oa, ob)
	}
	sa, sb := Stored(a), Stored(b)
	if !slices.Equal(sa.Names, sb.Names) {
		return fmt.Errorf("the stored weights differ: %d (%s…) against %d (%s…)", len(sa.Names), strings.Join(first(sa.Names, 2), ", "), len(sb.Names), strings.Join(first(sb.Names, 2), ", "))
	}
	for _, name := range sa.Names {
		wa, wb := sa.ByName[name], sb.ByName[name]
		if wa.Storage != wb.Storage || !slices.Equal(wa.Dims, wb.Dims) || wa.Node.OpType != wb.Node.OpType {
			return fmt.Errorf("weight %s is stored as %s %v read by %s against %s %v read by %s", name, wa.Storage, wa.Dims, wa.Node.OpType, wb.Storage, wb.Dims, wb.Node.OpType)
		}
		if !sameBits(wa.Scale, wb.Scale) {
			return fmt.Errorf("weight %s has other scales", name)
		}
		ia, err := wa.Ints()
		if err != nil {
			return err
		}
		ib, err := wb.Ints()
		if err != nil {
			return err
		}
		if !slices.Equal(ia, ib) {
			return fmt.Errorf("weight %s has other integers", name)
		}
	}
	qb := map[string]*onnx.NodeProto{}
	for _, n := range b.Graph().Node {
		if n.OpType == "QuantizeLinear" {
			qb[n.Name] = n
		}
	}
	for _, n := range a.Graph().Node {
		if n.OpType != "QuantizeLinear" {
			continue
		}
		o := qb[n.Name]
		if o == nil {
			return fmt.Errorf("QuantizeLinear %s is missing", graph.NodeName(n))
		}
		if !sameBits(constFloats32(a, input(n, 1)), constFloats32(b, input(o, 1))) || constFloats32(a, input(n, 1)) == nil {
			return fmt.Errorf("QuantizeLinear %s has another scale", graph.NodeName(n))
		}
		za, zb := a.Const(input(n, 2)), b.Const(input(o, 2))
		if (za == nil) != (zb == nil) || za != nil && !sameTensor(za, zb) {
			return fmt.Errorf("QuantizeLinear %s has another zero point", graph.NodeName(n))
		}
	}
	return nil
}

// sameBits reports whether two float slices hold the same bits.
func sameBits(a, b []float32) bool {
	return slices.EqualFunc(a, b, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) })
}

// first returns up to n of s.
func first(s []string, n int) []string { return s[:min(n, len(s))] }

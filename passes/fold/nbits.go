package fold

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
)

// NBitsOptions configure MatMulNBits.
type NBitsOptions struct {
	// AccuracyLevel is MatMulNBits' accuracy_level: 0 or 1 dequantizes
	// the weights and multiplies in fp32; 4 quantizes A to int8 per block
	// of the weight's block size (scale max|a|/127) and multiplies in
	// integers, onnxruntime's fast CPU kernel.
	AccuracyLevel int64
	// DropActQuant removes the activation quantizers whose every consumer
	// became MatMulNBits' A input: the kernel then reads the float
	// activation instead of its 8-bit value.
	DropActQuant bool
	// ChannelBlock is the block size MatMulNBits gets for weights with
	// per-channel or per-tensor scales, which repeat over its blocks (0
	// means 128: onnxruntime 1.30's int8 kernel runs a [512, 512] ×
	// [512, 2048] product about 1.25 times faster with blocks of 128 than
	// of 32, and the scales take a quarter of the bytes). It must be 16,
	// 32, 64, 128 or 256 and is halved down to 16 while it exceeds K; K
	// need not be a multiple (the last block is zero-padded). At accuracy
	// level 4 it is also the block over which A is requantized.
	ChannelBlock int64
}

// NBitsResult says what MatMulNBits did.
type NBitsResult struct {
	// Converted lists the weights now read by MatMulNBits; Kept the
	// quantized weights left in the qdq form, each with the reason.
	Converted []string
	Kept      []string
}

// nbitsBlocks are the block sizes onnxruntime's MatMulNBits kernels take
// (1.30 rejects others when the session starts).
var nbitsBlocks = map[int64]bool{16: true, 32: true, 64: true, 128: true, 256: true}

// MatMulNBits rewrites a folded (qdq) model's weight products into
// onnxruntime's weight-only quantized operator:
//
//	com.microsoft.MatMulNBits(A, B, scales)   Y = A · ((B − zp) · scale)ᵀ
//
// for every MatMul (and Gemm without transA) whose right input is a stored
// 2-D weight read by DequantizeLinear. B holds the weight transposed to
// [N, blocks, blob]: the integers, shifted to unsigned by the operator's
// default zero point 2^(bits−1) (q + 8 at 4 bits, q + 128 at 8 bits),
// packed low bits first; there is no zero-point input. Weights of 2 bits
// use bits = 2, 3–4 bits bits = 4, 5–8 bits bits = 8 (onnxruntime 1.30
// runs all three): each container holds the signed grid exactly, so the
// dequantized weights are the QAT model's. Per-block scales (blocks along
// the input axis) keep their block size, which must be one of 16, 32, 64,
// 128, 256 and divide the input dimension K; per-channel (output axis) and
// per-tensor scales are repeated over blocks of o.ChannelBlock. A weight quantized per
// input channel, or per block along its output axis, has scales
// MatMulNBits cannot express and keeps its DequantizeLinear (Kept).
//
// Gemm's alpha multiplies the scales and its C (times beta) is added
// after. Activations feeding MatMulNBits must have 8 bits; with
// o.DropActQuant their quantizers go (see NBitsOptions). Embedding
// lookups keep the qdq form: Gather reads the int8 table, and where Fold
// left the DequantizeLinear before the Gather (blocked scales, or one
// scale per row), the scales are gathered alike (gatherRows), so that only
// the looked-up rows are dequantized.
//
// r is Fold's result; the metadata gets FormatKey = "matmulnbits".
func MatMulNBits(m *graph.Model, r *Result, o NBitsOptions) (*NBitsResult, error) {
	byInt := map[string]*Folded{}
	byDQ := map[string]*Folded{}
	for i := range r.Quantizers {
		f := &r.Quantizers[i]
		if f.Int != "" {
			byInt[f.Int] = f
		} else {
			byDQ[f.Dequantize] = f
		}
	}
	if o.ChannelBlock != 0 && !nbitsBlocks[o.ChannelBlock] {
		return nil, fmt.Errorf("MatMulNBits block size %d: use 16, 32, 64, 128 or 256", o.ChannelBlock)
	}
	res := &NBitsResult{}
	for _, n := range append([]*onnx.NodeProto(nil), m.Graph().Node...) {
		if n.OpType != "MatMul" && (n.OpType != "Gemm" || graph.IntAttr(n, "transA", 0) != 0) {
			continue
		}
		w, err := nbitsWeight(m, n, byInt)
		if err != nil {
			return nil, err
		}
		if w == nil {
			continue
		}
		if w.why != "" {
			res.Kept = append(res.Kept, fmt.Sprintf("%s (%s)", w.f.Tensor, w.why))
			continue
		}
		if p := m.Producer(n.Input[0]); isDequantize(p) {
			if f := byDQ[p.Name]; f != nil && f.Bits < 8 {
				return nil, fmt.Errorf("activation %q is quantized to %d bits; matmulnbits carries 8-bit activations only (MatMulNBits computes with int8 activations): re-insert with --act-bits 8, or export with --format qdq", f.Tensor, f.Bits)
			}
		}
		if err := w.replace(m, n, o); err != nil {
			return nil, err
		}
		res.Converted = append(res.Converted, w.f.Tensor)
	}
	if o.DropActQuant {
		dropActQuant(m, r)
	}
	gatherRows(m)
	m.SetOpset(msDomain, 1)
	m.RemoveDead()
	if err := m.TopoSort(); err != nil {
		return nil, err
	}
	m.SetMetadata(FormatKey, "matmulnbits")
	return res, nil
}

// nbWeight is a MatMul's right operand as stored integers and scales, in
// the logical layout B[k, n] the product reads.
type nbWeight struct {
	f     *Folded
	why   string // set when MatMulNBits cannot express the scales
	q     func(k, n int) int64
	scale func(k, n int) float32
	k, n  int
	block int64 // the quantizer's block size along K (0: per channel or tensor)
}

// nbitsWeight returns n's weight operand, nil when its right input is not
// a dequantized stored 2-D weight. The input may be read through a
// Transpose before or after the DequantizeLinear, and Gemm may transpose
// it once more.
func nbitsWeight(m *graph.Model, n *onnx.NodeProto, byInt map[string]*Folded) (*nbWeight, error) {
	flip := n.OpType == "Gemm" && graph.IntAttr(n, "transB", 0) != 0
	v := n.Input[1]
	if p := m.Producer(v); p != nil && isTranspose2D(p) {
		flip, v = !flip, p.Input[0]
	}
	d := m.Producer(v)
	if !isDequantize(d) {
		return nil, nil
	}
	x, tflip := d.Input[0], false
	if p := m.Producer(x); p != nil && isTranspose2D(p) {
		x, tflip = p.Input[0], true
	}
	t := m.Initializer(x)
	f := byInt[x]
	if t == nil || f == nil || len(t.Dims) != 2 {
		return nil, nil
	}
	if dt := graph.TensorType(t); dt != graph.Int8 && dt != graph.Uint8 {
		return nil, nil
	}
	st := m.Const(d.Input[1])
	if st == nil {
		return nil, nil
	}
	scale, err := graph.Floats(st)
	if err != nil {
		return nil, fmt.Errorf("DequantizeLinear %s: scale: %w", graph.NodeName(d), err)
	}
	vals, err := graph.Int64s(t)
	if err != nil {
		return nil, fmt.Errorf("weight %q: %w", f.Tensor, err)
	}
	// dq is the DequantizeLinear's input layout; (i, j) indexes it.
	r0, r1 := int(t.Dims[0]), int(t.Dims[1])
	at := func(i, j int) int64 { return vals[i*r1+j] }
	if tflip {
		r0, r1 = r1, r0
		at = func(i, j int) int64 { return vals[j*r0+i] }
	}
	axis := graph.IntAttr(d, "axis", 1)
	if axis < 0 {
		axis += 2
	}
	block := graph.IntAttr(d, "block_size", 0)
	idx, err := ScaleIndex([]int64{int64(r0), int64(r1)}, len(scale), axis, block)
	if err != nil {
		return nil, fmt.Errorf("DequantizeLinear %s: %w", graph.NodeName(d), err)
	}
	w := &nbWeight{f: f, k: r0, n: r1, block: block}
	w.q = at
	w.scale = func(i, j int) float32 { return scale[idx(i*r1+j)] }
	kAxis := int64(0)
	if flip {
		w.k, w.n = r1, r0
		w.q = func(k, n int) int64 { return at(n, k) }
		w.scale = func(k, n int) float32 { return scale[idx(n*r1+k)] }
		kAxis = 1
	}
	perTensor := len(scale) == 1 && block == 0
	switch {
	case perTensor:
	case block == 0 && axis == kAxis:
		w.why = "quantized per input channel; MatMulNBits scales output channels and blocks of the input axis"
	case block > 0 && axis != kAxis:
		w.why = "quantized in blocks of its output axis; MatMulNBits takes blocks of the input axis"
	case block > 0 && int64(w.k)%block != 0:
		return nil, fmt.Errorf("weight %q: block size %d does not divide its input dimension %d: re-insert with a block size that divides %d", f.Tensor, block, w.k, w.k)
	case block > 0 && !nbitsBlocks[block]:
		return nil, fmt.Errorf("weight %q has blocks of %d; MatMulNBits takes blocks of 16, 32, 64, 128 or 256: re-insert with --block-size 32, 64 or 128, or export with --format qdq", f.Tensor, block)
	}
	return w, nil
}

// isTranspose2D reports whether p swaps the two axes of a matrix.
func isTranspose2D(p *onnx.NodeProto) bool {
	if p.OpType != "Transpose" {
		return false
	}
	perm := graph.IntsAttr(p, "perm")
	return perm == nil || len(perm) == 2 && perm[0] == 1 && perm[1] == 0
}

// replace puts MatMulNBits in place of n.
func (w *nbWeight) replace(m *graph.Model, n *onnx.NodeProto, o NBitsOptions) error {
	bits := int64(8)
	switch {
	case w.f.Bits <= 2:
		bits = 2
	case w.f.Bits <= 4:
		bits = 4
	}
	block := w.block
	if block == 0 {
		block = o.ChannelBlock
		if block == 0 {
			block = 128
		}
		// The largest allowed block no longer than needed.
		for block > 16 && block/2 >= int64(w.k) {
			block /= 2
		}
	}
	nb := (w.k + int(block) - 1) / int(block)
	blob := int(block * bits / 8)
	zp := int64(1) << (bits - 1)
	alpha := float32(1)
	if n.OpType == "Gemm" {
		alpha = graph.FloatAttr(n, "alpha", 1)
	}
	packed := make([]byte, w.n*nb*blob)
	scales := make([]float32, w.n*nb)
	perByte := 8 / int(bits)
	for j := range w.n {
		for b := range nb {
			scales[j*nb+b] = w.scale(b*int(block), j) * alpha
			base := (j*nb + b) * blob
			for i := range int(block) {
				k := b*int(block) + i
				u := zp // padding beyond K dequantizes to 0
				if k < w.k {
					u = w.q(k, j) + zp
				}
				if u < 0 || u >= 1<<bits {
					return fmt.Errorf("weight %q: value %d is outside the %d-bit grid", w.f.Tensor, u-zp, bits)
				}
				packed[base+i/perByte] |= byte(u) << (int(bits) * (i % perByte))
			}
		}
	}
	// Per-channel and per-tensor scales repeat over blocks: check that
	// every element of a block shares its scale, as MatMulNBits assumes.
	for j := range w.n {
		for k := range w.k {
			if w.scale(k, j)*alpha != scales[j*nb+k/int(block)] {
				return fmt.Errorf("internal error: weight %q has several scales within a block of %d", w.f.Tensor, block)
			}
		}
	}

	base := n.Name
	if base == "" {
		base = n.Output[0]
	}
	bName := m.AddInitializer(&onnx.TensorProto{Name: m.UniqueName(w.f.Tensor + "_nbits"), Dims: []int64{int64(w.n), int64(nb), int64(blob)}, DataType: int32(graph.Uint8), RawData: packed})
	sName := m.AddInitializer(graph.FloatTensor(m.UniqueName(w.f.Tensor+"_nbits_scale"), []int64{int64(w.n * nb)}, scales))

	out := n.Output[0]
	var c string
	if n.OpType == "Gemm" && len(n.Input) > 2 && n.Input[2] != "" {
		c = n.Input[2]
		if beta := graph.FloatAttr(n, "beta", 1); beta != 1 {
			betaName := m.AddInitializer(graph.FloatTensor(m.UniqueName(base+"_beta"), nil, []float32{beta}))
			scaled := m.UniqueName(c + "_beta")
			m.Op("Mul", m.UniqueName(base+"/beta"), []string{c, betaName}, []string{scaled})
			c = scaled
		}
	}
	a := n.Input[0]
	m.RemoveNodes(n)
	y := out
	if c != "" {
		y = m.UniqueName(out + "_matmul")
	}
	attrs := []*onnx.AttributeProto{
		graph.AttrInt("K", int64(w.k)), graph.AttrInt("N", int64(w.n)),
		graph.AttrInt("bits", bits), graph.AttrInt("block_size", block),
	}
	if o.AccuracyLevel != 0 {
		attrs = append(attrs, graph.AttrInt("accuracy_level", o.AccuracyLevel))
	}
	mm := m.Op("MatMulNBits", m.UniqueName(base+"/MatMulNBits"), []string{a, bName, sName}, []string{y}, attrs...)
	mm.Domain = msDomain
	if c != "" {
		m.Op("Add", m.UniqueName(base+"/bias"), []string{y, c}, []string{out})
	}
	return nil
}

// dropActQuant removes the activation quantizers whose dequantized value
// only MatMulNBits nodes read, as their A input.
func dropActQuant(m *graph.Model, r *Result) {
	for _, f := range r.Quantizers {
		if f.Int != "" {
			continue
		}
		var d *onnx.NodeProto
		for _, n := range m.Graph().Node {
			if n.Name == f.Dequantize && isDequantize(n) {
				d = n
				break
			}
		}
		if d == nil || m.IsGraphOutput(d.Output[0]) {
			continue
		}
		uses := m.Consumers(d.Output[0])
		ok := len(uses) > 0
		for _, c := range uses {
			ok = ok && c.OpType == "MatMulNBits" && c.Input[0] == d.Output[0]
		}
		if ok {
			m.ReplaceUses(d.Output[0], f.Tensor)
		}
	}
}

// gatherRows makes embedding lookups dequantize only the rows they read,
// where Fold leaves the DequantizeLinear before the Gather: dequantizing a
// whole table on every run costs more than the rest of a small batch's
// forward pass. For a DequantizeLinear of stored 8-bit integers x:
//
//   - blocked, gathered along another axis: Gather(DQ(x, s, zp), ids)
//     becomes DQ(Gather(x, ids), Gather(s, ids), Gather(zp, ids)), as a
//     blocked scale has the rank of x and is gathered row for row;
//   - per channel along the gather axis of a matrix (rows of a table):
//     it becomes Cast(Gather(x, ids)) · Unsqueeze(Gather(s, ids), -1),
//     the same float products DequantizeLinear computes (the zero point
//     is 0), as DequantizeLinear takes no scale of the indices' shape.
func gatherRows(m *graph.Model) {
	for _, d := range append([]*onnx.NodeProto(nil), m.Graph().Node...) {
		if !isDequantize(d) || m.IsGraphOutput(d.Output[0]) {
			continue
		}
		x := m.Initializer(d.Input[0])
		st := m.Const(d.Input[1])
		if x == nil || (graph.TensorType(x) != graph.Int8 && graph.TensorType(x) != graph.Uint8) || st == nil {
			continue
		}
		block := graph.IntAttr(d, "block_size", 0)
		r := int64(len(x.Dims))
		axis := graph.IntAttr(d, "axis", 1)
		if axis < 0 {
			axis += r
		}
		rows := block == 0 && graph.NumElements(st.Dims) > 1 && r == 2
		if block == 0 && !rows {
			continue
		}
		for _, c := range m.Consumers(d.Output[0]) {
			if c.OpType != "Gather" || c.Input[0] != d.Output[0] || c.Input[1] == d.Output[0] {
				continue
			}
			g := graph.IntAttr(c, "axis", 0)
			if g < 0 {
				g += r
			}
			out, ids := c.Output[0], c.Input[1]
			gather := func(v, suffix string) string {
				gv := m.UniqueName(out + suffix)
				m.Op("Gather", m.UniqueName(c.Name+suffix), []string{v, ids}, []string{gv}, graph.AttrInt("axis", g))
				return gv
			}
			switch {
			case block > 0 && g != axis:
				a := axis
				if a > g {
					a -= r // counted from the back: the indices' rank replaces axis g
				}
				var ins []string
				for i, v := range d.Input {
					if v == "" {
						ins = append(ins, v)
						continue
					}
					ins = append(ins, gather(v, []string{"_quantized", "_scale", "_zero_point"}[i]))
				}
				m.RemoveNodes(c)
				dequantize(m, m.UniqueName(out+"/dequantize"), ins, []string{out}, graph.AttrInt("axis", a), graph.AttrInt("block_size", block))
			case rows && g == 0 && axis == 0:
				xg, sg := gather(d.Input[0], "_quantized"), gather(d.Input[1], "_scale")
				last := m.AddInitializer(graph.Int64Tensor(m.UniqueName(out+"_last_axis"), []int64{1}, []int64{-1}))
				su, xf := m.UniqueName(out+"_scale_column"), m.UniqueName(out+"_float")
				m.Op("Unsqueeze", m.UniqueName(c.Name+"_scale_column"), []string{sg, last}, []string{su})
				m.Op("Cast", m.UniqueName(c.Name+"_cast"), []string{xg}, []string{xf}, graph.AttrInt("to", int64(graph.Float)))
				m.RemoveNodes(c)
				m.Op("Mul", m.UniqueName(out+"/dequantize"), []string{xf, su}, []string{out})
			}
		}
	}
}

// unNBits undoes MatMulNBits' replace for Unfold: n becomes the qdq
// form's DequantizeLinear → MatMul on the stored integers of the
// quantizer r (the weight's own integers when the model keeps them for
// other readers, as an embedding table's lookups do, else new ones in
// the product's layout [K, N]), with r's per-tensor, per-column or
// per-block scale, which the operator's [N, blocks] scales must repeat
// exactly.
func unNBits(m *graph.Model, n *onnx.NodeProto, r quantize.Quantizer, zeroPoint func(dims []int64) string) error {
	w := storedNBits(m, n)
	if w == nil || w.Scale == nil || input(n, 3) != "" {
		return fmt.Errorf("not the MatMulNBits that matmulnbits writes (a packed weight, constant scales, no zero points)")
	}
	q, err := w.Ints()
	if err != nil {
		return err
	}
	k, cols := int(w.Dims[0]), int(w.Dims[1])
	block := int(graph.IntAttr(n, "block_size", 0))
	nb := (k + block - 1) / block
	if len(w.Scale) != cols*nb {
		return fmt.Errorf("weight %q has %d scales, want %d", w.Name, len(w.Scale), cols*nb)
	}
	// Find the stored integers the product reads, in either layout.
	stored, flip := (*onnx.TensorProto)(nil), false
	for _, t := range m.Graph().Initializer {
		if ownedBy(t.Name, r.Tensor) && isIntType(graph.TensorType(t)) {
			stored = t
		}
	}
	if stored != nil {
		v, err := graph.Int64s(stored)
		if err != nil {
			return err
		}
		kn := []int64{int64(k), int64(cols)}
		switch {
		case slices.Equal(stored.Dims, kn) && slices.Equal(v, q):
		case slices.Equal(stored.Dims, []int64{int64(cols), int64(k)}):
			if vt, _ := graph.Transpose(v, stored.Dims, []int64{1, 0}); !slices.Equal(vt, q) {
				return fmt.Errorf("weight %q holds other integers than %q", w.Name, stored.Name)
			}
			flip = true
		default:
			return fmt.Errorf("weight %q holds other integers than %q", w.Name, stored.Name)
		}
	} else {
		ints := make([]int8, len(q))
		for i, x := range q {
			ints[i] = int8(x)
		}
		stored = graph.Int8Tensor(m.UniqueName(r.Tensor+"_quantized"), []int64{int64(k), int64(cols)}, ints)
		m.AddInitializer(stored)
	}
	// The scale in the stored integers' layout: scale(kk, j) of the
	// product's [K, N] element is sc[at(kk, j)].
	var sc []float32
	var sdims []int64
	var attrs []*onnx.AttributeProto
	kAxis, nAxis := int64(0), int64(1)
	if flip {
		kAxis, nAxis = 1, 0
	}
	var at func(kk, j int) int
	switch {
	case r.BlockSize > 0:
		if r.BlockSize != block || k%block != 0 {
			return fmt.Errorf("weight %q: blocks of %d, not the quantizer's %d", w.Name, block, r.BlockSize)
		}
		sc, sdims = make([]float32, cols*nb), []int64{int64(nb), int64(cols)}
		at = func(kk, j int) int { return kk/block*cols + j }
		if flip {
			sdims = []int64{int64(cols), int64(nb)}
			at = func(kk, j int) int { return j*nb + kk/block }
		}
		attrs = append(attrs, graph.AttrInt("axis", kAxis), graph.AttrInt("block_size", int64(block)))
	case r.Axis != nil:
		sc, sdims = make([]float32, cols), []int64{int64(cols)}
		at = func(_, j int) int { return j }
		attrs = append(attrs, graph.AttrInt("axis", nAxis))
	default:
		sc, sdims = make([]float32, 1), []int64{}
		at = func(int, int) int { return 0 }
	}
	for j := range cols {
		for b := range nb {
			sc[at(b*block, j)] = w.Scale[j*nb+b]
		}
	}
	for j := range cols {
		for kk := range k {
			if s := sc[at(kk, j)]; math.Float32bits(s) != math.Float32bits(w.Scale[j*nb+kk/block]) {
				return fmt.Errorf("weight %q: its scales are not %s's (one per tensor, column or block of %d)", w.Name, r.Tensor, r.BlockSize)
			}
		}
	}
	scale := m.AddInitializer(graph.FloatTensor(m.UniqueName(r.Tensor+"_scale"), sdims, sc))
	ins := []string{stored.Name, scale}
	if graph.TensorType(stored) == graph.Int8 {
		ins = append(ins, zeroPoint(sdims))
	}
	b := m.UniqueName(r.Tensor + "/dequantized")
	dequantize(m, m.UniqueName(r.Tensor+"/dequantize"), ins, []string{b}, attrs...)
	if flip {
		t := m.UniqueName(b + "_transposed")
		m.Op("Transpose", "", []string{b}, []string{t}, graph.AttrInts("perm", 1, 0))
		b = t
	}
	base := strings.TrimSuffix(n.Name, "/MatMulNBits")
	a, out := n.Input[0], n.Output[0]
	m.RemoveNodes(n)
	m.Op("MatMul", m.UniqueName(base), []string{a, b}, []string{out})
	return nil
}

// unGatherRows undoes gatherRows for Unfold: a DequantizeLinear of
// gathered rows (the integers, blocked scales and zero points gathered
// alike, or a Cast's integers times an Unsqueeze of gathered per-row
// scales) becomes the table's DequantizeLinear → Gather.
func unGatherRows(m *graph.Model, zeroPoint func(dims []int64) string) {
	gathered := func(v string) (*onnx.NodeProto, *onnx.TensorProto) {
		g := m.Producer(v)
		if g == nil || g.OpType != "Gather" || len(g.Input) != 2 {
			return nil, nil
		}
		return g, m.Initializer(g.Input[0])
	}
	for _, d := range slices.Clone(m.Graph().Node) {
		var gx *onnx.NodeProto
		var x *onnx.TensorProto
		var ins []string
		var attrs []*onnx.AttributeProto
		switch {
		case isDequantize(d) && graph.IntAttr(d, "block_size", 0) > 0:
			if gx, x = gathered(d.Input[0]); x == nil {
				continue
			}
			g := graph.IntAttr(gx, "axis", 0)
			for _, v := range d.Input {
				if v == "" {
					ins = append(ins, v)
					continue
				}
				gv, t := gathered(v)
				if t == nil || gv.Input[1] != gx.Input[1] || graph.IntAttr(gv, "axis", 0) != g {
					ins = nil
					break
				}
				ins = append(ins, gv.Input[0])
			}
			axis := graph.IntAttr(d, "axis", 1)
			if axis < 0 {
				axis += int64(len(x.Dims))
			}
			if ins == nil || g < 0 || g >= int64(len(x.Dims)) || axis == g {
				continue
			}
			attrs = []*onnx.AttributeProto{graph.AttrInt("axis", axis), graph.AttrInt("block_size", graph.IntAttr(d, "block_size", 0))}
		case d.OpType == "Mul" && len(d.Input) == 2:
			c, u := m.Producer(d.Input[0]), m.Producer(d.Input[1])
			if c == nil || u == nil || c.OpType != "Cast" || u.OpType != "Unsqueeze" || len(u.Input) != 2 {
				continue
			}
			var gs *onnx.NodeProto
			var s *onnx.TensorProto
			gx, x = gathered(c.Input[0])
			gs, s = gathered(u.Input[0])
			last, ok := m.ConstInts(u.Input[1])
			if x == nil || s == nil || !ok || !slices.Equal(last, []int64{-1}) || len(x.Dims) != 2 || gs.Input[1] != gx.Input[1] ||
				graph.IntAttr(gx, "axis", 0) != 0 || graph.IntAttr(gs, "axis", 0) != 0 || graph.NumElements(s.Dims) != x.Dims[0] || graph.TensorType(x) != graph.Int8 {
				continue
			}
			ins = []string{x.Name, s.Name, zeroPoint(s.Dims)}
			attrs = []*onnx.AttributeProto{graph.AttrInt("axis", 0)}
		default:
			continue
		}
		if !isIntType(graph.TensorType(x)) {
			continue
		}
		out, ids, g := d.Output[0], gx.Input[1], graph.IntAttr(gx, "axis", 0)
		table := m.UniqueName(x.Name + "/dequantized")
		m.RemoveNodes(d)
		dequantize(m, m.UniqueName(x.Name+"/dequantize"), ins, []string{table}, attrs...)
		m.Op("Gather", m.UniqueName(out+"/Gather"), []string{table, ids}, []string{out}, graph.AttrInt("axis", g))
	}
}

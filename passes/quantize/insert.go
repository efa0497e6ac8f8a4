package quantize

import (
	"fmt"
	"math"
	"sort"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// ClipSuffix ends the name of every clip initializer Insert writes
// (<tensor>_clip_max, DESIGN.md's convention).
const ClipSuffix = "_clip_max"

// Tiny is the floor Max(clip, Tiny) puts under every clip, so that a clip
// driven to zero by training never gives a zero scale.
const Tiny = 1e-8

// Opsets the graph form needs.
const (
	opsetQDQ     = 10 // QuantizeLinear/DequantizeLinear
	opsetClipInt = 12 // Clip on int8/uint8 (bits below 8)
	opsetPerAxis = 13 // per-axis scales
	opsetBlocked = 21 // block_size on QuantizeLinear/DequantizeLinear
)

// Insert adds the quantizers Plan finds to m, in place, sets their clips to
// their initial values, and writes and returns the qatc.quantization
// record. A weight quantized per block is fake-quantized on its blocked
// view (see BlockView). Block granularity raises the model's opset to 21
// when no op in it changed meaning since its current opset, and fails
// naming the op otherwise. On error m is unchanged.
func Insert(m *graph.Model, p Params) (*Record, error) {
	pl, err := plan(m, p)
	if err != nil {
		return nil, err
	}
	var active []*cand
	blocked := false
	for _, c := range pl.cands {
		if !c.skip {
			active = append(active, c)
			blocked = blocked || c.gran == Block
		}
	}
	// Compute every initial clip before editing, so that errors leave m as it was.
	clips := map[*cand]*onnx.TensorProto{}
	for _, c := range active {
		if c.kind == KindSoftmax || c.tied != nil {
			continue
		}
		dims, vals, err := pl.initClip(c)
		if err != nil {
			return nil, err
		}
		clips[c] = graph.FloatTensor("", dims, vals)
	}
	if blocked {
		if err := m.RaiseOpset(opsetBlocked); err != nil {
			return nil, err
		}
	}
	in := &inserter{m: m, consts: map[string]string{}, scales: map[string]string{}, clipOf: map[*cand]string{}}
	rec := &Record{Params: p, Unquantized: pl.unreached}
	rec.Params.Granularity, _ = p.granularity()
	if rec.Params.WeightInit == InitPercentile && rec.Params.Percentile == 0 {
		rec.Params.Percentile = 99.99
	}
	for _, c := range active {
		rec.Quantizers = append(rec.Quantizers, in.insert(c, clips[c]))
	}
	if err := m.TopoSort(); err != nil {
		return nil, err
	}
	// List the quantizers in graph order, the order Find gives.
	pos := map[string]int{}
	for i, n := range m.Graph().Node {
		pos[n.Name] = i
	}
	sort.SliceStable(rec.Quantizers, func(i, j int) bool {
		return pos[rec.Quantizers[i].Dequantize] < pos[rec.Quantizers[j].Dequantize]
	})
	if err := WriteRecord(m, rec); err != nil {
		return nil, err
	}
	return rec, nil
}

// checkOpset checks that m's opset can carry the graph form of the
// planned quantizers.
func (pl *planner) checkOpset() error {
	perAxis, low, blocked, any := false, false, false, false
	for _, c := range pl.cands {
		if c.skip {
			continue
		}
		any = true
		perAxis = perAxis || c.gran != Tensor
		low = low || c.bits < 8
		blocked = blocked || c.gran == Block
	}
	if !any {
		return fmt.Errorf("nothing to quantize: the model has no MatMul, Gemm or embedding Gather operands left after --include/--exclude and the recipe")
	}
	m := pl.m
	v := m.Opset("")
	need := func(op int64, what string) error {
		if v < op {
			return fmt.Errorf("%s needs opset %d; the model is opset %d: re-export it at opset %d or later", what, op, v, op)
		}
		return nil
	}
	if err := need(opsetQDQ, "QuantizeLinear/DequantizeLinear"); err != nil {
		return err
	}
	if low {
		if err := need(opsetClipInt, "bits below 8 (Clip on the integer tensor)"); err != nil {
			return err
		}
	}
	if perAxis {
		if err := need(opsetPerAxis, "per-channel clips"); err != nil {
			return err
		}
	}
	if !blocked || v >= opsetBlocked {
		return nil
	}
	if err := m.CanRaiseOpset(opsetBlocked); err != nil {
		return fmt.Errorf("block granularity needs opset %d (DequantizeLinear block_size): %v, or use channel granularity", opsetBlocked, err)
	}
	return nil
}

// inserter edits one model, sharing constants between quantizers.
type inserter struct {
	m      *graph.Model
	consts map[string]string // key → initializer name
	scales map[string]string // clip|qmax → scale value
	clipOf map[*cand]string
}

// konst returns the shared initializer for key, creating it with make.
func (in *inserter) konst(key, base string, make func(name string) *onnx.TensorProto) string {
	if n, ok := in.consts[key]; ok {
		return n
	}
	n := in.m.UniqueName(base)
	in.m.AddInitializer(make(n))
	in.consts[key] = n
	return n
}

func (in *inserter) floatConst(base string, v float32) string {
	return in.konst(fmt.Sprintf("f:%s:%g", base, v), base, func(n string) *onnx.TensorProto {
		return graph.FloatTensor(n, nil, []float32{v})
	})
}

// shapeConst returns the int64 initializer holding dims, for Reshape.
func (in *inserter) shapeConst(dims []int64) string {
	return in.konst(fmt.Sprintf("shape:%v", dims), "qatc/shape", func(n string) *onnx.TensorProto {
		return graph.Int64Tensor(n, []int64{int64(len(dims))}, dims)
	})
}

// intConst returns an int8 or uint8 tensor of dims filled with v.
func (in *inserter) intConst(base string, signed bool, dims []int64, v int) string {
	return in.konst(fmt.Sprintf("i:%s:%v:%v:%d", base, signed, dims, v), base, func(n string) *onnx.TensorProto {
		size := int(graph.NumElements(dims))
		if signed {
			d := make([]int8, size)
			for i := range d {
				d[i] = int8(v)
			}
			return graph.Int8Tensor(n, dims, d)
		}
		d := make([]uint8, size)
		for i := range d {
			d[i] = uint8(v)
		}
		return graph.Uint8Tensor(n, dims, d)
	})
}

// insert adds c's quantizer and rewires its uses.
func (in *inserter) insert(c *cand, clip *onnx.TensorProto) Quantizer {
	m := in.m
	q := c.quantizer()
	qmin, qmax := qrange(c.kind, c.bits)
	signed := q.Signed()
	var scale string
	scaleDims := []int64(nil)
	switch {
	case c.kind == KindSoftmax:
		scale = in.floatConst(fmt.Sprintf("qatc/softmax_scale_%d", c.bits), float32(1/math.Ldexp(1, c.bits)))
	default:
		rep := c
		if c.tied != nil {
			rep = c.tied
		}
		clipName, ok := in.clipOf[rep]
		if !ok {
			clipName = m.UniqueName(rep.tensor + ClipSuffix)
			clip.Name = clipName
			m.AddInitializer(clip)
			in.clipOf[rep] = clipName
		}
		q.Clip = clipName
		scaleDims = m.Initializer(clipName).Dims
		key := fmt.Sprintf("%s|%d", clipName, qmax)
		scale, ok = in.scales[key]
		if !ok {
			floor := m.UniqueName(rep.tensor + "/clip_floor")
			m.Op("Max", "", []string{clipName, in.floatConst("qatc/tiny", Tiny)}, []string{floor})
			scale = m.UniqueName(rep.tensor + "/scale")
			m.Op("Div", "", []string{floor, in.floatConst(fmt.Sprintf("qatc/qmax_%d", qmax), float32(qmax))}, []string{scale})
			in.scales[key] = scale
		}
		if c.gran == Block && c.outAxis > c.inAxis {
			// The clip is laid out [C, K/block]; this weight is [K, C].
			t := m.UniqueName(c.tensor + "/scale_t")
			m.Op("Transpose", "", []string{scale}, []string{t}, graph.AttrInts("perm", 1, 0))
			scale = t
			scaleDims = []int64{scaleDims[1], scaleDims[0]}
		}
	}
	x := c.tensor
	var view *BlockView
	if c.gran == Block {
		// Blocks become an axis of their own (see BlockView).
		view = NewBlockView(m.Initializer(c.tensor).Dims, *q.Axis, q.BlockSize)
		x = m.UniqueName(c.tensor + "/blocks")
		m.Op("Reshape", "", []string{c.tensor, in.shapeConst(view.Dims)}, []string{x})
		s := m.UniqueName(scale + "/blocks")
		m.Op("Reshape", "", []string{scale, in.shapeConst(view.ScaleDims)}, []string{s})
		scale, scaleDims = s, view.ScaleDims
	}
	zp := in.intConst(pickName(signed, "qatc/zero_int8", "qatc/zero_uint8"), signed, scaleDims, 0)
	var attrs []*onnx.AttributeProto
	switch {
	case view != nil:
		attrs = append(attrs, graph.AttrInt("axis", int64(view.Axis)), graph.AttrInt("block_size", int64(q.BlockSize)))
	case q.Axis != nil:
		attrs = append(attrs, graph.AttrInt("axis", int64(*q.Axis)))
	}
	q.Quantize = m.UniqueName(c.tensor + "/quantize")
	ints := m.UniqueName(c.tensor + "/quantized")
	m.Op("QuantizeLinear", q.Quantize, []string{x, scale, zp}, []string{ints}, attrs...)
	if lo, hi := qrangeOf(signed); qmin != lo || qmax != hi {
		clipped := m.UniqueName(c.tensor + "/clipped")
		m.Op("Clip", "", []string{ints,
			in.intConst(fmt.Sprintf("qatc/qmin_%d", qmin), signed, nil, qmin),
			in.intConst(fmt.Sprintf("qatc/qmax_int_%d", qmax), signed, nil, qmax)}, []string{clipped})
		ints = clipped
	}
	q.Dequantize = m.UniqueName(c.tensor + "/dequantize")
	q.Output = m.UniqueName(c.tensor + "/dequantized")
	if view == nil {
		m.Op("DequantizeLinear", q.Dequantize, []string{ints, scale, zp}, []string{q.Output}, attrs...)
	} else {
		blocks := m.UniqueName(c.tensor + "/dequantized_blocks")
		m.Op("DequantizeLinear", q.Dequantize, []string{ints, scale, zp}, []string{blocks}, attrs...)
		m.Op("Reshape", "", []string{blocks, in.shapeConst(m.Initializer(c.tensor).Dims)}, []string{q.Output})
	}
	for _, u := range c.uses {
		m.ReplaceInput(u.node, u.idx, q.Output)
	}
	return q
}

func pickName(cond bool, a, b string) string {
	if cond {
		return a
	}
	return b
}

// qrangeOf is the 8-bit integer type's own range.
func qrangeOf(signed bool) (int, int) {
	if signed {
		return -128, 127
	}
	return 0, 255
}

// initClip returns the initial clip tensor of c: a scalar, [C] or
// [C, K/block].
func (pl *planner) initClip(c *cand) ([]int64, []float32, error) {
	method := pl.p.WeightInit
	if !c.weight || method == "" || method == InitValue {
		dims, n := pl.clipShape(c)
		vals := make([]float32, n)
		for i := range vals {
			vals[i] = c.clip
		}
		return dims, vals, nil
	}
	t := pl.m.Initializer(c.tensor)
	w, err := graph.Floats(t)
	if err != nil {
		return nil, nil, fmt.Errorf("weight %s: %v", c.tensor, err)
	}
	dims, n := pl.clipShape(c)
	groups := make([][]float32, n)
	group := groupIndex(t.Dims, c)
	for i, v := range w {
		g := group(i)
		groups[g] = append(groups[g], v)
	}
	vals := make([]float32, n)
	_, qmax := qrange(c.kind, c.bits)
	for g, xs := range groups {
		var v float32
		switch method {
		case InitMax:
			v = maxAbs(xs)
		case InitPercentile:
			p := pl.p.Percentile
			if p == 0 {
				p = 99.99
			}
			v = percentileAbs(xs, p)
		case InitMSE:
			v = mseClip(xs, qmax)
		}
		if !(v > Tiny) {
			v = Tiny // an all-zero channel: any clip represents it exactly
		}
		vals[g] = v
	}
	return dims, vals, nil
}

// clipShape returns the clip tensor's dims and size for c.
func (pl *planner) clipShape(c *cand) ([]int64, int) {
	if !c.weight || c.gran == Tensor {
		return nil, 1
	}
	d := pl.m.Initializer(c.tensor).Dims
	C := d[c.outAxis]
	if c.gran == Channel {
		return []int64{C}, int(C)
	}
	K := d[c.inAxis] / int64(c.block)
	return []int64{C, K}, int(C * K)
}

// groupIndex maps a flat element index of a tensor with dims to its clip
// group in the [C] or [C, K/block] layout.
func groupIndex(dims []int64, c *cand) func(int) int {
	if c.gran == Tensor {
		return func(int) int { return 0 }
	}
	stride := make([]int, len(dims))
	s := 1
	for i := len(dims) - 1; i >= 0; i-- {
		stride[i] = s
		s *= int(dims[i])
	}
	a := c.outAxis
	da := int(dims[a])
	if c.gran == Channel {
		return func(i int) int { return i / stride[a] % da }
	}
	b, bs := c.inAxis, c.block
	nb := int(dims[b]) / bs
	return func(i int) int { return (i/stride[a]%da)*nb + (i/stride[b]%int(dims[b]))/bs }
}

func maxAbs(xs []float32) float32 {
	var m float32
	for _, x := range xs {
		m = max(m, float32(math.Abs(float64(x))))
	}
	return m
}

// percentileAbs returns the p-th percentile of |x|, interpolating linearly.
func percentileAbs(xs []float32, p float64) float32 {
	a := make([]float64, len(xs))
	for i, x := range xs {
		a[i] = math.Abs(float64(x))
	}
	sort.Float64s(a)
	if len(a) == 0 {
		return 0
	}
	pos := p / 100 * float64(len(a)-1)
	lo := int(math.Floor(pos))
	if lo >= len(a)-1 {
		return float32(a[len(a)-1])
	}
	f := pos - float64(lo)
	return float32(a[lo]*(1-f) + a[lo+1]*f)
}

// mseClip returns the clip (on a grid of 200 candidates up to max |x|)
// minimising the squared error of fake-quantizing xs on the signed grid with
// qmax positive levels.
func mseClip(xs []float32, qmax int) float32 {
	m := float64(maxAbs(xs))
	if m == 0 {
		return 0
	}
	const steps = 200
	best, bestErr := m, math.Inf(1)
	for k := steps / 10; k <= steps; k++ {
		c := m * float64(k) / steps
		s := c / float64(qmax)
		lo, hi := -float64(qmax+1)*s, float64(qmax)*s
		var e float64
		for _, x := range xs {
			v := float64(x)
			q := math.RoundToEven(math.Max(lo, math.Min(hi, v))/s) * s
			e += (v - q) * (v - q)
		}
		if e < bestErr {
			best, bestErr = c, e
		}
	}
	return float32(best)
}

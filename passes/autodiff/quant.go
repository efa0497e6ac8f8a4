package autodiff

import (
	"fmt"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
)

// quantUnit is a quantizer (quantize.Match) that the pass differentiates
// as one fake-quantization op of the QuantizeLinear's input x: the
// integer tensors in between carry no gradient of their own (a blocked
// view's Reshapes are ordinary nodes with rules of their own).
type quantUnit struct {
	*quantize.Unit
	x      string
	lo, hi float64 // integer range after the zero point: qmin-zp, qmax-zp
}

// findQuantUnits finds every quantizer of m, keyed by its
// DequantizeLinear.
func findQuantUnits(m *graph.Model) (map[*onnx.NodeProto]*quantUnit, error) {
	units := map[*onnx.NodeProto]*quantUnit{}
	for _, n := range m.Graph().Node {
		qu, err := quantize.Match(m, n)
		if err != nil {
			return nil, err
		}
		if qu == nil {
			continue
		}
		zp := int64(0)
		for i, v := range qu.ZeroPoints {
			if v != qu.ZeroPoints[0] {
				return nil, fmt.Errorf("quantizer %s: per-channel zero points differ; only a common zero point is supported", graph.NodeName(qu.Q))
			}
			if i == 0 {
				zp = v
			}
		}
		units[n] = &quantUnit{Unit: qu, x: qu.Q.Input[0], lo: float64(qu.Lo - zp), hi: float64(qu.Hi - zp)}
	}
	return units, nil
}

// gradDequantize differentiates a quantizer unit: the straight-through
// gradient for x inside the representable range [s·lo, s·hi], zero
// outside, and for the scale Σ g·hi over elements above the range plus
// Σ g·lo below it (NeurST; with the clip = scale·qmax this is
// dclip = Σ_above g − 128/127 Σ_below g), plus, with ClipGrad "lsq",
// Σ g·(round(x/s) − x/s) inside. Per-axis scales are reduced over the
// other axes, blocked scales over their blocks.
func gradDequantize(b *builder, n *onnx.NodeProto, gy []string) error {
	u := b.quant[n]
	if u == nil {
		return fmt.Errorf("DequantizeLinear without a QuantizeLinear producing its input has no gradient rule")
	}
	x, s, g := u.x, u.Scale, gy[0]
	if b.needs(in(n, 1)) && in(n, 1) != s {
		return fmt.Errorf("the quantizer pair %s/%s uses two different scales (%q, %q); a trainable scale must be shared", graph.NodeName(u.Q), graph.NodeName(n), s, in(n, 1))
	}
	rx, rs := b.f.Rank(x), b.f.Rank(s)
	if rs < 0 || rx < 0 {
		return fmt.Errorf("ranks of %q and its scale %q are unknown", x, s)
	}
	sb := s // the scale broadcast against x
	var axis int64
	block := graph.IntAttr(u.Q, "block_size", 0)
	perAxis := rs == 1 && block == 0
	var blockDims []int64 // x's dims with the blocked axis split into [blocks, block]
	if block > 0 {
		var ok bool
		axis, ok = normAxis(graph.IntAttr(u.Q, "axis", 1), rx)
		dims := b.staticShape(x)
		if !ok || dims == nil || rs != rx {
			return fmt.Errorf("blocked quantizer %s needs a weight of static shape and a scale of its rank", graph.NodeName(u.Q))
		}
		if dims[axis]%block != 0 {
			return fmt.Errorf("blocked quantizer %s: axis %d of %q (%d) is not a multiple of the block size %d", graph.NodeName(u.Q), axis, x, dims[axis], block)
		}
		blockDims = append(append(append([]int64{}, dims[:axis]...), dims[axis]/block, block), dims[axis+1:]...)
		// Repeat each scale block times along the axis.
		e := b.like(x, "Expand", []string{b.unsqueeze(castTo(b, s, x), axis+1), b.ints(blockDims...)})
		b.f.rank[e] = rx + 1
		sb = b.reshape(e, dims...)
	} else if rs > 1 {
		return fmt.Errorf("scale %q of rank %d without block_size has no gradient rule", s, rs)
	}
	if perAxis {
		var ok bool
		axis, ok = normAxis(graph.IntAttr(u.Q, "axis", 1), rx)
		if !ok {
			return fmt.Errorf("axis of %s is out of range for %q", graph.NodeName(u.Q), x)
		}
		shape := []int64{-1}
		for i := axis + 1; i < int64(rx); i++ {
			shape = append(shape, 1)
		}
		sb = b.reshape(s, shape...)
		if b.f.Elem(sb) == graph.Undefined {
			b.f.elem[sb] = b.f.Elem(x)
		}
	}
	sb = castTo(b, sb, x)
	hi := b.mul(b.constOf(x, u.hi), sb)
	lo := b.mul(b.constOf(x, u.lo), sb)
	// reduce sums a tensor of x's shape into the scale's shape.
	reduce := func(e string) string {
		b.f.rank[e] = rx
		var ds string
		if block > 0 {
			ds = b.reduceSum(b.reshape(e, blockDims...), []int64{axis + 1}, false)
		} else if perAxis {
			var axes []int64
			for i := int64(0); i < int64(rx); i++ {
				if i != axis {
					axes = append(axes, i)
				}
			}
			ds = e
			if len(axes) > 0 {
				ds = b.reduceSum(e, axes, false)
			}
		} else {
			ds = b.typed(b.f.Elem(x), 0, "ReduceSum", []string{e}, graph.AttrInt("keepdims", 0))
			ds = b.reshapeLike(ds, s)
		}
		return castTo(b, ds, s)
	}
	if b.opset < 11 {
		if b.opts.ClipGrad == "lsq" {
			return fmt.Errorf("clip gradient lsq needs opset 11 or later (Round); the model has opset %d", b.opset)
		}
		// Equal on floats and Clip with tensor bounds are opset 11.
		return steMasks(b, u, x, s, lo, hi, g, reduce)
	}
	// r = x clipped to [lo, hi] is x exactly inside the range and the
	// bound outside it, so one comparison gives the mask, and outside
	// r/s is qmax or qmin: Σ_above g·qmax + Σ_below g·qmin is
	// Σ (g − dx)·r / s, reduced before dividing. Seven passes over x where
	// separate masks take a dozen; the training step runs this for every
	// weight and activation quantizer.
	var r string
	if rs == 0 && block == 0 {
		r = b.like(x, "Clip", []string{x, lo, hi})
	} else {
		r = b.like(x, "Max", []string{b.like(x, "Min", []string{x, hi}), lo})
	}
	inside := b.maskOf(b.typed(graph.Bool, rx, "Equal", []string{r, x}), x)
	// (Mul by the cast mask is faster in onnxruntime than Where with a
	// scalar zero.)
	dx := b.mul(g, inside)
	b.accum(x, dx)
	if !b.needs(s) {
		return nil
	}
	ds := b.like(s, "Div", []string{reduce(b.mul(b.sub(g, dx), r)), s})
	if b.opts.ClipGrad == "lsq" {
		t := b.div(x, sb)
		ds = b.add(ds, reduce(b.mul(dx, b.sub(b.like(t, "Round", []string{t}), t))))
	}
	b.accum(s, ds)
	return nil
}

// steMasks is gradDequantize's form for opsets before 11: explicit masks
// for above and below the range (NeurST's rule only).
func steMasks(b *builder, u *quantUnit, x, s, lo, hi, g string, reduce func(string) string) error {
	rx := b.f.Rank(x)
	above := b.cmp("Greater", x, hi)
	below := b.cmp("Less", x, lo)
	out := b.typed(graph.Bool, rx, "Or", []string{above, below})
	inside := b.maskOf(b.typed(graph.Bool, rx, "Not", []string{out}), x)
	b.f.rank[inside] = rx
	if b.needs(x) {
		b.accum(x, b.mul(g, inside))
	}
	if !b.needs(s) {
		return nil
	}
	e := b.add(b.mul(b.maskOf(above, x), b.constOf(x, u.hi)), b.mul(b.maskOf(below, x), b.constOf(x, u.lo)))
	b.f.rank[e] = rx
	b.accum(s, reduce(b.mul(g, e)))
	return nil
}

package fold

import (
	"fmt"
	"math"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
)

// Quantizer kinds, as passes/quantize names them.
const (
	KindWeight  = "weight"
	KindAct     = "act"
	KindRelu    = "relu"
	KindSoftmax = "softmax"
)

// quantizer is one fake-quantizer of a QAT graph:
//
//	clip ─▶ Max(·, tiny) ─▶ Div(·, qmax) = scale
//	T ─▶ QuantizeLinear(T, scale, zp) ─▶ [Clip] ─▶ DequantizeLinear(·, scale, zp)
type quantizer struct {
	tensor    string // T, the quantized value
	kind      string
	bits      int
	q, dq     *onnx.NodeProto
	clamp     *onnx.NodeProto // integer Clip below 8 bits, or nil
	clipInit  string          // the clip initializer ("" for a fixed scale)
	scaleOps  []*onnx.NodeProto
	scale     []float32 // the scale the QAT graph computes, folded
	scaleDims []int64
	axis      int64 // Q's axis attribute as written (default 1)
	blockSize int64
	zpType    graph.DataType
	lo, hi    int64 // the integer range the QAT graph can produce
	// view is the blocked view around a weight's pair (nil otherwise);
	// tensor and axis then are the weight's own, not the view's.
	view *quantize.BlockedPair
}

// perTensor reports whether q has one scale for the whole tensor.
func (q *quantizer) perTensor() bool { return len(q.scale) == 1 && q.blockSize == 0 }

// findQuantizers lists the graph's Q/DQ pairs in graph order, with their
// scales evaluated. A QuantizeLinear that is not followed by exactly one
// DequantizeLinear (an already-exported graph) is not a quantizer.
func findQuantizers(m *graph.Model) ([]*quantizer, error) {
	var qs []*quantizer
	for _, n := range m.Graph().Node {
		if n.OpType != "QuantizeLinear" || len(n.Input) < 2 || len(n.Output) != 1 {
			continue
		}
		q := &quantizer{tensor: n.Input[0], q: n, axis: graph.IntAttr(n, "axis", 1), blockSize: graph.IntAttr(n, "block_size", 0)}
		next := m.Consumers(n.Output[0])
		if len(next) == 1 && next[0].OpType == "Clip" {
			q.clamp = next[0]
			next = m.Consumers(next[0].Output[0])
		}
		if len(next) != 1 || next[0].OpType != "DequantizeLinear" || m.IsGraphOutput(n.Output[0]) {
			continue
		}
		q.dq = next[0]
		if v := quantize.FindBlockView(m, n, q.dq); v != nil {
			q.view, q.tensor, q.axis = v, v.Weight, int64(v.Axis)
		}
		if err := q.resolve(m); err != nil {
			return nil, err
		}
		qs = append(qs, q)
	}
	return qs, nil
}

// resolve evaluates q's scale, zero-point type, integer range, kind and
// bits from the graph.
func (q *quantizer) resolve(m *graph.Model) error {
	name := graph.NodeName(q.q)
	q.zpType = graph.Uint8 // QuantizeLinear's default without a zero point
	if len(q.q.Input) > 2 && q.q.Input[2] != "" {
		zp := m.Const(q.q.Input[2])
		if zp == nil {
			return fmt.Errorf("quantizer %s: zero point %q is not a constant; only constant zero points can be exported", name, q.q.Input[2])
		}
		q.zpType = graph.TensorType(zp)
		zps, err := graph.Int64s(zp)
		if err != nil {
			return fmt.Errorf("quantizer %s: %w", name, err)
		}
		for _, z := range zps {
			if z != 0 {
				return fmt.Errorf("quantizer %s: zero point %d is not 0; qatc's quantizers are symmetric, re-insert the quantizer with passes/quantize", name, z)
			}
		}
	}
	switch q.zpType {
	case graph.Int8:
		q.lo, q.hi = -128, 127
	case graph.Uint8:
		q.lo, q.hi = 0, 255
	case graph.Int4:
		q.lo, q.hi = -8, 7
	case graph.Uint4:
		q.lo, q.hi = 0, 15
	default:
		return fmt.Errorf("quantizer %s: %s integers are not supported; use int8/uint8 (or int4/uint4) zero points", name, q.zpType)
	}
	if q.clamp != nil {
		for i, bound := range []*int64{&q.lo, &q.hi} {
			if len(q.clamp.Input) <= i+1 || q.clamp.Input[i+1] == "" {
				continue
			}
			t := m.Const(q.clamp.Input[i+1])
			if t == nil {
				return fmt.Errorf("quantizer %s: Clip bound %q is not a constant", name, q.clamp.Input[i+1])
			}
			v, err := graph.Int64s(t)
			if err != nil || len(v) != 1 {
				return fmt.Errorf("quantizer %s: Clip bound %q is not an integer scalar", name, q.clamp.Input[i+1])
			}
			if i == 0 {
				*bound = max(*bound, v[0])
			} else {
				*bound = min(*bound, v[0])
			}
		}
	}

	// The scale: a constant (softmax), or Div(Max(clip, tiny), qmax).
	scaleName := q.q.Input[1]
	if t := m.Const(scaleName); t != nil {
		s, err := graph.Floats(t)
		if err != nil {
			return fmt.Errorf("quantizer %s: scale: %w", name, err)
		}
		q.scale, q.scaleDims = append([]float32(nil), s...), t.Dims
	} else {
		div := m.Producer(scaleName)
		if q.view != nil && div != nil && div.OpType == "Reshape" {
			// The view's scale; the 2-D one it reshapes is the weight's.
			q.scaleOps = append(q.scaleOps, div)
			div = m.Producer(div.Input[0])
		}
		var perm []int64 // a tied transposed weight reads its twin's scale transposed
		if div != nil && div.OpType == "Transpose" {
			perm = graph.IntsAttr(div, "perm")
			q.scaleOps = append(q.scaleOps, div)
			div = m.Producer(div.Input[0])
		}
		if div == nil || div.OpType != "Div" {
			return fmt.Errorf("quantizer %s: scale %q is neither a constant nor Div(Max(clip, tiny), qmax); the model is not a qatc QAT model", name, scaleName)
		}
		mx := m.Producer(div.Input[0])
		qmaxT := m.Const(div.Input[1])
		if mx == nil || mx.OpType != "Max" || len(mx.Input) != 2 || qmaxT == nil {
			return fmt.Errorf("quantizer %s: scale %q is not Div(Max(clip, tiny), qmax); the model is not a qatc QAT model", name, scaleName)
		}
		clip, tiny := mx.Input[0], mx.Input[1]
		if m.Initializer(clip) == nil || numElements(m.Const(clip)) < numElements(m.Const(tiny)) {
			clip, tiny = tiny, clip
		}
		clipT, tinyT := m.Initializer(clip), m.Const(tiny)
		if clipT == nil || tinyT == nil {
			return fmt.Errorf("quantizer %s: Max %s needs a clip initializer and a constant; the model is not a qatc QAT model", name, graph.NodeName(mx))
		}
		cv, err := graph.Floats(clipT)
		if err != nil {
			return fmt.Errorf("quantizer %s: clip: %w", name, err)
		}
		tv, err1 := graph.Floats(tinyT)
		qv, err2 := graph.Floats(qmaxT)
		if err1 != nil || err2 != nil || len(tv) != 1 || len(qv) != 1 {
			return fmt.Errorf("quantizer %s: tiny %q and qmax %q must be float scalars", name, tiny, div.Input[1])
		}
		// The same float32 operations the QAT graph runs, so the folded
		// scale is bit-identical to the one training saw.
		q.scale = make([]float32, len(cv))
		for i, c := range cv {
			q.scale[i] = max32(c, tv[0]) / qv[0]
		}
		q.scaleDims = clipT.Dims
		if perm != nil && len(clipT.Dims) > 1 {
			// The clip is laid out [C, K/block]; a weight stored [K, C]
			// reads it through a Transpose.
			q.scale, q.scaleDims = graph.Transpose(q.scale, clipT.Dims, perm)
		}
		q.clipInit = clip
		q.scaleOps = append(q.scaleOps, div, mx)
		if qv[0] <= 0 || qv[0] != float32(math.Round(float64(qv[0]))) {
			return fmt.Errorf("quantizer %s: qmax %v is not a positive integer", name, qv[0])
		}
		q.bits = bitsFromQmax(int64(qv[0]), q.signed())
	}
	for _, s := range q.scale {
		if !(s > 0) || math.IsInf(float64(s), 0) {
			return fmt.Errorf("quantizer %s: scale %v is not positive and finite; set the clip %q to a positive value", name, s, q.clipInit)
		}
	}

	switch {
	case q.clipInit == "" && !q.signed():
		q.kind = KindSoftmax
		q.bits = int(math.Round(-math.Log2(float64(q.scale[0]))))
	case !q.signed():
		q.kind = KindRelu
	case q.isWeight(m):
		q.kind = KindWeight
	default:
		q.kind = KindAct
	}
	if q.bits == 0 {
		// A fixed signed scale: the bits are what the integer range holds.
		q.bits = bitsFromRange(q.lo, q.hi)
	}
	if q.bits < 2 || q.bits > 8 {
		return fmt.Errorf("quantizer %s: %d bits; qatc exports 2 to 8 bits", name, q.bits)
	}
	return nil
}

func (q *quantizer) signed() bool { return q.zpType == graph.Int8 || q.zpType == graph.Int4 }

// isWeight reports whether q's input is a constant (an initializer, maybe
// read through Constant or Transpose).
func (q *quantizer) isWeight(m *graph.Model) bool {
	_, _, err := constFloats(m, q.tensor)
	return err == nil
}

// bitsFromQmax inverts qmax = 2^(bits-1)-1 (signed) or 2^bits-1.
func bitsFromQmax(qmax int64, signed bool) int {
	b := 0
	for int64(1)<<b <= qmax {
		b++
	}
	if signed {
		b++
	}
	return b
}

// bitsFromRange counts the bits an integer range [lo, hi] spans.
func bitsFromRange(lo, hi int64) int {
	b := 0
	for int64(1)<<b < hi-lo+1 {
		b++
	}
	return b
}

func max32(a, b float32) float32 {
	if a >= b {
		return a
	}
	return b
}

// numElements returns t's element count (0 for nil).
func numElements(t *onnx.TensorProto) int64 {
	if t == nil {
		return 0
	}
	return graph.NumElements(t.Dims)
}

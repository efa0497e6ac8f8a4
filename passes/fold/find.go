package fold

import (
	"fmt"
	"math"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/passes/quantize"
)

// quantizer is one fake quantizer of a QAT graph (quantize.Unit) with
// what folding needs beyond the form: its scale evaluated, and the axis
// and block size as the QuantizeLinear writes them.
type quantizer struct {
	*quantize.Unit
	scale     []float32 // the scale the QAT graph computes, folded
	scaleDims []int64
	axis      int64 // Q's axis attribute as written (default 1); the weight's own behind a view
	blockSize int64
}

// perTensor reports whether q has one scale for the whole tensor.
func (q *quantizer) perTensor() bool { return len(q.scale) == 1 && q.blockSize == 0 }

// findQuantizers lists the graph's quantizers (quantize.Units) with their
// scales evaluated. A QuantizeLinear whose integers anything but its own
// DequantizeLinear reads (an already-exported graph) is not a quantizer.
func findQuantizers(m *graph.Model) ([]*quantizer, error) {
	us, err := quantize.Units(m)
	if err != nil {
		return nil, err
	}
	var qs []*quantizer
	for _, u := range us {
		if !exclusive(m, u) {
			continue
		}
		q := &quantizer{Unit: u, axis: graph.IntAttr(u.Q, "axis", 1), blockSize: graph.IntAttr(u.Q, "block_size", 0)}
		if u.View != nil {
			q.axis = int64(u.View.Axis)
		}
		if err := q.resolve(m); err != nil {
			return nil, err
		}
		qs = append(qs, q)
	}
	return qs, nil
}

// exclusive reports whether u's integers are read by its own chain only.
func exclusive(m *graph.Model, u *quantize.Unit) bool {
	next := u.DQ
	if u.Clamp != nil {
		next = u.Clamp
		if c := m.Consumers(u.Clamp.Output[0]); len(c) != 1 || m.IsGraphOutput(u.Clamp.Output[0]) {
			return false
		}
	}
	c := m.Consumers(u.Q.Output[0])
	return len(c) == 1 && c[0] == next && !m.IsGraphOutput(u.Q.Output[0])
}

// resolve checks that q is a quantizer an export can store (symmetric,
// 8 or 4-bit integers, 2 to 8 bits, a clip initializer) and evaluates its
// scale with the QAT graph's own float32 arithmetic.
func (q *quantizer) resolve(m *graph.Model) error {
	name := graph.NodeName(q.Q)
	for _, z := range q.ZeroPoints {
		if z != 0 {
			return fmt.Errorf("quantizer %s: zero point %d is not 0; qatc's quantizers are symmetric, re-insert the quantizer with passes/quantize", name, z)
		}
	}
	switch q.Type {
	case graph.Int8, graph.Uint8, graph.Int4, graph.Uint4:
	default:
		return fmt.Errorf("quantizer %s: %s integers are not supported; use int8/uint8 (or int4/uint4) zero points", name, q.Type)
	}
	if q.Clip == "" {
		t := m.Const(q.Scale)
		s, err := graph.Floats(t)
		if err != nil {
			return fmt.Errorf("quantizer %s: scale: %w", name, err)
		}
		q.scale, q.scaleDims = append([]float32(nil), s...), t.Dims
	} else {
		clipT, tinyT := m.Initializer(q.Clip), m.Const(q.Tiny)
		if q.Tiny == "" {
			return fmt.Errorf("quantizer %s: scale %q is not Div(Max(clip, tiny), qmax); the model is not a qatc QAT model", name, q.Scale)
		}
		if clipT == nil || tinyT == nil {
			return fmt.Errorf("quantizer %s: the scale's Max needs a clip initializer and a constant; the model is not a qatc QAT model", name)
		}
		cv, err := graph.Floats(clipT)
		if err != nil {
			return fmt.Errorf("quantizer %s: clip: %w", name, err)
		}
		tv, err1 := graph.Floats(tinyT)
		qv, err2 := graph.Floats(m.Const(q.QMax))
		if err1 != nil || err2 != nil || len(tv) != 1 || len(qv) != 1 {
			return fmt.Errorf("quantizer %s: tiny %q and qmax %q must be float scalars", name, q.Tiny, q.QMax)
		}
		// The same float32 operations the QAT graph runs, so the folded
		// scale is bit-identical to the one training saw.
		q.scale = make([]float32, len(cv))
		for i, c := range cv {
			q.scale[i] = max(c, tv[0]) / qv[0]
		}
		q.scaleDims = clipT.Dims
		if q.ClipPerm != nil && len(clipT.Dims) > 1 {
			// The clip is laid out [C, K/block]; a weight stored [K, C]
			// reads it through a Transpose.
			q.scale, q.scaleDims = graph.Transpose(q.scale, clipT.Dims, q.ClipPerm)
		}
	}
	for _, s := range q.scale {
		if !(s > 0) || math.IsInf(float64(s), 0) {
			return fmt.Errorf("quantizer %s: scale %v is not positive and finite; set the clip %q to a positive value", name, s, q.Clip)
		}
	}
	if q.Bits < 2 || q.Bits > 8 {
		return fmt.Errorf("quantizer %s: %d bits; qatc exports 2 to 8 bits", name, q.Bits)
	}
	return nil
}

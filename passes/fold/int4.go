package fold

import (
	"fmt"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
)

// Opsets of the 4-bit forms.
const (
	// OpsetInt4 is the default-domain opset that defines the INT4/UINT4
	// types in QuantizeLinear/DequantizeLinear (and their block_size).
	OpsetInt4 = 21
)

// Int4Result says what Int4 did.
type Int4Result struct {
	// Converted lists the weights now stored as INT4/UINT4.
	Converted []string
	// Unraised says why the model's opset could not be raised to
	// OpsetInt4; the weights then stay int8 (nil otherwise).
	Unraised error
}

// Int4 stores the 4-bit (and narrower) weights of a folded model as ONNX
// INT4 (UINT4 for unsigned ones) initializers, two values a byte, low
// nibble first, read by DequantizeLinear without a zero point (0, of the
// integers' type). The values are Fold's integers, unchanged. A weight
// qualifies when only DequantizeLinear nodes read its integers: an
// embedding table that is gathered or transposed as integers (tied
// embeddings) stays int8, as Gather and Transpose do not take 4-bit
// tensors in onnxruntime.
//
// When a weight qualifies, the model is raised to opset OpsetInt4 (where
// ONNX defines the types in DequantizeLinear) with RaiseOpset; when that is
// impossible, nothing changes and Unraised says why.
func Int4(m *graph.Model, r *Result) (*Int4Result, error) {
	type cand struct {
		f    *Folded
		t    *onnx.TensorProto
		uses []*onnx.NodeProto
	}
	var cands []cand
	for i := range r.Quantizers {
		f := &r.Quantizers[i]
		if f.Kind != quantize.KindWeight || f.Bits > 4 || f.Int == "" {
			continue
		}
		t := m.Initializer(f.Int)
		if t == nil || m.IsGraphOutput(f.Int) {
			continue
		}
		if dt := graph.TensorType(t); dt != graph.Int8 && dt != graph.Uint8 {
			continue
		}
		uses := m.Consumers(f.Int)
		ok := len(uses) > 0
		for _, c := range uses {
			ok = ok && isDequantize(c) && c.Input[0] == f.Int && c.Input[1] != f.Int
		}
		if ok {
			cands = append(cands, cand{f, t, uses})
		}
	}
	res := &Int4Result{}
	if len(cands) == 0 {
		return res, nil
	}
	if err := m.RaiseOpset(OpsetInt4); err != nil {
		res.Unraised = err
		return res, nil
	}
	for _, c := range cands {
		vals, err := graph.Int64s(c.t)
		if err != nil {
			return nil, fmt.Errorf("weight %q: %w", c.f.Tensor, err)
		}
		signed := graph.TensorType(c.t) == graph.Int8
		packed, err := pack4(vals, signed)
		if err != nil {
			return nil, fmt.Errorf("weight %q: %w", c.f.Tensor, err)
		}
		c.t.RawData, c.t.Int32Data = packed, nil
		c.t.DataType = int32(graph.Uint4)
		if signed {
			c.t.DataType = int32(graph.Int4)
		}
		for _, d := range c.uses {
			// The zero point is 0 (Fold checked it) and would have to be
			// 4-bit too; without it DequantizeLinear uses 0 of x's type.
			if len(d.Input) > 2 {
				d.Input = d.Input[:2]
			}
		}
		res.Converted = append(res.Converted, c.f.Tensor)
	}
	m.Reindex()
	m.RemoveDead()
	return res, nil
}

// pack4 packs integers two to a byte, the first in the low nibble, as
// ONNX stores INT4 (signed) and UINT4 tensors.
func pack4(v []int64, signed bool) ([]byte, error) {
	lo, hi := int64(0), int64(15)
	if signed {
		lo, hi = -8, 7
	}
	out := make([]byte, (len(v)+1)/2)
	for i, x := range v {
		if x < lo || x > hi {
			return nil, fmt.Errorf("value %d at %d is outside the 4-bit range [%d, %d]", x, i, lo, hi)
		}
		out[i/2] |= byte(x&0xF) << (4 * (i % 2))
	}
	return out, nil
}

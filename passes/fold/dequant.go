package fold

import (
	"fmt"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// The folded form is what Fold writes and every format rewrite, the
// export's check and inspect read: a weight is an integer initializer
// read by a DequantizeLinear with a constant scale, directly or through
// data movement (quantize.Sinkable), or (after QOperator, Dynamic,
// MatMulNBits) by an integer kernel; an activation keeps its
// QuantizeLinear → DequantizeLinear pair with a constant scale. This file
// reads it; the writers beside it emit it.

// dequantize appends the DequantizeLinear name(ins) -> outs: the one place
// fold's writers (and Unfold, their inverse) emit the op.
func dequantize(m *graph.Model, name string, ins, outs []string, attrs ...*onnx.AttributeProto) *onnx.NodeProto {
	return m.Op("DequantizeLinear", name, ins, outs, attrs...)
}

// soleUse returns v's only consumer when it is an op node and v is not
// also a graph output: the one reader a rewrite may fold v into.
func soleUse(m *graph.Model, v, op string) *onnx.NodeProto {
	c := m.Consumers(v)
	if len(c) != 1 || c[0].OpType != op || m.IsGraphOutput(v) {
		return nil
	}
	return c[0]
}

// isDequantize reports whether n is a DequantizeLinear.
func isDequantize(n *onnx.NodeProto) bool {
	return n != nil && n.OpType == "DequantizeLinear" && (n.Domain == "" || n.Domain == "ai.onnx")
}

// A Dequantized is a value of the folded form that a DequantizeLinear
// with a constant scale makes.
type Dequantized struct {
	Node *onnx.NodeProto
	// Ints is the DequantizeLinear's integer input; Stored the integer
	// initializer it is, or whose 2-D Transpose it is (Transposed), and nil
	// for an activation's integers or other data movement.
	Ints       string
	Stored     *onnx.TensorProto
	Transposed bool
	Scale      []float32
	ZeroPoint  string // "" for the default (uint8 0)
	Axis       int64  // normalized when the rank is known
	Rank       int    // of the integers; -1 when unknown
	BlockSize  int64
}

// DequantizedAt returns what makes v when a DequantizeLinear with a
// constant scale does, else nil.
func DequantizedAt(m *graph.Model, v string) (*Dequantized, error) {
	d := m.Producer(v)
	if !isDequantize(d) || len(d.Input) < 2 {
		return nil, nil
	}
	st := m.Const(d.Input[1])
	if st == nil {
		return nil, nil
	}
	s, err := graph.Floats(st)
	if err != nil {
		return nil, fmt.Errorf("DequantizeLinear %s: scale: %w", graph.NodeName(d), err)
	}
	o := &Dequantized{Node: d, Ints: d.Input[0], Scale: s, Axis: graph.IntAttr(d, "axis", 1), Rank: -1, BlockSize: graph.IntAttr(d, "block_size", 0)}
	if len(d.Input) > 2 {
		o.ZeroPoint = d.Input[2]
	}
	if o.Rank = intRank(m, o.Ints); o.Rank >= 0 && o.Axis < 0 {
		o.Axis += int64(o.Rank)
	}
	o.Stored = m.Initializer(o.Ints)
	if t := m.Producer(o.Ints); o.Stored == nil && t != nil && t.OpType == "Transpose" && len(t.Input) > 0 {
		if w := m.Initializer(t.Input[0]); w != nil && len(w.Dims) == 2 {
			o.Stored, o.Transposed = w, true
		}
	}
	return o, nil
}

// ScaleIndex maps each element of the integers, laid out with dims, to
// its scale.
func (o *Dequantized) ScaleIndex(dims []int64) (func(int) int, error) {
	return ScaleIndex(dims, len(o.Scale), o.Axis, o.BlockSize)
}

// dequantized is DequantizedAt for an integer product's operand, which
// takes one scale per tensor or per output column.
func dequantized(m *graph.Model, v string) (*Dequantized, error) {
	o, err := DequantizedAt(m, v)
	if err == nil && o != nil && o.BlockSize > 0 {
		return o, fmt.Errorf("tensor %q is quantized per block; MatMulInteger takes one scale per tensor or per output column: export with --format qdq, or re-insert per-channel", v)
	}
	return o, err
}

// perColumn reports whether o's scale is per tensor or per output column
// (the last axis of a matrix B), the two forms an integer MatMul can
// apply after accumulating.
func (o *Dequantized) perColumn() bool {
	return len(o.Scale) == 1 || (o.Rank >= 2 && o.Axis == int64(o.Rank-1))
}

// storedInts reports whether v is stored integers (an initializer, or data
// movement over one) rather than a quantized activation.
func storedInts(m *graph.Model, v string) bool {
	for {
		if m.Initializer(v) != nil {
			return true
		}
		p := m.Producer(v)
		if p == nil || !movable(p.OpType) {
			return false
		}
		v = p.Input[0]
	}
}

// intRank returns the rank of stored integers v (an initializer, or
// Slice/Transpose over one), or -1.
func intRank(m *graph.Model, v string) int {
	for {
		if t := m.Initializer(v); t != nil {
			return len(t.Dims)
		}
		p := m.Producer(v)
		if p == nil || (p.OpType != "Slice" && p.OpType != "Transpose") {
			return -1
		}
		v = p.Input[0]
	}
}

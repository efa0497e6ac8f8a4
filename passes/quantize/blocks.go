package quantize

import (
	"slices"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// A weight quantized per block is fake-quantized on a view of itself in
// which the blocks are an axis of their own: a weight [K, C] with blocks
// of B along K is reshaped to [K/B, B, C], quantized with the scale laid
// out [K/B, 1, C] (block_size B along the middle axis, so every block of
// the view is one whole axis), dequantized and reshaped back:
//
//	W ─▶ Reshape [K/B, B, C] ─▶ QuantizeLinear ─▶ [Clip] ─▶ DequantizeLinear ─▶ Reshape [K, C] ─▶ consumers
//
// The numbers are those of the plain blocked pair on W. The form exists
// for onnxruntime (1.30), whose optimizers mishandle blocked
// quantization: at its default level a blocked DequantizeLinear of 8-bit
// integers that feeds a MatMul next to a dequantized activation is fused
// into MatMulIntegerToFloat, whose kernel rejects per-block scales, and
// its transpose optimizer pushes a Transpose through a blocked
// QuantizeLinear (as in the training graph of a tied, transposed copy)
// without transposing the scale. Behind the Reshapes neither applies, so
// a QAT model runs in any onnxruntime session at its default level.

// BlockView describes the view of a weight quantized per block.
type BlockView struct {
	// Dims are the weight's dims with the blocked axis split into
	// [dim/block, block].
	Dims []int64
	// ScaleDims are the dims of the scale in the view: the weight's dims
	// with the blocked axis split into [dim/block, 1].
	ScaleDims []int64
	// Axis is the QuantizeLinear/DequantizeLinear axis in the view (the
	// weight's blocked axis + 1).
	Axis int
}

// NewBlockView returns the view of a weight of dims quantized in blocks
// of block along axis (which dims[axis] is a multiple of).
func NewBlockView(dims []int64, axis, block int) *BlockView {
	n := dims[axis] / int64(block)
	v := &BlockView{Axis: axis + 1}
	v.Dims = slices.Concat(dims[:axis], []int64{n, int64(block)}, dims[axis+1:])
	v.ScaleDims = slices.Concat(dims[:axis], []int64{n, 1}, dims[axis+1:])
	return v
}

// BlockedPair is a blocked quantizer in the view form, as FindBlockView
// reads it from a graph.
type BlockedPair struct {
	// In reshapes the weight into the view; Out reshapes the
	// dequantized view back.
	In, Out *onnx.NodeProto
	// Weight is the quantized value (In's input) and Axis its blocked
	// axis; Block is the block size.
	Weight string
	Axis   int
	Block  int
}

// FindBlockView returns the view around the quantizer pair q → [Clip] →
// dq, or nil when the pair is not a blocked quantizer in the view form:
// q reads a Reshape that splits one axis of the weight into [n, block],
// q and dq quantize along the block axis, and dq feeds only a Reshape
// back to the weight's dims.
func FindBlockView(m *graph.Model, q, dq *onnx.NodeProto) *BlockedPair {
	block := graph.IntAttr(q, "block_size", 0)
	if block <= 0 || len(q.Input) == 0 || len(dq.Output) == 0 || m.IsGraphOutput(dq.Output[0]) {
		return nil
	}
	in := m.Producer(q.Input[0])
	users := m.Consumers(dq.Output[0])
	if in == nil || in.OpType != "Reshape" || len(in.Input) < 2 || len(users) != 1 {
		return nil
	}
	out := users[0]
	if out.OpType != "Reshape" || len(out.Input) < 2 || out.Input[0] != dq.Output[0] {
		return nil
	}
	view, ok1 := m.ConstInts(in.Input[1])
	dims, ok2 := m.ConstInts(out.Input[1])
	if !ok1 || !ok2 || len(view) != len(dims)+1 {
		return nil
	}
	axis := int(graph.IntAttr(q, "axis", 1))
	if axis < 0 {
		axis += len(view)
	}
	a := axis - 1
	if a < 0 || a >= len(dims) || dims[a] < 0 || !slices.Equal(view, NewBlockView(dims, a, int(block)).Dims) {
		return nil
	}
	return &BlockedPair{In: in, Out: out, Weight: in.Input[0], Axis: a, Block: int(block)}
}

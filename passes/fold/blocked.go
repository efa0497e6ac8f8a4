package fold

import (
	"slices"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
	"google.golang.org/protobuf/proto"
)

// GuardBlocked puts the blocked view of passes/quantize (see
// quantize.BlockView) around every stored weight of 8-bit integers
// (int8/uint8, at any bit width up to 8) that a blocked DequantizeLinear
// feeds into a MatMul or Gemm, and returns their names. onnxruntime 1.30
// fuses such a pair into MatMulIntegerToFloat at its default optimization
// level, and that kernel rejects per-block scales when it runs; behind the
// view's Reshape it does not. The integers, the scale and the zero point
// are stored in the view's shape (the same bytes), so the file holds no
// more than before. INT4/UINT4 weights are left alone: onnxruntime reads
// those correctly (and fuses them into MatMulNBits where it can).
func GuardBlocked(m *graph.Model) ([]string, error) {
	var guarded []string
	for _, d := range append([]*onnx.NodeProto(nil), m.Graph().Node...) {
		if !isDequantize(d) || len(d.Input) < 2 || len(d.Output) == 0 || m.IsGraphOutput(d.Output[0]) {
			continue
		}
		block := graph.IntAttr(d, "block_size", 0)
		x := m.Initializer(d.Input[0])
		if block <= 0 || x == nil {
			continue
		}
		if dt := graph.TensorType(x); dt != graph.Int8 && dt != graph.Uint8 {
			continue
		}
		feedsProduct := slices.ContainsFunc(m.Consumers(d.Output[0]), func(c *onnx.NodeProto) bool {
			return c.OpType == "MatMul" || c.OpType == "Gemm"
		})
		axis := int(graph.IntAttr(d, "axis", 1))
		if axis < 0 {
			axis += len(x.Dims)
		}
		if !feedsProduct || axis < 0 || axis >= len(x.Dims) || x.Dims[axis]%block != 0 {
			continue
		}
		dims := slices.Clone(x.Dims)
		v := quantize.NewBlockView(dims, axis, int(block))
		for i, want := range [][]int64{v.Dims, v.ScaleDims, v.ScaleDims} {
			if i < len(d.Input) && d.Input[i] != "" {
				m.ReplaceInput(d, i, reshaped(m, d.Input[i], want))
			}
		}
		for _, a := range d.Attribute {
			if a.Name == "axis" {
				a.I = int64(v.Axis)
			}
		}
		if graph.Attr(d, "axis") == nil {
			d.Attribute = append(d.Attribute, graph.AttrInt("axis", int64(v.Axis)))
		}
		out := d.Output[0]
		blocks := m.UniqueName(out + "/blocks")
		d.Output[0] = blocks
		shape := m.AddInitializer(graph.Int64Tensor(m.UniqueName(out+"/shape"), []int64{int64(len(dims))}, dims))
		m.Reindex()
		m.Op("Reshape", m.UniqueName(out+"/unblock"), []string{blocks, shape}, []string{out})
		guarded = append(guarded, x.Name)
	}
	if len(guarded) > 0 {
		if err := m.TopoSort(); err != nil {
			return nil, err
		}
	}
	return guarded, nil
}

// reshaped returns an initializer holding name's data with dims: name
// itself when nothing else reads it, else a copy.
func reshaped(m *graph.Model, name string, dims []int64) string {
	t := m.Initializer(name)
	if len(m.Consumers(name)) > 1 || m.IsGraphOutput(name) {
		c := proto.Clone(t).(*onnx.TensorProto)
		c.Name = m.UniqueName(name + "/blocks")
		t = c
		m.AddInitializer(t)
	}
	t.Dims = slices.Clone(dims)
	return t.Name
}

// unguardBlocked undoes GuardBlocked for Unfold: a blocked
// DequantizeLinear of stored integers in the view's shape, read only by
// the Reshape back to the weight's shape, reads the integers, the scale
// and the zero point in the weight's own layout again and makes the
// Reshape's output itself.
func unguardBlocked(m *graph.Model) {
	for _, d := range slices.Clone(m.Graph().Node) {
		block := graph.IntAttr(d, "block_size", 0)
		if !isDequantize(d) || block <= 0 || len(d.Input) < 2 {
			continue
		}
		x, reshape := m.Initializer(d.Input[0]), soleUse(m, d.Output[0], "Reshape")
		if x == nil || reshape == nil || reshape.Input[0] != d.Output[0] {
			continue
		}
		dims, ok := m.ConstInts(reshape.Input[1])
		axis := graph.IntAttr(d, "axis", 1)
		if axis < 0 {
			axis += int64(len(x.Dims))
		}
		if !ok || axis < 1 || len(dims)+1 != len(x.Dims) || slices.Contains(dims, -1) || dims[axis-1]%block != 0 {
			continue
		}
		v := quantize.NewBlockView(dims, int(axis-1), int(block))
		if !slices.Equal(v.Dims, x.Dims) {
			continue
		}
		sdims := slices.Concat(dims[:axis-1], []int64{dims[axis-1] / block}, dims[axis:])
		for i, want := range [][]int64{dims, sdims, sdims} {
			if i < len(d.Input) && d.Input[i] != "" && m.Initializer(d.Input[i]) != nil {
				m.ReplaceInput(d, i, reshaped(m, d.Input[i], want))
			}
		}
		for _, a := range d.Attribute {
			if a.Name == "axis" {
				a.I = axis - 1
			}
		}
		out := reshape.Output[0]
		m.RemoveNodes(reshape)
		d.Output[0] = out
		m.Reindex()
	}
}

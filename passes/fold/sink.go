package fold

import (
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
	"google.golang.org/protobuf/proto"
)

// movable reports whether a weight's DequantizeLinear can move past op
// (quantize.Sinkable): data movement commutes with an elementwise affine
// map as long as the scale moves with its channel.
func movable(op string) bool { return quantize.Moves(op, quantize.Sinkable) }

// sinkDequantize moves weight DequantizeLinear nodes after the data
// movement that reads them, until each feeds compute directly. Per-tensor
// scales move past any movable op; per-channel ones past a Transpose (the
// axis follows), a Gather along another axis (the axis is then counted
// from the back) and a Slice (cutting the channel axis cuts the scales
// alike).
func sinkDequantize(m *graph.Model, res *Result) {
	byInt := map[string]*Folded{}
	for i := range res.Quantizers {
		if f := &res.Quantizers[i]; f.Int != "" {
			byInt[f.Int] = f
		}
	}
	for {
		moved := false
		for _, d := range m.Graph().Node {
			if !isDequantize(d) || !storedInts(m, d.Input[0]) {
				continue
			}
			for _, c := range m.Consumers(d.Output[0]) {
				if sinkPast(m, d, c, byInt) {
					moved = true
					break
				}
			}
			if moved {
				break
			}
		}
		if !moved {
			return
		}
	}
}

// sinkPast rewrites c(DQ(x)) as DQ(c(x)) when c moves data only and the
// scale can follow; it reports whether it did.
func sinkPast(m *graph.Model, d, c *onnx.NodeProto, byInt map[string]*Folded) bool {
	v := d.Output[0]
	if !movable(c.OpType) || c.Input[0] != v || m.IsGraphOutput(v) {
		return false
	}
	for _, in := range c.Input[1:] {
		if in == v {
			return false
		}
	}
	scale := m.Const(d.Input[1])
	if scale == nil || graph.IntAttr(d, "block_size", 0) > 0 {
		return false
	}
	src := d.Input[0]
	init := m.Initializer(src)
	perTensor := graph.NumElements(scale.Dims) == 1
	axis := graph.IntAttr(d, "axis", 1)
	qparams := d.Input[1:]
	if !perTensor {
		r := int64(intRank(m, src))
		if r < 0 {
			return false
		}
		if axis < 0 {
			axis += r
		}
		switch c.OpType {
		case "Transpose":
			for i, p := range transposePerm(c, int(r)) {
				if p == axis {
					axis = int64(i)
					break
				}
			}
		case "Gather":
			g := graph.IntAttr(c, "axis", 0)
			if g < 0 {
				g += r
			}
			switch {
			case axis == g:
				return false
			case axis > g:
				// Indices of unknown rank replace axis g; the channel
				// axis keeps its place counted from the back.
				axis -= r
			}
		case "Slice":
			axes, ok := sliceAxes(m, c, r)
			if !ok {
				return false
			}
			cut := false
			for _, a := range axes {
				cut = cut || a == axis
			}
			if cut && len(axes) != 1 {
				return false
			}
			if cut {
				// Slicing the channel axis slices the scales (and zero
				// points) alike.
				qparams = nil
				one := m.AddInitializer(graph.Int64Tensor(m.UniqueName(c.Output[0]+"_channel_axes"), []int64{1}, []int64{0}))
				for _, p := range d.Input[1:] {
					if p == "" {
						qparams = append(qparams, p)
						continue
					}
					ins := []string{p, c.Input[1], c.Input[2], one}
					if len(c.Input) > 4 {
						ins = append(ins, c.Input[4])
					}
					out := m.UniqueName(p + "_sliced")
					m.Op("Slice", m.UniqueName(c.Name+"_"+p), ins, []string{out})
					qparams = append(qparams, out)
				}
			}
		default:
			return false
		}
	}

	out := c.Output[0]
	var x string
	// A Transpose of integers that nothing else reads is evaluated: the
	// integers are stored transposed. A shared table (tied embeddings)
	// keeps one copy and an integer Transpose, which onnxruntime folds at
	// load time.
	sole := len(m.Consumers(src)) == 1 && len(m.Consumers(v)) == 1
	if c.OpType == "Transpose" && sole && init != nil && (graph.TensorType(init) == graph.Int8 || graph.TensorType(init) == graph.Uint8) {
		perm := transposePerm(c, len(init.Dims))
		data, dims := graph.Transpose(init.RawData, init.Dims, perm)
		x = m.UniqueName(src + "_transposed")
		m.AddInitializer(&onnx.TensorProto{Name: x, Dims: dims, DataType: init.DataType, RawData: data})
		if f := byInt[src]; f != nil {
			f.Int, f.Axis = x, axis
			if f.Perm == nil {
				f.Perm = perm
			} else {
				p := make([]int64, len(perm))
				for i := range perm {
					p[i] = f.Perm[perm[i]]
				}
				f.Perm = p
			}
			byInt[x] = f
		}
	} else {
		moved := proto.Clone(c).(*onnx.NodeProto)
		x = m.UniqueName(out + "_quantized")
		moved.Input[0], moved.Output = src, []string{x}
		moved.Name = m.UniqueName(c.Name + "_quantized")
		m.AddNode(moved)
	}
	attrs := []*onnx.AttributeProto{}
	if !perTensor {
		attrs = append(attrs, graph.AttrInt("axis", axis))
	}
	m.RemoveNodes(c)
	m.Op("DequantizeLinear", m.UniqueName(out+"/dequantize"), append([]string{x}, qparams...), []string{out}, attrs...)
	return true
}

// sliceAxes returns the (normalized) axes a Slice cuts, when they are
// constant.
func sliceAxes(m *graph.Model, c *onnx.NodeProto, rank int64) ([]int64, bool) {
	var axes []int64
	if len(c.Input) > 3 && c.Input[3] != "" {
		t := m.Const(c.Input[3])
		if t == nil {
			return nil, false
		}
		v, err := graph.Int64s(t)
		if err != nil {
			return nil, false
		}
		axes = v
	} else {
		t := m.Const(c.Input[1])
		if t == nil {
			return nil, false
		}
		for i := range graph.NumElements(t.Dims) {
			axes = append(axes, i)
		}
	}
	for i, a := range axes {
		if a < 0 {
			axes[i] = a + rank
		}
	}
	return axes, true
}

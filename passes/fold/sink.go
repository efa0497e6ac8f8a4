package fold

import (
	"slices"
	"strings"

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
	dequantize(m, m.UniqueName(out+"/dequantize"), append([]string{x}, qparams...), []string{out}, attrs...)
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

// untranspose undoes, for Unfold, the transposed storage of a 2-D weight:
// sinkPast's (a DequantizeLinear moved past the Transpose that read it)
// and transposedInts' (Gemm's transB copy). Each DequantizeLinear of the
// integers <ints>_transposed reads <ints> again, in their own layout.
// Where nothing else holds <ints>, they are the copy transposed back and
// a float Transpose after the DequantizeLinear makes its value (either
// writer folds that into the same file). Where <ints> are kept for other
// readers (a tied table's lookups), only transposedInts made the copy:
// the MatMul reading it, and its bias Add, become the Gemm with transB.
// It returns nothing: what it cannot undo is left, and Unfold names it.
func untranspose(m *graph.Model) {
	for _, t := range slices.Clone(m.Graph().Initializer) {
		i := strings.LastIndex(t.Name, "_transposed")
		if i < 0 || len(t.Dims) != 2 || (graph.TensorType(t) != graph.Int8 && graph.TensorType(t) != graph.Uint8) {
			continue
		}
		uses := m.Consumers(t.Name)
		ok := len(uses) > 0 && !m.IsGraphOutput(t.Name)
		for _, d := range uses {
			ok = ok && isDequantize(d) && d.Input[0] == t.Name && graph.IntAttr(d, "block_size", 0) == 0 && !slices.Contains(d.Input[1:], t.Name)
		}
		if !ok {
			continue
		}
		data, dims := graph.Transpose(t.RawData, t.Dims, []int64{1, 0})
		plain := t.Name[:i]
		p := m.Initializer(plain)
		switch {
		case p == nil && !m.HasName(plain):
			m.AddInitializer(&onnx.TensorProto{Name: plain, Dims: dims, DataType: t.DataType, RawData: data})
		case p == nil || p.DataType != t.DataType || !slices.Equal(p.Dims, dims) || !slices.Equal(p.RawData, data):
			continue
		}
		for _, d := range uses {
			if graph.NumElements(m.Const(input(d, 1)).GetDims()) > 1 {
				ax := graph.IntAttr(d, "axis", 1)
				if ax < 0 {
					ax += 2
				}
				d.Attribute = slices.DeleteFunc(d.Attribute, func(a *onnx.AttributeProto) bool { return a.Name == "axis" })
				d.Attribute = append(d.Attribute, graph.AttrInt("axis", 1-ax))
			}
			out := d.Output[0]
			d.Output[0] = m.UniqueName(plain + "/dequantized")
			m.ReplaceInput(d, 0, plain)
			m.Reindex()
			if p == nil || !gemmTransB(m, out, d.Output[0], t.Dims[1]) {
				m.Op("Transpose", m.UniqueName(out+"/Transpose"), []string{d.Output[0]}, []string{out}, graph.AttrInts("perm", 1, 0))
			}
		}
	}
}

// gemmTransB rewrites the MatMul that reads b (the only reader) as its
// right operand, and the Add of an n-element constant bias after it,
// into Gemm(a, bt, bias) with transB; it reports whether it did.
func gemmTransB(m *graph.Model, b, bt string, n int64) bool {
	uses := m.Consumers(b)
	if len(uses) != 1 || uses[0].OpType != "MatMul" || uses[0].Input[1] != b || uses[0].Input[0] == b || m.IsGraphOutput(b) {
		return false
	}
	mm := uses[0]
	ins, out := []string{mm.Input[0], bt}, mm.Output[0]
	dead := []*onnx.NodeProto{mm}
	if adds := m.Consumers(out); len(adds) == 1 && adds[0].OpType == "Add" && !m.IsGraphOutput(out) {
		add := adds[0]
		c := add.Input[1]
		if c == out {
			c = add.Input[0]
		}
		if t := m.Const(c); t != nil && len(t.Dims) == 1 && t.Dims[0] == n && c != out {
			ins, out = append(ins, c), add.Output[0]
			dead = append(dead, add)
		}
	}
	m.RemoveNodes(dead...)
	m.Op("Gemm", mm.Name, ins, []string{out}, graph.AttrInt("transB", 1))
	return true
}

// unsliced returns the constant that the scale or zero point v of a
// DequantizeLinear moved past data movement (chain, from the integers
// on) holds before sinkPast sliced it alike with a Slice of the channel
// axis: v itself when it is a constant, else nil.
func unsliced(m *graph.Model, v string, chain []*onnx.NodeProto) *onnx.TensorProto {
	if t := m.Const(v); t != nil {
		return t
	}
	s := m.Producer(v)
	if s == nil || s.OpType != "Slice" || len(s.Input) < 4 {
		return nil
	}
	axes, ok := m.ConstInts(s.Input[3])
	if !ok || !slices.Equal(axes, []int64{0}) {
		return nil
	}
	for _, c := range chain {
		if c.OpType == "Slice" && len(c.Input) >= 3 && c.Input[1] == s.Input[1] && c.Input[2] == s.Input[2] && input(c, 4) == input(s, 4) {
			return m.Const(s.Input[0])
		}
	}
	return nil
}

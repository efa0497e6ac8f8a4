package graph

import (
	"github.com/qatc/qatc/onnx"
)

// InferShapes returns the element type and shape of every value of the main
// graph: graph inputs, initializers and node outputs. Ranks are inferred for
// the op set qatc supports; dimensions are static where they follow from
// the graph, carry the graph inputs' dim params (such as "batch") where
// they equal one, and are unknown otherwise. Small integer tensors (the
// Shape/Gather/Concat arithmetic exporters emit) are evaluated
// symbolically so that Reshape and Expand get static ranks. A value
// produced by an op that is not supported has an unknown rank (or the
// one the model's value_info records) and no error. The only error is a
// graph that cannot be ordered (a cycle).
func (m *Model) InferShapes() (map[string]TensorInfo, error) {
	in, err := m.infer()
	if err != nil {
		return nil, err
	}
	return in.info, nil
}

// infer runs shape inference over the main graph.
func (m *Model) infer() (*inferer, error) {
	order, err := m.topoOrder()
	if err != nil {
		return nil, err
	}
	in := &inferer{m: m, info: map[string]TensorInfo{}, val: map[string]*symTensor{}}
	g := m.Proto.Graph
	for _, v := range g.Input {
		in.info[v.Name] = valueInfoType(v)
	}
	for _, t := range g.Initializer {
		in.info[t.Name] = tensorInfo(t)
		in.val[t.Name] = tensorSym(t)
	}
	declared := map[string]*onnx.ValueInfoProto{}
	for _, v := range g.ValueInfo {
		declared[v.Name] = v
	}
	for _, n := range order {
		in.node(n)
		for _, o := range n.Output {
			if o == "" {
				continue
			}
			ti, ok := in.info[o]
			if v := declared[o]; v != nil && (!ok || !ti.RankKnown) {
				vt := valueInfoType(v)
				if vt.Elem == Undefined {
					vt.Elem = ti.Elem
				}
				in.info[o] = vt
			} else if !ok {
				in.info[o] = TensorInfo{}
			}
		}
	}
	return in, nil
}

// ValueNames returns the name of every value that nodes produce, in
// topological order (graph outputs included, graph inputs and
// initializers not). A graph with a cycle has no such order: the error
// names a node on it.
func (m *Model) ValueNames() ([]string, error) {
	order, err := m.topoOrder()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, n := range order {
		for _, o := range n.Output {
			if o != "" {
				names = append(names, o)
			}
		}
	}
	return names, nil
}

// valueInfoType converts a declared tensor type.
func valueInfoType(v *onnx.ValueInfoProto) TensorInfo {
	tt := v.GetType().GetTensorType()
	if tt == nil {
		return TensorInfo{}
	}
	ti := TensorInfo{Elem: DataType(tt.ElemType)}
	if tt.Shape == nil {
		return ti
	}
	ti.RankKnown = true
	ti.Dims = make([]Dim, len(tt.Shape.Dim))
	for i, d := range tt.Shape.Dim {
		switch x := d.Value.(type) {
		case *onnx.TensorShapeProto_Dimension_DimValue:
			if x.DimValue >= 0 {
				ti.Dims[i] = Dim{Value: x.DimValue}
				continue
			}
			ti.Dims[i] = Dim{Value: -1}
		case *onnx.TensorShapeProto_Dimension_DimParam:
			ti.Dims[i] = Dim{Value: -1, Param: x.DimParam}
		default:
			ti.Dims[i] = Dim{Value: -1}
		}
	}
	return ti
}

// tensorInfo is a constant tensor's type.
func tensorInfo(t *onnx.TensorProto) TensorInfo {
	return TensorInfo{Elem: TensorType(t), RankKnown: true, Dims: staticDims(t.Dims)}
}

func staticDims(dims []int64) []Dim {
	out := make([]Dim, len(dims))
	for i, d := range dims {
		out[i] = Dim{Value: d}
		if d < 0 {
			out[i] = Dim{Value: -1}
		}
	}
	return out
}

// tensorSym tracks a small constant integer tensor, or returns nil.
func tensorSym(t *onnx.TensorProto) *symTensor {
	switch TensorType(t) {
	case Int64, Int32, Int8, Uint8, Bool:
	default:
		return nil
	}
	for _, d := range t.Dims {
		if d < 0 || d > maxSymElems {
			return nil
		}
	}
	if NumElements(t.Dims) > maxSymElems || HasExternalData(t) {
		return nil
	}
	vals, err := Int64s(t)
	if err != nil {
		return nil
	}
	return constSym(t.Dims, vals)
}

// inferer carries shape inference's state through the graph.
type inferer struct {
	m    *Model
	info map[string]TensorInfo
	val  map[string]*symTensor
}

// in returns the info of n's input i; ok is false when the input is
// absent or nothing is known about it.
func (s *inferer) in(n *onnx.NodeProto, i int) (TensorInfo, bool) {
	if i >= len(n.Input) || n.Input[i] == "" {
		return TensorInfo{}, false
	}
	ti, ok := s.info[n.Input[i]]
	return ti, ok
}

func (s *inferer) has(n *onnx.NodeProto, i int) bool {
	return i < len(n.Input) && n.Input[i] != ""
}

// inVal returns the tracked contents of n's input i, or nil.
func (s *inferer) inVal(n *onnx.NodeProto, i int) *symTensor {
	if i >= len(n.Input) || n.Input[i] == "" {
		return nil
	}
	return s.val[n.Input[i]]
}

// inInts returns the known integer contents of n's input i.
func (s *inferer) inInts(n *onnx.NodeProto, i int) ([]int64, bool) {
	return s.inVal(n, i).ints()
}

func (s *inferer) set(n *onnx.NodeProto, i int, ti TensorInfo) {
	if i < len(n.Output) && n.Output[i] != "" {
		s.info[n.Output[i]] = ti
	}
}

func (s *inferer) setVal(n *onnx.NodeProto, i int, v *symTensor) {
	if v == nil || len(v.elems) > maxSymElems || i >= len(n.Output) || n.Output[i] == "" {
		return
	}
	s.val[n.Output[i]] = v
}

// ranked returns a TensorInfo with the given dims.
func ranked(elem DataType, dims []Dim) TensorInfo {
	return TensorInfo{Elem: elem, RankKnown: true, Dims: dims}
}

// maxRank bounds ranks taken from the length of a shape tensor, so that a
// malformed model cannot make inference allocate without bound.
const maxRank = 64

// shapeLen returns the length of the 1-D shape tensor described by ti.
func shapeLen(ti TensorInfo) (int, bool) {
	if !ti.RankKnown || len(ti.Dims) != 1 || !ti.Dims[0].Static() || ti.Dims[0].Value > maxRank {
		return 0, false
	}
	return int(ti.Dims[0].Value), true
}

// unknownDims returns r unknown dimensions.
func unknownDims(r int) []Dim {
	d := make([]Dim, r)
	for i := range d {
		d[i] = Dim{Value: -1}
	}
	return d
}

func cloneDims(d []Dim) []Dim { return append([]Dim(nil), d...) }

// normAxis maps a possibly negative axis into [0, r).
func normAxis(a int64, r int) (int, bool) {
	if a < 0 {
		a += int64(r)
	}
	if a < 0 || a >= int64(r) {
		return 0, false
	}
	return int(a), true
}

// sameDim merges two views of one dimension.
func sameDim(a, b Dim) Dim {
	switch {
	case a.Static():
		return a
	case b.Static():
		return b
	case a.Param != "":
		return a
	}
	return b
}

// broadcast returns the numpy-style broadcast of shapes, assuming the
// model is valid (a static dim other than 1 wins over an unknown one).
func broadcast(shapes ...[]Dim) []Dim {
	r := 0
	for _, s := range shapes {
		r = max(r, len(s))
	}
	out := make([]Dim, r)
	for i := range out {
		var d Dim
		first := true
		for _, s := range shapes {
			j := i - (r - len(s))
			if j < 0 {
				continue
			}
			e := s[j]
			switch {
			case first:
				d, first = e, false
			case e.Static() && e.Value == 1:
			case d.Static() && d.Value == 1:
				d = e
			case d.Static():
			case e.Static():
				d = e
			case d.Param != "" && d.Param == e.Param:
			default:
				d = Dim{Value: -1}
			}
		}
		out[i] = d
	}
	return out
}

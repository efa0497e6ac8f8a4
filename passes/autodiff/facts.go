package autodiff

import (
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// facts is what the pass knows statically about the training graph's
// values: the element types and shapes graph's inference (its op table,
// graph.InferShapes) gives the forward graph, and the types and ranks the
// builder declares for the values it emits. Constants are read with
// graph.Model.Const.
type facts struct {
	m    *graph.Model
	info map[string]graph.TensorInfo // the forward graph's, inferred
	elem map[string]graph.DataType   // declared by the builder
	rank map[string]int
}

func isFloat(t graph.DataType) bool {
	return t == graph.Float || t == graph.Double || t == graph.Float16 || t == graph.BFloat16
}

// newFacts infers the forward graph m. A graph that cannot be ordered has
// no inference; the pass then fails on the first value it needs to know.
func newFacts(m *graph.Model) *facts {
	f := &facts{m: m, elem: map[string]graph.DataType{}, rank: map[string]int{}}
	f.info, _ = m.InferShapes()
	return f
}

// Rank returns v's rank, or -1 when it is not known.
func (f *facts) Rank(v string) int {
	if r, ok := f.rank[v]; ok && r >= 0 {
		return r
	}
	if ti, ok := f.info[v]; ok && ti.RankKnown {
		return len(ti.Dims)
	}
	return -1
}

// Elem returns v's element type (Undefined when not known).
func (f *facts) Elem(v string) graph.DataType {
	if t := f.elem[v]; t != graph.Undefined {
		return t
	}
	return f.info[v].Elem
}

// length returns the static length of a 1-D integer tensor (a shape
// operand), following the Concat/Unsqueeze/Shape arithmetic exporters write.
func (f *facts) length(v string) int {
	if t := f.m.Const(v); t != nil {
		if len(t.Dims) == 1 {
			return int(t.Dims[0])
		}
		if len(t.Dims) == 0 {
			return 1
		}
		return -1
	}
	n := f.m.Producer(v)
	if n == nil {
		return -1
	}
	switch n.OpType {
	case "Shape":
		if graph.Attr(n, "start") != nil || graph.Attr(n, "end") != nil {
			return -1
		}
		return f.Rank(n.Input[0])
	case "Concat":
		total := 0
		for _, in := range n.Input {
			l := f.length(in)
			if l < 0 {
				return -1
			}
			total += l
		}
		return total
	case "Unsqueeze":
		if f.Rank(n.Input[0]) == 0 {
			return 1
		}
	case "Cast", "Identity":
		return f.length(n.Input[0])
	}
	if ti, ok := f.info[v]; ok && ti.RankKnown && len(ti.Dims) == 1 && ti.Dims[0].Static() {
		return int(ti.Dims[0].Value)
	}
	return -1
}

// axesOf returns the axes of a reduce/squeeze-like node: from the
// attribute, or from constant input i at opsets that take them as input.
// given is false when the node has none (meaning "all" for reductions).
func (f *facts) axesOf(n *onnx.NodeProto, i int) (axes []int64, given, ok bool) {
	if a := graph.Attr(n, "axes"); a != nil {
		return a.Ints, true, true
	}
	if len(n.Input) > i && n.Input[i] != "" {
		ax, ok := f.m.ConstInts(n.Input[i])
		return ax, true, ok
	}
	return nil, false, true
}

func (f *facts) set(v string, dt graph.DataType, r int) {
	if v == "" {
		return
	}
	if _, ok := f.elem[v]; !ok || f.elem[v] == graph.Undefined {
		f.elem[v] = dt
	}
	if old, ok := f.rank[v]; !ok || old < 0 {
		f.rank[v] = r
	}
}

// dims returns v's inferred dims when every one is static or
// named, so that equal dims are provably equal.
func (f *facts) dims(v string) ([]graph.Dim, bool) {
	if v == "" {
		return nil, false
	}
	ti, ok := f.info[v]
	if !ok || !ti.RankKnown {
		return nil, false
	}
	for _, d := range ti.Dims {
		if !d.Static() && d.Param == "" {
			return nil, false
		}
	}
	return ti.Dims, true
}

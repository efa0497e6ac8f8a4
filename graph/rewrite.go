package graph

import (
	"fmt"
	"strconv"

	"github.com/qatc/qatc/onnx"
)

// UniqueName returns base if no value or node uses it yet, else base_1,
// base_2, ...; the name is reserved.
func (m *Model) UniqueName(base string) string {
	name := base
	for i := 1; m.names[name]; i++ {
		name = base + "_" + strconv.Itoa(i)
	}
	m.names[name] = true
	return name
}

// AddNode appends n to the graph and indexes it. Nodes may be added in any
// order; TopoSort restores ONNX's order before saving.
func (m *Model) AddNode(n *onnx.NodeProto) *onnx.NodeProto {
	m.Proto.Graph.Node = append(m.Proto.Graph.Node, n)
	m.indexNode(n)
	return n
}

// Op appends a default-domain node op(inputs) -> outputs with the given
// attributes. An empty name gets a unique one derived from the first output.
func (m *Model) Op(op, name string, inputs, outputs []string, attrs ...*onnx.AttributeProto) *onnx.NodeProto {
	if name == "" && len(outputs) > 0 {
		name = m.UniqueName(outputs[0] + "/" + op)
	}
	return m.AddNode(&onnx.NodeProto{OpType: op, Name: name, Input: inputs, Output: outputs, Attribute: attrs})
}

// AddInitializer adds t (its name must be unused) and returns its name.
func (m *Model) AddInitializer(t *onnx.TensorProto) string {
	m.Proto.Graph.Initializer = append(m.Proto.Graph.Initializer, t)
	m.initializer[t.Name] = t
	m.names[t.Name] = true
	return t.Name
}

// RemoveInitializer deletes the initializer called name (and a graph input
// of the same name, as older exporters list initializers as inputs).
func (m *Model) RemoveInitializer(name string) {
	g := m.Proto.Graph
	g.Initializer = filter(g.Initializer, func(t *onnx.TensorProto) bool { return t.Name != name })
	g.Input = filter(g.Input, func(v *onnx.ValueInfoProto) bool { return v.Name != name })
	delete(m.initializer, name)
	delete(m.input, name)
}

// AddInput appends a graph input of elem type dt; a dim < 0 is symbolic and
// takes its name from dimNames (when given) at the same position.
func (m *Model) AddInput(name string, dt DataType, dims []int64, dimNames ...string) *onnx.ValueInfoProto {
	v := ValueInfo(name, dt, dims, dimNames...)
	m.Proto.Graph.Input = append(m.Proto.Graph.Input, v)
	m.input[name] = v
	m.names[name] = true
	return v
}

// AddOutput appends a graph output, typed as for AddInput.
func (m *Model) AddOutput(name string, dt DataType, dims []int64, dimNames ...string) *onnx.ValueInfoProto {
	v := ValueInfo(name, dt, dims, dimNames...)
	m.Proto.Graph.Output = append(m.Proto.Graph.Output, v)
	m.output[name] = v
	m.names[name] = true
	return v
}

// ValueInfo returns a tensor ValueInfoProto; dims nil means unknown rank.
func ValueInfo(name string, dt DataType, dims []int64, dimNames ...string) *onnx.ValueInfoProto {
	tt := &onnx.TypeProto_Tensor{ElemType: int32(dt)}
	if dims != nil {
		shape := &onnx.TensorShapeProto{}
		for i, d := range dims {
			dim := &onnx.TensorShapeProto_Dimension{}
			switch {
			case d >= 0:
				dim.Value = &onnx.TensorShapeProto_Dimension_DimValue{DimValue: d}
			case i < len(dimNames) && dimNames[i] != "":
				dim.Value = &onnx.TensorShapeProto_Dimension_DimParam{DimParam: dimNames[i]}
			}
			shape.Dim = append(shape.Dim, dim)
		}
		tt.Shape = shape
	}
	return &onnx.ValueInfoProto{Name: name, Type: &onnx.TypeProto{Value: &onnx.TypeProto_TensorType{TensorType: tt}}}
}

// RemoveNodes deletes the given nodes from the graph.
func (m *Model) RemoveNodes(dead ...*onnx.NodeProto) {
	set := make(map[*onnx.NodeProto]bool, len(dead))
	for _, n := range dead {
		set[n] = true
	}
	m.Proto.Graph.Node = filter(m.Proto.Graph.Node, func(n *onnx.NodeProto) bool { return !set[n] })
	m.Reindex()
}

// ReplaceUses makes every node reading old read new instead, except the
// nodes in keep (typically the node that produces new from old). Graph
// outputs are not renamed.
func (m *Model) ReplaceUses(old, new string, keep ...*onnx.NodeProto) {
	skip := make(map[*onnx.NodeProto]bool, len(keep))
	for _, n := range keep {
		skip[n] = true
	}
	var kept []*onnx.NodeProto
	for _, n := range m.consumers[old] {
		if skip[n] {
			kept = append(kept, n)
			continue
		}
		for i, in := range n.Input {
			if in == old {
				n.Input[i] = new
			}
		}
		m.consumers[new] = appendOnce(m.consumers[new], n)
	}
	m.consumers[old] = kept
}

// ReplaceInput makes input i of node n read value instead.
func (m *Model) ReplaceInput(n *onnx.NodeProto, i int, value string) {
	old := n.Input[i]
	n.Input[i] = value
	if !contains(n.Input, old) {
		m.consumers[old] = filter(m.consumers[old], func(c *onnx.NodeProto) bool { return c != n })
	}
	m.consumers[value] = appendOnce(m.consumers[value], n)
}

func appendOnce(list []*onnx.NodeProto, n *onnx.NodeProto) []*onnx.NodeProto {
	for _, x := range list {
		if x == n {
			return list
		}
	}
	return append(list, n)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func filter[T any](list []T, keep func(T) bool) []T {
	out := list[:0]
	for _, x := range list {
		if keep(x) {
			out = append(out, x)
		}
	}
	clear(list[len(out):])
	return out
}

// TopoSort orders the graph's nodes so that every node follows the
// producers of its inputs, keeping the existing order where it is already
// valid. It fails on a cycle, naming a node on it.
func (m *Model) TopoSort() error {
	order, err := m.topoOrder()
	if err != nil {
		return err
	}
	m.Proto.Graph.Node = order
	return nil
}

// topoOrder returns the nodes in TopoSort's order without changing the
// graph; shape inference walks them in it.
func (m *Model) topoOrder() ([]*onnx.NodeProto, error) {
	g := m.Proto.Graph
	producer := make(map[string]*onnx.NodeProto, len(g.Node))
	for _, n := range g.Node {
		for _, o := range n.Output {
			if _, dup := producer[o]; o != "" && !dup {
				producer[o] = n
			}
		}
	}
	// pending counts each node's inputs (one per use, subgraph reads
	// included) whose producer is not placed yet; users mirrors it.
	pending := make(map[*onnx.NodeProto]int, len(g.Node))
	users := make(map[*onnx.NodeProto][]*onnx.NodeProto, len(g.Node))
	for _, n := range g.Node {
		for _, in := range NodeReads(n) {
			if p := producer[in]; p != nil && p != n {
				pending[n]++
				users[p] = append(users[p], n)
			}
		}
	}
	order := make([]*onnx.NodeProto, 0, len(g.Node))
	placed := make(map[*onnx.NodeProto]bool, len(g.Node))
	// Repeated passes in the original order keep the order stable.
	for len(order) < len(g.Node) {
		progress := false
		for _, n := range g.Node {
			if placed[n] || pending[n] > 0 {
				continue
			}
			placed[n] = true
			order = append(order, n)
			progress = true
			for _, u := range users[n] {
				pending[u]--
			}
		}
		if !progress {
			c := cycleNode(g.Node, producer)
			if c == nil {
				for _, n := range g.Node {
					if !placed[n] {
						c = n
						break
					}
				}
			}
			return nil, fmt.Errorf("graph has a cycle through node %s", nodeRef(c))
		}
	}
	return order, nil
}

// NodeReads returns the values n reads: its inputs plus the outer-scope
// values its subgraphs read, so that control-flow nodes are ordered after
// what they capture. The slice may be n.Input itself: do not modify it.
func NodeReads(n *onnx.NodeProto) []string {
	ins := n.Input
	for _, g := range Subgraphs(n) {
		ins = append(append([]string(nil), ins...), outerReads(g)...)
	}
	return ins
}

// outerReads lists the values a subgraph reads that it does not define.
func outerReads(g *onnx.GraphProto) []string {
	defined := map[string]bool{}
	for _, v := range g.Input {
		defined[v.Name] = true
	}
	for _, t := range g.Initializer {
		defined[t.Name] = true
	}
	var reads []string
	for _, n := range g.Node {
		for _, in := range NodeReads(n) {
			if in != "" && !defined[in] {
				reads = append(reads, in)
			}
		}
		for _, o := range n.Output {
			defined[o] = true
		}
	}
	return reads
}

// RemoveDead deletes, repeatedly, the nodes none of whose outputs is read
// or a graph output, then the initializers nothing reads: what a rewrite
// leaves behind when it reroutes a value around a subgraph.
func (m *Model) RemoveDead() {
	for {
		var dead []*onnx.NodeProto
		for _, n := range m.Graph().Node {
			used := false
			for _, o := range n.Output {
				if o != "" && (len(m.Consumers(o)) > 0 || m.IsGraphOutput(o)) {
					used = true
					break
				}
			}
			if !used {
				dead = append(dead, n)
			}
		}
		if len(dead) == 0 {
			break
		}
		m.RemoveNodes(dead...)
	}
	for _, name := range m.InitializerNames() {
		if len(m.Consumers(name)) == 0 && !m.IsGraphOutput(name) {
			m.RemoveInitializer(name)
		}
	}
}

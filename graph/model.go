package graph

import (
	"fmt"
	"sort"
	"strconv"

	"github.com/qatc/qatc/onnx"
)

// Model is an ONNX model with an index over its main graph.
type Model struct {
	// Proto is the model itself; Graph is Proto.Graph.
	Proto *onnx.ModelProto
	// Dir is the directory external-data locations are resolved in
	// ("" for a model that was not read from a file).
	Dir string
	// External records that the model was read with external data; Save
	// then keeps that layout, so that a large model never needs a second
	// in-memory copy to be serialized.
	External bool

	producer    map[string]*onnx.NodeProto
	consumers   map[string][]*onnx.NodeProto
	initializer map[string]*onnx.TensorProto
	input       map[string]*onnx.ValueInfoProto
	output      map[string]*onnx.ValueInfoProto
	names       map[string]bool // every value and node name, for UniqueName
}

// New returns an empty model with the given default-domain opset and IR
// version 8, ready for the rewriting helpers.
func New(graphName string, opset int64) *Model {
	m := &Model{Proto: &onnx.ModelProto{
		IrVersion:    8,
		ProducerName: "qatc",
		OpsetImport:  []*onnx.OperatorSetIdProto{{Domain: "", Version: opset}},
		Graph:        &onnx.GraphProto{Name: graphName},
	}}
	m.Reindex()
	return m
}

// FromProto wraps an existing protobuf (which it then owns).
func FromProto(p *onnx.ModelProto, dir string) *Model {
	if p.Graph == nil {
		p.Graph = &onnx.GraphProto{}
	}
	m := &Model{Proto: p, Dir: dir}
	m.Reindex()
	return m
}

// Graph returns the main graph.
func (m *Model) Graph() *onnx.GraphProto { return m.Proto.Graph }

// Reindex rebuilds the value index from the protobuf. Call it after editing
// Proto directly.
func (m *Model) Reindex() {
	g := m.Proto.Graph
	m.producer = make(map[string]*onnx.NodeProto, len(g.Node))
	m.consumers = make(map[string][]*onnx.NodeProto, len(g.Node))
	m.initializer = make(map[string]*onnx.TensorProto, len(g.Initializer))
	m.input = make(map[string]*onnx.ValueInfoProto, len(g.Input))
	m.output = make(map[string]*onnx.ValueInfoProto, len(g.Output))
	m.names = make(map[string]bool)
	for _, t := range g.Initializer {
		m.initializer[t.Name] = t
		m.names[t.Name] = true
	}
	for _, v := range g.Input {
		m.input[v.Name] = v
		m.names[v.Name] = true
	}
	for _, v := range g.Output {
		m.output[v.Name] = v
		m.names[v.Name] = true
	}
	for _, n := range g.Node {
		m.indexNode(n)
	}
}

func (m *Model) indexNode(n *onnx.NodeProto) {
	if n.Name != "" {
		m.names[n.Name] = true
	}
	for _, o := range n.Output {
		if o == "" {
			continue
		}
		m.producer[o] = n
		m.names[o] = true
	}
	for _, in := range n.Input {
		if in == "" {
			continue
		}
		m.consumers[in] = append(m.consumers[in], n)
	}
	markSubgraphNames(n, m.names)
}

// markSubgraphNames records names used inside control-flow bodies so that
// new names never shadow them.
func markSubgraphNames(n *onnx.NodeProto, names map[string]bool) {
	for _, g := range Subgraphs(n) {
		for _, sn := range g.Node {
			for _, o := range sn.Output {
				names[o] = true
			}
			markSubgraphNames(sn, names)
		}
	}
}

// Subgraphs returns the graphs n's attributes hold (If's branches, Loop's
// and Scan's bodies), in attribute order.
func Subgraphs(n *onnx.NodeProto) []*onnx.GraphProto {
	var gs []*onnx.GraphProto
	for _, a := range n.Attribute {
		gs = append(gs, a.Graphs...)
		if a.G != nil {
			gs = append(gs, a.G)
		}
	}
	return gs
}

// Producer returns the node that writes value name, or nil for graph inputs,
// initializers and unknown names.
func (m *Model) Producer(name string) *onnx.NodeProto { return m.producer[name] }

// Consumers returns the nodes that read value name, in graph order.
func (m *Model) Consumers(name string) []*onnx.NodeProto { return m.consumers[name] }

// Initializer returns the initializer called name, or nil.
func (m *Model) Initializer(name string) *onnx.TensorProto { return m.initializer[name] }

// Input returns the graph input called name, or nil.
func (m *Model) Input(name string) *onnx.ValueInfoProto { return m.input[name] }

// Output returns the graph output called name, or nil.
func (m *Model) Output(name string) *onnx.ValueInfoProto { return m.output[name] }

// IsGraphOutput reports whether name is one of the graph's outputs.
func (m *Model) IsGraphOutput(name string) bool { return m.output[name] != nil }

// HasName reports whether name is used by any value or node.
func (m *Model) HasName(name string) bool { return m.names[name] }

// InitializerNames returns the initializers' names, sorted.
func (m *Model) InitializerNames() []string {
	names := make([]string, 0, len(m.initializer))
	for n := range m.initializer {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Opset returns the opset version imported for domain ("" or "ai.onnx" for
// the default domain), or 0 when the domain is not imported.
func (m *Model) Opset(domain string) int64 {
	if domain == "ai.onnx" {
		domain = ""
	}
	for _, o := range m.Proto.OpsetImport {
		d := o.Domain
		if d == "ai.onnx" {
			d = ""
		}
		if d == domain {
			return o.Version
		}
	}
	return 0
}

// SetOpset imports domain at version, replacing an existing import.
func (m *Model) SetOpset(domain string, version int64) {
	for _, o := range m.Proto.OpsetImport {
		if o.Domain == domain {
			o.Version = version
			return
		}
	}
	m.Proto.OpsetImport = append(m.Proto.OpsetImport, &onnx.OperatorSetIdProto{Domain: domain, Version: version})
}

// Metadata returns the metadata_props entry key and whether it exists.
func (m *Model) Metadata(key string) (string, bool) {
	for _, p := range m.Proto.MetadataProps {
		if p.Key == key {
			return p.Value, true
		}
	}
	return "", false
}

// SetMetadata sets (or adds) the metadata_props entry key.
func (m *Model) SetMetadata(key, value string) {
	for _, p := range m.Proto.MetadataProps {
		if p.Key == key {
			p.Value = value
			return
		}
	}
	m.Proto.MetadataProps = append(m.Proto.MetadataProps, &onnx.StringStringEntryProto{Key: key, Value: value})
}

// NodeName returns a printable name for n: its name, or its op type and
// first output when it has none.
func NodeName(n *onnx.NodeProto) string {
	if n.Name != "" {
		return n.Name
	}
	if len(n.Output) > 0 {
		return fmt.Sprintf("%s(->%s)", n.OpType, n.Output[0])
	}
	return n.OpType
}

// printable returns s, or s escaped as a Go string literal (without the
// quotes) when it holds characters that would break a one-line message.
func printable(s string) string {
	for _, r := range s {
		if !strconv.IsPrint(r) {
			q := strconv.Quote(s)
			return q[1 : len(q)-1]
		}
	}
	return s
}

// nodeRef names n in a one-line message.
func nodeRef(n *onnx.NodeProto) string { return printable(NodeName(n)) }

package graph

import (
	"fmt"

	"github.com/qatc/qatc/onnx"
)

// Validate checks the main graph's structure and returns its first
// problem (with a count of the others), or nil. Problems lists them all.
func (m *Model) Validate() error {
	ps := m.Problems()
	switch len(ps) {
	case 0:
		return nil
	case 1:
		return ps[0]
	}
	return fmt.Errorf("%w (and %d more problems)", ps[0], len(ps)-1)
}

// Problems returns every structural problem of the main graph, each a
// one-line error naming the node and value: a node reading a value nothing
// defines (dangling input), a value written twice (duplicate producer), a
// cycle, a node domain without an opset import, a graph output nothing
// produces, and nodes out of topological order (which TopoSort fixes).
func (m *Model) Problems() []error {
	g := m.Proto.Graph
	var ps []error
	add := func(format string, args ...any) { ps = append(ps, fmt.Errorf(format, args...)) }

	// Where each value comes from.
	defined := make(map[string]string, len(g.Node)+len(g.Initializer)+len(g.Input))
	for _, v := range g.Input {
		if prev, ok := defined[v.Name]; ok && prev == "a graph input" {
			add("graph input %q is listed twice", v.Name)
		}
		defined[v.Name] = "a graph input"
	}
	for _, t := range g.Initializer {
		if prev, ok := defined[t.Name]; ok && prev == "an initializer" {
			add("duplicate initializer %q", t.Name)
		}
		defined[t.Name] = "an initializer"
	}
	producer := make(map[string]*onnx.NodeProto, len(g.Node))
	for _, n := range g.Node {
		for _, o := range n.Output {
			if o == "" {
				continue
			}
			if p, ok := producer[o]; ok {
				add("duplicate producer: value %q is written by node %s and node %s", o, nodeRef(p), nodeRef(n))
				continue
			}
			if what, ok := defined[o]; ok {
				add("duplicate producer: node %s writes %q, which is also %s", nodeRef(n), o, what)
			}
			producer[o] = n
		}
	}

	// Opset imports.
	imported := map[string]bool{}
	for _, o := range m.Proto.OpsetImport {
		d := o.Domain
		if d == "ai.onnx" {
			d = ""
		}
		imported[d] = true
	}
	missing := map[string]bool{}
	for _, n := range g.Node {
		d := n.Domain
		if d == "ai.onnx" {
			d = ""
		}
		if !imported[d] && !missing[d] {
			missing[d] = true
			name := d
			if name == "" {
				name = "ai.onnx (default)"
			}
			add("node %s (%s) uses domain %s, which the model's opset_import does not list; add an opset import for it", nodeRef(n), printable(n.OpType), printable(name))
		}
	}

	// Dangling inputs, cycles and order.
	pos := make(map[*onnx.NodeProto]int, len(g.Node))
	for i, n := range g.Node {
		pos[n] = i
	}
	cyc := cycleNode(g.Node, producer)
	if cyc != nil {
		add("graph has a cycle through node %s", nodeRef(cyc))
	}
	outOfOrder := cyc != nil
	for i, n := range g.Node {
		for _, in := range NodeReads(n) {
			if in == "" {
				continue
			}
			p, produced := producer[in]
			if _, ok := defined[in]; !ok && !produced {
				add("dangling input: node %s reads %q, which no node, initializer or graph input defines", nodeRef(n), in)
				continue
			}
			if produced && pos[p] > i && !outOfOrder {
				outOfOrder = true
				add("nodes out of topological order: node %s reads %q before node %s writes it; call TopoSort", nodeRef(n), in, nodeRef(p))
			}
		}
	}

	for _, v := range g.Output {
		if _, ok := producer[v.Name]; !ok {
			if _, ok := defined[v.Name]; !ok {
				add("graph output %q is never produced", v.Name)
			}
		}
	}
	return ps
}

// cycleNode returns a node that lies on a cycle, or nil. Kahn's algorithm
// leaves the nodes on or after cycles; walking producers backwards from
// one of them must come round to a node on a cycle.
func cycleNode(nodes []*onnx.NodeProto, producer map[string]*onnx.NodeProto) *onnx.NodeProto {
	pending := make(map[*onnx.NodeProto]int, len(nodes))
	users := make(map[*onnx.NodeProto][]*onnx.NodeProto, len(nodes))
	for _, n := range nodes {
		for _, in := range NodeReads(n) {
			if p := producer[in]; p != nil {
				pending[n]++
				users[p] = append(users[p], n)
			}
		}
	}
	var ready []*onnx.NodeProto
	for _, n := range nodes {
		if pending[n] == 0 {
			ready = append(ready, n)
		}
	}
	done := 0
	for len(ready) > 0 {
		n := ready[len(ready)-1]
		ready = ready[:len(ready)-1]
		done++
		for _, u := range users[n] {
			if pending[u]--; pending[u] == 0 {
				ready = append(ready, u)
			}
		}
	}
	if done == len(nodes) {
		return nil
	}
	var start *onnx.NodeProto
	for _, n := range nodes {
		if pending[n] > 0 {
			start = n
			break
		}
	}
	seen := map[*onnx.NodeProto]bool{}
	n := start
	for !seen[n] {
		seen[n] = true
		for _, in := range NodeReads(n) {
			if p := producer[in]; p != nil && pending[p] > 0 {
				n = p
				break
			}
		}
	}
	return n
}

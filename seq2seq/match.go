package seq2seq

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// The decoder with past computes, for one new position, what the decoder
// without past computes for all: the same weights, the same products,
// except that its self-attention keys and values are the cache's plus one
// and its cross-attention ones come from the cache. The two graphs are
// separate exports of one module, so their initializers and values are
// named independently. matchDecoders finds the correspondence:
//
//   - each matrix product (MatMul, Gemm, Gather, …) that reads a weight is
//     identified by its operator, the operand slot and the weight's
//     contents;
//   - each product of two activations (attention's Q·Kᵀ and P·V) by the
//     weight products its operands derive from: the with-past one's
//     operands derive from a subset of the decoder's (a cached operand
//     derives from none);
//   - from those pairs, nodes that agree in operator, attributes and slot
//     are paired along the edges, which pairs the initializers the
//     products do not read (biases, LayerNorm parameters, tables).
//
// An initializer of the with-past decoder then corresponds to the
// decoder's of equal contents that the pairing (or, failing that, an
// equal name, or being the only one of those contents) designates.

// products are the operators whose operands qatc quantizes and that
// anchor the correspondence.
var products = map[string]bool{"MatMul": true, "Gemm": true, "Gather": true, "FusedMatMul": true, "Einsum": true, "Conv": true}

// layoutOps are followed from a product to the weight it reads.
var layoutOps = map[string]bool{"Transpose": true, "Identity": true, "Cast": true, "Slice": true, "Reshape": true, "Squeeze": true, "Unsqueeze": true, "Flatten": true}

// correspondence maps the decoder with past onto the decoder.
type correspondence struct {
	// node maps a with-past node to its decoder counterpart.
	node map[*onnx.NodeProto]*onnx.NodeProto
	// init maps a with-past initializer to the decoder's of the same
	// contents.
	init map[string]string
}

// graphFacts are what the matcher computes per graph.
type graphFacts struct {
	m       *graph.Model
	order   []*onnx.NodeProto
	content map[string]string // initializer → contents digest
	key     map[*onnx.NodeProto]string
	weights map[string]map[string]bool // value → weight-product keys it derives from
	// weighted marks products that read a weight.
	weighted map[*onnx.NodeProto]bool
}

func newFacts(m *graph.Model) (*graphFacts, error) {
	f := &graphFacts{m: m, content: map[string]string{}, key: map[*onnx.NodeProto]string{},
		weights: map[string]map[string]bool{}, weighted: map[*onnx.NodeProto]bool{}}
	if err := m.TopoSort(); err != nil {
		return nil, err
	}
	f.order = m.Graph().Node
	for _, n := range f.order {
		if !products[n.OpType] {
			continue
		}
		var parts []string
		for i, in := range n.Input {
			if init, chain := f.traceWeight(in); init != "" {
				parts = append(parts, fmt.Sprintf("%d:%s:%s", i, chain, f.digest(init)))
			}
		}
		if len(parts) > 0 {
			f.weighted[n] = true
			h := sha256.Sum256([]byte(n.OpType + "|" + attrKey(n) + "|" + strings.Join(parts, ",")))
			f.key[n] = hex.EncodeToString(h[:12])
		}
	}
	return f, nil
}

// traceWeight follows v back through layout ops with constant side inputs
// to an initializer of at least two elements; chain lists the ops.
func (f *graphFacts) traceWeight(v string) (string, string) {
	var chain []string
	for range 16 {
		if t := f.m.Initializer(v); t != nil {
			if graph.NumElements(t.Dims) < 2 {
				return "", ""
			}
			return v, strings.Join(chain, "/")
		}
		p := f.m.Producer(v)
		if p == nil || !layoutOps[p.OpType] || len(p.Input) == 0 {
			return "", ""
		}
		for _, in := range p.Input[1:] {
			if in != "" && f.m.Initializer(in) == nil {
				if q := f.m.Producer(in); q == nil || q.OpType != "Constant" {
					return "", ""
				}
			}
		}
		chain = append(chain, p.OpType+attrKey(p))
		v = p.Input[0]
	}
	return "", ""
}

// digest returns a digest of an initializer's type, dims and values.
func (f *graphFacts) digest(name string) string {
	if d, ok := f.content[name]; ok {
		return d
	}
	d := tensorDigest(f.m.Initializer(name))
	f.content[name] = d
	return d
}

// tensorDigest hashes a tensor's type, dims and values (float elements by
// value, so that raw and typed storage agree).
func tensorDigest(t *onnx.TensorProto) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d|%v|", t.DataType, t.Dims)
	switch {
	case len(t.RawData) > 0:
		h.Write(t.RawData)
	case len(t.FloatData) > 0:
		b := make([]byte, 4)
		for _, x := range t.FloatData {
			binary.LittleEndian.PutUint32(b, math.Float32bits(x))
			h.Write(b)
		}
	default:
		fmt.Fprintf(h, "%v|%v|%v|%v", t.Int64Data, t.Int32Data, t.DoubleData, t.ExternalData)
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// attrKey renders a node's attributes (subgraphs excluded) for keys.
func attrKey(n *onnx.NodeProto) string {
	var parts []string
	for _, a := range n.Attribute {
		if a.G != nil || len(a.Graphs) > 0 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s=%v/%v/%v/%s/%v/%v", a.Name, a.I, a.F, a.Ints, a.S, a.Floats, tensorKey(a.T)))
	}
	sort.Strings(parts)
	return strings.Join(parts, ";")
}

func tensorKey(t *onnx.TensorProto) string {
	if t == nil {
		return ""
	}
	return tensorDigest(t)
}

// derives returns the keys of the weight products value v derives from,
// through everything but weight products themselves.
func (f *graphFacts) derives(v string) map[string]bool {
	if s, ok := f.weights[v]; ok {
		return s
	}
	f.weights[v] = nil // cycles cannot occur in a sorted graph; guard anyway
	s := map[string]bool{}
	if p := f.m.Producer(v); p != nil {
		if f.weighted[p] {
			s[f.key[p]] = true
		} else {
			for _, in := range p.Input {
				if in == "" {
					continue
				}
				for k := range f.derives(in) {
					s[k] = true
				}
			}
		}
	}
	f.weights[v] = s
	return s
}

// matchDecoders returns the correspondence of the decoder with past wp to
// the decoder d; its errors say which with-past tensor or node has no
// counterpart (the files come from different models).
func matchDecoders(d, wp *graph.Model, dName, wpName string) (*correspondence, error) {
	fd, err := newFacts(d)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dName, err)
	}
	fw, err := newFacts(wp)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", wpName, err)
	}
	c := &correspondence{node: map[*onnx.NodeProto]*onnx.NodeProto{}, init: map[string]string{}}
	taken := map[*onnx.NodeProto]bool{}

	// Weight products, by key, in order of appearance.
	byKey := map[string][]*onnx.NodeProto{}
	for _, n := range fd.order {
		if k, ok := fd.key[n]; ok {
			byKey[k] = append(byKey[k], n)
		}
	}
	for _, n := range fw.order {
		k, ok := fw.key[n]
		if !ok {
			continue
		}
		cands := byKey[k]
		if len(cands) == 0 {
			init, _ := fw.traceWeight(firstWeight(fw, n))
			return nil, fmt.Errorf("%s: %s %s reads %s, which no product of %s reads: the files come from different models", wpName, n.OpType, graph.NodeName(n), init, dName)
		}
		c.node[n], taken[cands[0]] = cands[0], true
		byKey[k] = cands[1:]
	}
	// Products of two activations.
	for _, n := range fw.order {
		if !products[n.OpType] || fw.weighted[n] {
			continue
		}
		var best *onnx.NodeProto
		bestSlack := math.MaxInt
		nonEmpty := false
		for _, in := range n.Input {
			nonEmpty = nonEmpty || len(fw.derives(in)) > 0
		}
		if !nonEmpty {
			continue // derives from inputs only: nothing to tell it by
		}
		for _, m := range fd.order {
			if taken[m] || m.OpType != n.OpType || fd.weighted[m] || len(m.Input) != len(n.Input) || attrKey(m) != attrKey(n) {
				continue
			}
			slack, ok := 0, true
			for i := range n.Input {
				a, b := fw.derives(n.Input[i]), fd.derives(m.Input[i])
				for k := range a {
					if !b[k] {
						ok = false
						break
					}
				}
				if !ok {
					break
				}
				slack += len(b) - len(a)
			}
			if ok && slack < bestSlack {
				best, bestSlack = m, slack
			}
		}
		if best == nil {
			return nil, fmt.Errorf("%s: %s %s multiplies values that no product of %s multiplies: the files come from different models", wpName, n.OpType, graph.NodeName(n), dName)
		}
		c.node[n], taken[best] = best, true
	}
	c.propagate(fd, fw)
	if err := c.initializers(fd, fw, dName, wpName); err != nil {
		return nil, err
	}
	return c, nil
}

// firstWeight returns the input of product n that reads a weight.
func firstWeight(f *graphFacts, n *onnx.NodeProto) string {
	for _, in := range n.Input {
		if init, _ := f.traceWeight(in); init != "" {
			return in
		}
	}
	return ""
}

// propagate pairs nodes along the edges of paired nodes (and of the
// inputs both graphs name alike): producers of the same slot, consumers
// that are the only ones of their operator and slot on both sides.
func (c *correspondence) propagate(fd, fw *graphFacts) {
	type pair struct{ w, d *onnx.NodeProto }
	var queue []pair
	paired := map[*onnx.NodeProto]bool{}
	for w, d := range c.node {
		queue = append(queue, pair{w, d})
		paired[d] = true
	}
	sort.Slice(queue, func(i, j int) bool { return queue[i].w.Name < queue[j].w.Name })
	add := func(w, d *onnx.NodeProto) {
		if w == nil || d == nil || c.node[w] != nil || paired[d] {
			return
		}
		if w.OpType != d.OpType || w.Domain != d.Domain || len(w.Input) != len(d.Input) || len(w.Output) != len(d.Output) || attrKey(w) != attrKey(d) {
			return
		}
		c.node[w], paired[d] = d, true
		queue = append(queue, pair{w, d})
	}
	consumers := func(m *graph.Model, v string) map[string][]*onnx.NodeProto {
		out := map[string][]*onnx.NodeProto{}
		for _, n := range m.Consumers(v) {
			for i, in := range n.Input {
				if in == v {
					k := fmt.Sprintf("%s/%d", n.OpType, i)
					out[k] = append(out[k], n)
				}
			}
		}
		return out
	}
	pairValues := func(vw, vd string) {
		cw, cd := consumers(fw.m, vw), consumers(fd.m, vd)
		for k, ws := range cw {
			if ds := cd[k]; len(ws) == 1 && len(ds) == 1 {
				add(ws[0], ds[0])
			}
		}
	}
	for _, in := range fw.m.Graph().Input {
		if fd.m.Input(in.Name) != nil && fw.m.Initializer(in.Name) == nil {
			pairValues(in.Name, in.Name)
		}
	}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for i := range p.w.Input {
			a, b := p.w.Input[i], p.d.Input[i]
			if a == "" || b == "" {
				continue
			}
			pw, pd := fw.m.Producer(a), fd.m.Producer(b)
			if pw != nil && pd != nil && slices.Index(pw.Output, a) == slices.Index(pd.Output, b) {
				add(pw, pd)
			}
		}
		for k := range p.w.Output {
			if p.w.Output[k] != "" && p.d.Output[k] != "" {
				pairValues(p.w.Output[k], p.d.Output[k])
			}
		}
	}
}

// initializers maps every float initializer of the with-past decoder
// that holds more than one value to the decoder's of equal contents.
func (c *correspondence) initializers(fd, fw *graphFacts, dName, wpName string) error {
	byContent := map[string][]string{}
	for _, t := range fd.m.Graph().Initializer {
		byContent[fd.digest(t.Name)] = append(byContent[fd.digest(t.Name)], t.Name)
	}
	// Pairs the node pairing designates.
	designated := map[string]map[string]bool{}
	for w, d := range c.node {
		for i := range w.Input {
			a, b := w.Input[i], d.Input[i]
			if fw.m.Initializer(a) != nil && fd.m.Initializer(b) != nil {
				if designated[a] == nil {
					designated[a] = map[string]bool{}
				}
				designated[a][b] = true
			}
		}
	}
	for _, t := range fw.m.Graph().Initializer {
		if graph.NumElements(t.Dims) < 2 {
			continue
		}
		cands := byContent[fw.digest(t.Name)]
		var pick []string
		for _, n := range cands {
			if designated[t.Name][n] {
				pick = append(pick, n)
			}
		}
		if len(pick) != 1 && slices.Contains(cands, t.Name) {
			pick = []string{t.Name}
		}
		if len(pick) != 1 && len(cands) == 1 {
			pick = cands
		}
		switch {
		case len(pick) == 1:
			c.init[t.Name] = pick[0]
		case len(cands) > 1 && isFloatTensor(t):
			return fmt.Errorf("%s: initializer %s equals %d tensors of %s (%s) and its place in the graph does not tell which it is: the decoders cannot share their parameters", wpName, t.Name, len(cands), dName, strings.Join(first(cands, 3), ", "))
		}
	}
	// Every weight a paired product reads must have its counterpart.
	for w := range c.node {
		if !fw.weighted[w] {
			continue
		}
		for _, in := range w.Input {
			if init, _ := fw.traceWeight(in); init != "" && c.init[init] == "" {
				return fmt.Errorf("%s: weight %s of %s has no counterpart in %s: the files come from different models", wpName, init, graph.NodeName(w), dName)
			}
		}
	}
	return nil
}

func isFloatTensor(t *onnx.TensorProto) bool {
	switch graph.TensorType(t) {
	case graph.Float, graph.Double, graph.Float16, graph.BFloat16:
		return true
	}
	return false
}

func first(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], "…")
	}
	return s
}

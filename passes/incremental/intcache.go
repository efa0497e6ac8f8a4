package incremental

import (
	"fmt"
	"slices"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/fold"
	"github.com/qatc/qatc/seq2seq"
)

// IntCacheDoc describes an integer cache for seq2seq.Qatc.Cache.
const IntCacheDoc = "keys and values [batch, heads, len, head] as the integers of the quantizers the attention products read them through (value = scale × (integer − zero point), the scales and zero points in the DequantizeLinear after each past input); a step quantizes only its new position"

// An IntCache rewrites the folded graphs of a set Build made (passes/fold's
// form, before a format's conversion) so that the key/value cache holds
// the integers of the quantizers the attention products read keys and
// values through, instead of their dequantized floats. Those quantizers
// have one constant scale, so quantizing the new position alone and
// appending its integers to the cached ones is exactly quantizing the
// whole sequence: the values are the same, in a quarter of the memory, a
// step copies a quarter of the bytes, and the attention products can read
// integers (the formats' integer kernels, or onnxruntime's fusion of
// DequantizeLinear → MatMul).
//
// Rewrite takes the graphs in Build's order: the first decoder step, which
// makes every cache tensor (present.*), before the step with past, whose
// past inputs are dequantized with the quantizer the first step recorded.
// Where a cache tensor does not come from such a quantizer (a model
// without quantizers on attention's keys or values), the whole cache
// stays float: Integer says which.
type IntCache struct {
	quant map[string]cacheQuant // by present name
	float string                // why the cache stays float ("" for integer)
	seen  bool                  // the first step was rewritten
}

// cacheQuant is a cache tensor's quantizer: one scale and zero point.
type cacheQuant struct {
	scale float32
	zero  int64
	typ   graph.DataType
}

// Integer reports whether the cache is integer, and if not, why.
func (c *IntCache) Integer() (bool, string) {
	if !c.seen {
		return false, "no first decoder step was rewritten"
	}
	return c.float == "", c.float
}

// Type returns the cache's element type, int8 or uint8 ("int8+uint8"
// when its tensors differ); "" for a float cache.
func (c *IntCache) Type() string {
	if ok, _ := c.Integer(); !ok {
		return ""
	}
	types := map[graph.DataType]bool{}
	for _, q := range c.quant {
		types[q.typ] = true
	}
	var names []string
	for t := range types {
		names = append(names, t.String())
	}
	slices.Sort(names)
	return strings.Join(names, "+")
}

// Rewrite rewrites one graph of the set (see IntCache); graphs without
// cache inputs or outputs (the encoder) are left alone.
func (c *IntCache) Rewrite(m *graph.Model) error {
	if c.quant == nil {
		c.quant = map[string]cacheQuant{}
	}
	var pasts, presents []string
	for _, in := range m.Graph().Input {
		if strings.HasPrefix(in.Name, seq2seq.PastPrefix) {
			pasts = append(pasts, in.Name)
		}
	}
	for _, out := range m.Graph().Output {
		if strings.HasPrefix(out.Name, seq2seq.PresentPrefix) {
			presents = append(presents, out.Name)
		}
	}
	switch {
	case len(pasts) == 0 && len(presents) == 0:
		return nil
	case len(pasts) == 0:
		// The first step: every cache tensor must be a dequantized
		// integer value.
		c.seen = true
		for _, p := range presents {
			q, ok, err := dequantizedOutput(m, p)
			if err != nil {
				return err
			}
			if !ok {
				c.float = fmt.Sprintf("%s is not the output of a per-tensor quantizer", p)
				return nil
			}
			c.quant[p] = q
		}
	default:
		if !c.seen {
			return fmt.Errorf("internal error: the step with past is rewritten before the first step")
		}
		if c.float != "" {
			return nil
		}
		for _, p := range pasts {
			q, ok := c.quant[seq2seq.PresentPrefix+strings.TrimPrefix(p, seq2seq.PastPrefix)]
			if !ok {
				return fmt.Errorf("cache input %s has no cache output of the first step", p)
			}
			dequantizeInput(m, p, q)
		}
		sinkConcats(m)
	}
	for _, p := range presents {
		if err := integerOutput(m, p, c.quant[p]); err != nil {
			return err
		}
		hoistQuantize(m, p)
	}
	transposedProducts(m)
	m.RemoveDead()
	return m.TopoSort()
}

// dequantizedOutput returns the quantizer of output v when a
// DequantizeLinear with one constant scale and zero point makes it
// (through Identity nodes).
func dequantizedOutput(m *graph.Model, v string) (cacheQuant, bool, error) {
	for d := m.Producer(v); d != nil && d.OpType == "Identity"; d = m.Producer(v) {
		v = d.Input[0]
	}
	q, _, ok, err := scalarQuant(m, v)
	return q, ok, err
}

// scalarQuant reads, with fold's reader of the folded form, the constant
// scalar scale and zero point of the DequantizeLinear that makes v, and
// returns that node (ok false when none does).
func scalarQuant(m *graph.Model, v string) (cacheQuant, *onnx.NodeProto, bool, error) {
	dq, err := fold.DequantizedAt(m, v)
	if err != nil || dq == nil || len(dq.Scale) != 1 {
		return cacheQuant{}, nil, false, nil
	}
	d := dq.Node
	q := cacheQuant{scale: dq.Scale[0], typ: graph.Uint8}
	if dq.ZeroPoint != "" {
		zt := m.Const(dq.ZeroPoint)
		if zt == nil {
			return cacheQuant{}, nil, false, nil
		}
		z, ok := m.ConstInts(dq.ZeroPoint)
		if !ok || len(z) != 1 {
			return cacheQuant{}, nil, false, nil
		}
		q.zero, q.typ = z[0], graph.TensorType(zt)
	}
	if q.typ != graph.Int8 && q.typ != graph.Uint8 {
		return cacheQuant{}, nil, false, fmt.Errorf("DequantizeLinear %s reads %s integers; an integer cache holds 8-bit ones", graph.NodeName(d), q.typ)
	}
	return q, d, true, nil
}

// dequantizeInput makes graph input p hold q's integers and dequantizes
// it for its readers.
func dequantizeInput(m *graph.Model, p string, q cacheQuant) {
	in := m.Input(p)
	in.Type.GetTensorType().ElemType = int32(q.typ)
	scale := m.AddInitializer(graph.FloatTensor(m.UniqueName(p+"/scale"), nil, []float32{q.scale}))
	zero := m.AddInitializer(zeroTensor(m.UniqueName(p+"/zero_point"), q))
	f := m.UniqueName(p + "/dequantized")
	d := m.Op("DequantizeLinear", m.UniqueName(p+"/DequantizeLinear"), []string{p, scale, zero}, []string{f})
	// Shape reads only the dims (the builder's past length): it keeps
	// reading the integers, not a dequantized copy of the whole cache.
	keep := []*onnx.NodeProto{d}
	for _, c := range m.Consumers(p) {
		if c.OpType == "Shape" || c.OpType == "Size" {
			keep = append(keep, c)
		}
	}
	m.ReplaceUses(p, f, keep...)
}

func zeroTensor(name string, q cacheQuant) *onnx.TensorProto {
	if q.typ == graph.Int8 {
		return graph.Int8Tensor(name, nil, []int8{int8(q.zero)})
	}
	return graph.Uint8Tensor(name, nil, []uint8{uint8(q.zero)})
}

// sinkConcats rewrites Concats of values dequantized alike (the cached
// integers and the new position's) into one DequantizeLinear of the
// Concat of their integers.
func sinkConcats(m *graph.Model) {
	for _, n := range append([]*onnx.NodeProto(nil), m.Graph().Node...) {
		if n.OpType != "Concat" || len(n.Input) < 2 {
			continue
		}
		var first *onnx.NodeProto
		var q cacheQuant
		ints := make([]string, len(n.Input))
		same := true
		for i, in := range n.Input {
			di, d, ok, err := scalarQuant(m, in)
			if err != nil || !ok || (first != nil && di != q) {
				same = false
				break
			}
			if first == nil {
				first, q = d, di
			}
			ints[i] = d.Input[0]
		}
		if !same {
			continue
		}
		out := n.Output[0]
		joined := m.UniqueName(out + "/integers")
		m.RemoveNodes(n)
		c := m.Op("Concat", m.UniqueName(graph.NodeName(n)), ints, []string{joined}, n.Attribute...)
		c.Domain = n.Domain
		m.Op("DequantizeLinear", m.UniqueName(out+"/DequantizeLinear"), append([]string{joined}, first.Input[1:]...), []string{out})
	}
}

// integerOutput makes cache output p, which DequantizeLinear with q
// makes, the integers it dequantizes; its readers in the graph keep
// reading the dequantized values.
func integerOutput(m *graph.Model, p string, q cacheQuant) error {
	// Identity nodes before the output go: their input takes its name.
	for {
		id := m.Producer(p)
		if id == nil || id.OpType != "Identity" {
			break
		}
		v := id.Input[0]
		if m.IsGraphOutput(v) || m.Input(v) != nil {
			return fmt.Errorf("cache output %s copies %s, another graph input or output", p, v)
		}
		m.RemoveNodes(id)
		renameValue(m, v, p)
	}
	d := m.Producer(p)
	got, ok, err := dequantizedOutput(m, p)
	if err != nil {
		return err
	}
	if !ok || got != q {
		return fmt.Errorf("cache output %s is not dequantized as the first step's (scale %g, zero point %d)", p, q.scale, q.zero)
	}
	ints := d.Input[0]
	if m.IsGraphOutput(ints) || m.Input(ints) != nil {
		return fmt.Errorf("cache output %s dequantizes %s, another graph input or output", p, ints)
	}
	renameValue(m, p, m.UniqueName(p+"/dequantized"))
	renameValue(m, ints, p)
	m.Output(p).Type.GetTensorType().ElemType = int32(q.typ)
	return nil
}

// hoistQuantize moves the QuantizeLinear that makes the integers of
// cache output p (directly, or as a Concat's last input) before the
// Reshapes and Identities that lead to it: a per-tensor quantizer
// commutes with them, and onnxruntime's QDQ propagation otherwise adds a
// QuantizeLinear/DequantizeLinear pair before each such Reshape.
func hoistQuantize(m *graph.Model, p string) {
	v := p
	if c := m.Producer(v); c != nil && c.OpType == "Concat" {
		v = c.Input[len(c.Input)-1]
	}
	q := m.Producer(v)
	if q == nil || q.OpType != "QuantizeLinear" {
		return
	}
	for {
		r := m.Producer(q.Input[0])
		if r == nil || (r.OpType != "Reshape" && r.OpType != "Identity") || len(m.Consumers(r.Output[0])) != 1 || m.IsGraphOutput(r.Output[0]) {
			return
		}
		// x → r → q → out becomes x → q → r → out.
		x, out := r.Input[0], q.Output[0]
		ints := m.UniqueName(x + "/quantized")
		m.RemoveNodes(q, r)
		nq := m.Op("QuantizeLinear", m.UniqueName(graph.NodeName(q)), append([]string{x}, q.Input[1:]...), []string{ints}, q.Attribute...)
		nr := m.Op(r.OpType, m.UniqueName(graph.NodeName(r)), append([]string{ints}, r.Input[1:]...), []string{out}, r.Attribute...)
		nq.Domain, nr.Domain = q.Domain, r.Domain
		q = nq
	}
}

// renameValue gives value from the name to in its producer and readers.
func renameValue(m *graph.Model, from, to string) {
	for _, n := range m.Graph().Node {
		for i, o := range n.Output {
			if o == from {
				n.Output[i] = to
			}
		}
		for i, in := range n.Input {
			if in == from {
				n.Input[i] = to
			}
		}
	}
	m.Reindex()
}

// transposedProducts rewrites FusedMatMul(a, DequantizeLinear(k),
// transB) — Q·Kᵀ over cached keys, [batch, heads, len, head] as the
// builder writes them — as MatMul(a, DequantizeLinear(
// Transpose(k))): the integers are transposed (a Transpose after a
// DequantizeLinear is what onnxruntime 1.30 mishandles), and a MatMul of
// two dequantized values is what the integer formats and onnxruntime's
// QDQ fusion turn into an integer product.
func transposedProducts(m *graph.Model) {
	for _, n := range append([]*onnx.NodeProto(nil), m.Graph().Node...) {
		if n.OpType != "FusedMatMul" || graph.IntAttr(n, "transB", 0) != 1 || graph.IntAttr(n, "transA", 0) != 0 ||
			graph.FloatAttr(n, "alpha", 1) != 1 || graph.IntAttr(n, "transBatchA", 0) != 0 || graph.IntAttr(n, "transBatchB", 0) != 0 {
			continue
		}
		_, d, ok, err := scalarQuant(m, n.Input[1])
		if err != nil || !ok {
			continue
		}
		base := graph.NodeName(n)
		t := m.Op("Transpose", m.UniqueName(base+"/Transpose"), []string{d.Input[0]}, []string{m.UniqueName(n.Input[1] + "/transposed")}, graph.AttrInts("perm", 0, 1, 3, 2))
		kt := m.UniqueName(n.Input[1] + "/transposed/dequantized")
		m.Op("DequantizeLinear", m.UniqueName(base+"/DequantizeLinear"), append([]string{t.Output[0]}, d.Input[1:]...), []string{kt})
		out := n.Output[0]
		m.RemoveNodes(n)
		m.Op("MatMul", m.UniqueName(base+"/MatMul"), []string{n.Input[0], kt}, []string{out})
	}
}

package autodiff

import (
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// AliasSuffix ends the name of an input that reads a parameter again for
// the backward pass (Options.Recompute): a caller binds the parameter's
// buffer to it too.
const AliasSuffix = "/recompute"

// recompute gives the backward nodes their own copies of the forward
// values that depend on parameters alone (a weight's fake-quantized copy,
// a tied transpose, a quantizer's scale), computed again from alias
// inputs of the parameters, so that each forward copy is freed after its
// forward use instead of living until the backward pass reaches it: a
// QAT model's fake-quantized weights are as large as its weights. The
// copies read aliases rather than the parameters themselves because
// onnxruntime merges nodes with the same inputs (common subexpression
// elimination). They compute the same operations on the same values, so
// the gradients do not change.
//
// onnxruntime schedules the copies by its own order (measured: the
// decoder's at the start of the backward pass, the rest later), not
// right before their use; anchoring each copy on the backward value its
// reader receives (Where(c, p, p) with c computed from that value) did
// schedule them right before their use but raised transformer-big's peak
// (5.5 GB against 4.9), the arena growing for the weight-sized copies
// between the activations.
func recompute(b *builder, forward []*onnx.NodeProto, info *Info) {
	params, shapes := map[string]bool{}, map[string][]int64{}
	for _, p := range info.Params {
		params[p.Name], shapes[p.Name] = true, p.Shape
	}
	isForward := map[*onnx.NodeProto]bool{}
	for _, n := range forward {
		isForward[n] = true
	}
	// static: values computed from parameters and constants alone, and
	// reading at least one parameter.
	static := map[string]bool{}
	for _, n := range forward {
		if nondeterministic[n.OpType] || n.Domain != "" {
			continue
		}
		ok, reads := true, false
		for _, x := range n.Input {
			switch {
			case x == "":
			case static[x] || params[x]:
				reads = true
			case b.m.Initializer(x) == nil:
				ok = false
			}
		}
		if ok && reads {
			for _, o := range n.Output {
				if o != "" {
					static[o] = true
				}
			}
		}
	}
	alias := map[string]string{}
	aliasOf := func(p string) string {
		if a, ok := alias[p]; ok {
			return a
		}
		a := b.m.UniqueName(p + AliasSuffix)
		b.m.AddInput(a, b.f.Elem(p), shapes[p])
		b.f.set(a, b.f.Elem(p), len(shapes[p]))
		alias[p] = a
		info.Aliases = append(info.Aliases, Alias{Input: a, Param: p})
		return a
	}
	copies := map[string]string{} // static value → its copy
	var copyOf func(v string) string
	copyOf = func(v string) string {
		if c, ok := copies[v]; ok {
			return c
		}
		p := b.m.Producer(v)
		c := &onnx.NodeProto{OpType: p.OpType, Domain: p.Domain, Attribute: p.Attribute, Name: b.m.UniqueName(graph.NodeName(p) + AliasSuffix)}
		for _, x := range p.Input {
			switch {
			case static[x]:
				x = copyOf(x)
			case params[x]:
				x = aliasOf(x)
			}
			c.Input = append(c.Input, x)
		}
		for _, o := range p.Output {
			if o == "" {
				c.Output = append(c.Output, "")
				continue
			}
			oc := b.m.UniqueName(o + AliasSuffix)
			b.f.set(oc, b.f.Elem(o), b.f.Rank(o))
			copies[o] = oc
			c.Output = append(c.Output, oc)
		}
		b.m.AddNode(c)
		return copies[v]
	}
	for _, n := range append([]*onnx.NodeProto(nil), b.m.Graph().Node...) {
		if isForward[n] {
			continue
		}
		for i, x := range n.Input {
			if static[x] {
				n.Input[i] = copyOf(x)
			}
		}
	}
	b.m.Reindex()
}

// nondeterministic ops give another value each time they run: not
// recomputed.
var nondeterministic = map[string]bool{
	"Dropout": true, "RandomNormal": true, "RandomNormalLike": true,
	"RandomUniform": true, "RandomUniformLike": true, "Multinomial": true, "Bernoulli": true,
}

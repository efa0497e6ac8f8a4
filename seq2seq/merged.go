package seq2seq

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"google.golang.org/protobuf/proto"
)

// SplitMerged returns the two decoders of a merged decoder as Optimum
// writes it: one If node on the bool [1] input use_cache_branch whose
// then-branch is the decoder with past and whose else-branch the decoder
// without. Each becomes a model of its own with the inputs and outer
// initializers it reads; the constant stand-ins Optimum adds to the
// with-past branch for the cross-attention cache it does not compute are
// dropped. path names the file in errors.
func SplitMerged(m *graph.Model, path string) (noPast, withPast *graph.Model, err error) {
	if in := m.Input(UseCacheBranch); in == nil || m.Initializer(UseCacheBranch) != nil {
		return nil, nil, fmt.Errorf("%s has no input %s: not a merged decoder as Optimum writes it (an If node on %s choosing the decoder with or without past); give decoder_model.onnx and decoder_with_past_model.onnx instead", path, UseCacheBranch, UseCacheBranch)
	}
	var ifs []*onnx.NodeProto
	for _, n := range m.Graph().Node {
		if n.OpType == "If" && len(n.Input) == 1 && n.Input[0] == UseCacheBranch {
			ifs = append(ifs, n)
		}
	}
	if len(ifs) != 1 {
		return nil, nil, fmt.Errorf("%s has %d If nodes on %s: a merged decoder has exactly one, whose branches are the two decoders", path, len(ifs), UseCacheBranch)
	}
	node := ifs[0]
	if len(m.Graph().Node) != 1 {
		return nil, nil, fmt.Errorf("%s: besides If %s the graph has %d nodes: a merged decoder holds the two decoders in the If's branches only", path, graph.NodeName(node), len(m.Graph().Node)-1)
	}
	then, els := graph.Attr(node, "then_branch"), graph.Attr(node, "else_branch")
	if then == nil || then.G == nil || els == nil || els.G == nil {
		return nil, nil, fmt.Errorf("%s: If %s lacks a branch", path, graph.NodeName(node))
	}
	for i, o := range node.Output {
		if i >= len(m.Graph().Output) || m.Graph().Output[i].Name != o {
			return nil, nil, fmt.Errorf("%s: If %s's outputs are not the graph's outputs in order", path, graph.NodeName(node))
		}
	}
	if noPast, err = branchModel(m, els.G, path, "else_branch"); err != nil {
		return nil, nil, err
	}
	if withPast, err = branchModel(m, then.G, path, "then_branch"); err != nil {
		return nil, nil, err
	}
	dropStandIns(withPast)
	// The file's record is the decoder's; the with-past branch's
	// quantizers are its own, on its own tensors.
	for _, b := range []*graph.Model{noPast, withPast} {
		if err := narrowRecord(m, b); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return noPast, withPast, nil
}

// branchModel makes a model of branch g of merged model m.
func branchModel(m *graph.Model, g *onnx.GraphProto, path, which string) (*graph.Model, error) {
	p := &onnx.ModelProto{
		IrVersion: m.Proto.IrVersion, ProducerName: m.Proto.ProducerName, ProducerVersion: m.Proto.ProducerVersion,
		OpsetImport: cloneAll(m.Proto.OpsetImport), MetadataProps: cloneAll(m.Proto.MetadataProps),
		Graph: &onnx.GraphProto{Name: g.Name, Node: cloneAll(g.Node), Initializer: cloneAll(g.Initializer), ValueInfo: cloneAll(g.ValueInfo)},
	}
	if len(g.Output) != len(m.Graph().Output) {
		return nil, fmt.Errorf("%s: the %s has %d outputs, the graph %d", path, which, len(g.Output), len(m.Graph().Output))
	}
	for i, o := range g.Output {
		// The If's outputs name the branch outputs; their types are the
		// graph's.
		if o.Name != m.Graph().Output[i].Name {
			return nil, fmt.Errorf("%s: output %d of the %s is %s, the graph's is %s", path, i, which, o.Name, m.Graph().Output[i].Name)
		}
		p.Graph.Output = append(p.Graph.Output, proto.Clone(o).(*onnx.ValueInfoProto))
	}
	b := graph.FromProto(p, m.Dir)
	b.External = m.External
	own := map[string]bool{}
	for _, t := range g.Initializer {
		own[t.Name] = true
	}
	reads := map[string]bool{}
	for _, n := range g.Node {
		for _, in := range graph.NodeReads(n) {
			reads[in] = true
		}
	}
	for _, in := range m.Graph().Input {
		if reads[in.Name] {
			p.Graph.Input = append(p.Graph.Input, proto.Clone(in).(*onnx.ValueInfoProto))
		}
	}
	for _, t := range m.Graph().Initializer {
		if reads[t.Name] && !own[t.Name] {
			p.Graph.Initializer = append(p.Graph.Initializer, t) // shared with the other branch until written
		}
	}
	b.Reindex()
	if err := b.Validate(); err != nil {
		return nil, fmt.Errorf("%s: the %s: %w", path, which, err)
	}
	return b, nil
}

// dropStandIns removes the outputs of the with-past decoder that only
// stand in for the cross-attention cache (present.*.encoder.*, made by a
// Constant): the decoder with past computes no such values.
func dropStandIns(m *graph.Model) {
	g := m.Graph()
	var outs []*onnx.ValueInfoProto
	var dead []*onnx.NodeProto
	for _, o := range g.Output {
		p := m.Producer(o.Name)
		if strings.HasPrefix(o.Name, "present.") && strings.Contains(o.Name, ".encoder.") && p != nil && p.OpType == "Constant" && len(m.Consumers(o.Name)) == 0 {
			dead = append(dead, p)
			continue
		}
		outs = append(outs, o)
	}
	g.Output = outs
	m.RemoveNodes(dead...)
	m.Reindex()
}

func cloneAll[T proto.Message](xs []T) []T {
	out := make([]T, len(xs))
	for i, x := range xs {
		out[i] = proto.Clone(x).(T)
	}
	return out
}

// MergeDecoders builds decoder_model_merged.onnx from the two decoders as
// Optimum's merge lays it out: one If node on the bool [1] input
// use_cache_branch (then: with past, else: without), the graph's inputs
// the decoder's followed by the with-past decoder's others and
// use_cache_branch, the graph's outputs the decoder's. The with-past
// branch gets empty constant outputs for the cross-attention cache it
// does not output (the If's branches must have the same outputs).
// Initializers other than scalars and 1-D integer tensors move to the outer
// graph, where the branches share them: one name is one tensor in both
// (an initializer that differs under one name, or whose name the other
// branch uses for a value, gets a new name in the with-past branch).
func MergeDecoders(noPast, withPast *graph.Model) (*graph.Model, error) {
	if a, b := noPast.Opset(""), withPast.Opset(""); a != b {
		return nil, fmt.Errorf("merge decoders: the decoder is opset %d, the decoder with past %d", a, b)
	}
	np := proto.Clone(noPast.Proto.Graph).(*onnx.GraphProto)
	wp := proto.Clone(withPast.Proto.Graph).(*onnx.GraphProto)

	// The with-past branch's outputs, in the decoder's order.
	have := map[string]*onnx.ValueInfoProto{}
	for _, o := range wp.Output {
		have[o.Name] = o
	}
	wp.Output = nil
	for _, o := range np.Output {
		if w := have[o.Name]; w != nil {
			wp.Output = append(wp.Output, w)
			delete(have, o.Name)
			continue
		}
		tt := o.GetType().GetTensorType()
		if tt == nil || tt.Shape == nil {
			return nil, fmt.Errorf("merge decoders: output %s has no shape to make an empty stand-in of", o.Name)
		}
		var dims []int64
		first := true
		for _, d := range tt.Shape.Dim {
			switch {
			case d.GetDimValue() > 0:
				dims = append(dims, d.GetDimValue())
			case first:
				dims, first = append(dims, 0), false
			default:
				dims = append(dims, 1)
			}
		}
		empty := &onnx.TensorProto{Name: "const_tensor", DataType: tt.ElemType, Dims: dims}
		wp.Node = append(wp.Node, &onnx.NodeProto{OpType: "Constant", Name: "qatc/stand_in/" + o.Name, Output: []string{o.Name},
			Attribute: []*onnx.AttributeProto{graph.AttrTensor("value", empty)}})
		wp.Output = append(wp.Output, proto.Clone(o).(*onnx.ValueInfoProto))
	}
	if len(have) > 0 {
		var extra []string
		for n := range have {
			extra = append(extra, n)
		}
		return nil, fmt.Errorf("merge decoders: the decoder with past outputs %s, which the decoder does not", strings.Join(extra, ", "))
	}

	// Inputs: the decoder's, then the with-past decoder's others.
	var inputs []*onnx.ValueInfoProto
	seen := map[string]bool{}
	for _, g := range []*onnx.GraphProto{np, wp} {
		for _, in := range g.Input {
			if !seen[in.Name] {
				seen[in.Name] = true
				inputs = append(inputs, in)
			}
		}
	}
	inputs = append(inputs, graph.ValueInfo(UseCacheBranch, graph.Bool, []int64{1}))

	// Initializers.
	local := func(t *onnx.TensorProto) bool {
		dt := graph.TensorType(t)
		return len(t.Dims) == 0 || len(t.Dims) == 1 && (dt == graph.Int64 || dt == graph.Int32)
	}
	values := func(g *onnx.GraphProto) map[string]bool {
		v := map[string]bool{}
		for _, n := range g.Node {
			for _, o := range n.Output {
				v[o] = true
			}
		}
		return v
	}
	npValues, wpValues := values(np), values(wp)
	var outer []*onnx.TensorProto
	byName := map[string]*onnx.TensorProto{}
	split := func(g *onnx.GraphProto, other map[string]bool, rename map[string]string) {
		var keep []*onnx.TensorProto
		for _, t := range g.Initializer {
			if local(t) {
				keep = append(keep, t)
				continue
			}
			if o, ok := byName[t.Name]; ok && sameTensor(o, t) {
				continue
			}
			if _, ok := byName[t.Name]; ok || other[t.Name] {
				n := t.Name + "_merged"
				for k := 1; byName[n] != nil || npValues[n] || wpValues[n]; k++ {
					n = fmt.Sprintf("%s_merged_%d", t.Name, k)
				}
				rename[t.Name] = n
				t = proto.Clone(t).(*onnx.TensorProto)
				t.Name = n
			}
			byName[t.Name] = t
			outer = append(outer, t)
		}
		g.Initializer = keep
	}
	split(np, wpValues, map[string]string{})
	rename := map[string]string{}
	split(wp, npValues, rename)
	if len(rename) > 0 {
		renameReads(wp, rename)
	}

	np.Name, wp.Name = "no_past", "with_past"
	np.Input, wp.Input = nil, nil
	outNames := make([]string, len(np.Output))
	for i, o := range np.Output {
		outNames[i] = o.Name
	}
	ifNode := &onnx.NodeProto{OpType: "If", Name: "optimum::if", Input: []string{UseCacheBranch}, Output: outNames,
		Attribute: []*onnx.AttributeProto{
			{Name: "then_branch", Type: onnx.AttributeProto_GRAPH, G: wp},
			{Name: "else_branch", Type: onnx.AttributeProto_GRAPH, G: np},
		}}
	var outputs []*onnx.ValueInfoProto
	for _, o := range np.Output {
		outputs = append(outputs, proto.Clone(o).(*onnx.ValueInfoProto))
	}
	p := &onnx.ModelProto{
		IrVersion: noPast.Proto.IrVersion, ProducerName: noPast.Proto.ProducerName, ProducerVersion: noPast.Proto.ProducerVersion,
		OpsetImport:   cloneAll(noPast.Proto.OpsetImport),
		MetadataProps: cloneAll(noPast.Proto.MetadataProps),
		Graph:         &onnx.GraphProto{Name: "merged", Node: []*onnx.NodeProto{ifNode}, Input: inputs, Output: outputs, Initializer: outer},
	}
	for _, op := range withPast.Proto.OpsetImport {
		if !slices.ContainsFunc(p.OpsetImport, func(o *onnx.OperatorSetIdProto) bool { return o.Domain == op.Domain }) {
			p.OpsetImport = append(p.OpsetImport, proto.Clone(op).(*onnx.OperatorSetIdProto))
		}
	}
	m := graph.FromProto(p, "")
	m.External = noPast.External || withPast.External
	return m, nil
}

// sameTensor reports whether two initializers hold the same type, dims
// and values.
func sameTensor(a, b *onnx.TensorProto) bool {
	if a.DataType != b.DataType || !slices.Equal(a.Dims, b.Dims) {
		return false
	}
	if len(a.RawData) > 0 || len(b.RawData) > 0 {
		return bytes.Equal(a.RawData, b.RawData)
	}
	return proto.Equal(a, b)
}

// renameReads renames the reads of initializers in g and its subgraphs.
func renameReads(g *onnx.GraphProto, rename map[string]string) {
	for _, n := range g.Node {
		for i, in := range n.Input {
			if r, ok := rename[in]; ok {
				n.Input[i] = r
			}
		}
		for _, sg := range graph.Subgraphs(n) {
			renameReads(sg, rename)
		}
	}
}

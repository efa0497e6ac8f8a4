package seq2seq

import (
	"errors"
	"fmt"
	"slices"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
	"google.golang.org/protobuf/proto"
)

// The inputs of a composed graph: the source ids keep the encoder's name;
// the target ids take the name transformers gives the decoder's.
const (
	SourceIDs = InputIDs
	TargetIDs = "decoder_input_ids"
)

// glue names what composition adds.
const (
	padName   = "qatc/pad_id"
	notPad    = "qatc/is_token"
	equalsPad = "qatc/is_pad"
)

// decoderRenames are the decoder's inputs as the composed graph names
// them.
var decoderRenames = map[string]string{
	InputIDs:             TargetIDs,
	EncoderAttentionMask: AttentionMask,
	EncoderHiddenStates:  LastHiddenState,
}

// Compose returns the directory's encoder and first-step decoder as one
// full-sequence seq2seq graph, the form every command that trains,
// calibrates or exports works on: inputs input_ids (the source) and
// decoder_input_ids (the target, the start id first), the attention mask
// computed from the source as input_ids ≠ pad, the encoder's
// last_hidden_state feeding the decoder's encoder_hidden_states, and the
// decoder's outputs (logits first). Nodes and initializers keep their
// names; initializers are shared with the directory's graphs, so that
// training the composition trains them. A QAT directory composes with its
// quantizers and a record that lists the encoder's and the decoder's.
func (d *Dir) Compose(pad int64) (*graph.Model, error) {
	e, dec := d.Encoder.Proto, d.Decoder.Proto
	if a, b := d.Encoder.Opset(""), d.Decoder.Opset(""); a != b {
		return nil, fmt.Errorf("%s is opset %d but %s is opset %d: export both at one opset", d.Path(EncoderFile), a, d.Path(DecoderFile), b)
	}
	p := &onnx.ModelProto{
		IrVersion: max(e.IrVersion, dec.IrVersion), ProducerName: dec.ProducerName, ProducerVersion: dec.ProducerVersion,
		OpsetImport: cloneAll(dec.OpsetImport),
		Graph:       &onnx.GraphProto{Name: "seq2seq"},
	}
	for _, op := range e.OpsetImport {
		if !slices.ContainsFunc(p.OpsetImport, func(o *onnx.OperatorSetIdProto) bool { return o.Domain == op.Domain }) {
			p.OpsetImport = append(p.OpsetImport, proto.Clone(op).(*onnx.OperatorSetIdProto))
		}
	}
	g := p.Graph
	src := d.Encoder.Input(InputIDs)
	tgt := proto.Clone(d.Decoder.Input(InputIDs)).(*onnx.ValueInfoProto)
	tgt.Name = TargetIDs
	g.Input = []*onnx.ValueInfoProto{proto.Clone(src).(*onnx.ValueInfoProto), tgt}
	for _, name := range []string{TargetIDs, padName, notPad, equalsPad} {
		if d.Encoder.HasName(name) || d.Decoder.HasName(name) {
			return nil, fmt.Errorf("the directory's graphs already use the name %s, which composing them needs", name)
		}
	}
	g.Initializer = append(g.Initializer, graph.Int64Tensor(padName, nil, []int64{pad}))
	g.Node = append(g.Node,
		&onnx.NodeProto{OpType: "Equal", Name: equalsPad, Input: []string{SourceIDs, padName}, Output: []string{equalsPad}},
		&onnx.NodeProto{OpType: "Not", Name: notPad, Input: []string{equalsPad}, Output: []string{notPad}},
		&onnx.NodeProto{OpType: "Cast", Name: AttentionMask, Input: []string{notPad}, Output: []string{AttentionMask},
			Attribute: []*onnx.AttributeProto{graph.AttrInt("to", int64(graph.Int64))}})
	inits := map[string]bool{padName: true}
	addInits := func(m *graph.Model) {
		for _, t := range m.Graph().Initializer {
			if !inits[t.Name] {
				inits[t.Name] = true
				g.Initializer = append(g.Initializer, t)
			}
		}
	}
	addInits(d.Encoder)
	addInits(d.Decoder)
	for _, n := range e.Graph.Node {
		g.Node = append(g.Node, proto.Clone(n).(*onnx.NodeProto))
	}
	shared := d.sharedNodes()
	r := func(s string) string {
		if n, ok := decoderRenames[s]; ok {
			return n
		}
		return s
	}
	for _, n := range dec.Graph.Node {
		if shared[n.Name] {
			continue // a quantizer qatc wrote into both files, or a constant
		}
		c := proto.Clone(n).(*onnx.NodeProto)
		for i, in := range c.Input {
			c.Input[i] = r(in)
		}
		g.Node = append(g.Node, c)
	}
	for _, o := range dec.Graph.Output {
		g.Output = append(g.Output, proto.Clone(o).(*onnx.ValueInfoProto))
	}
	for _, kv := range dec.MetadataProps {
		if kv.Key != MetadataKey && kv.Key != quantize.MetadataKey {
			p.MetadataProps = append(p.MetadataProps, proto.Clone(kv).(*onnx.StringStringEntryProto))
		}
	}
	f := graph.FromProto(p, d.Decoder.Dir)
	f.External = d.Encoder.External || d.Decoder.External
	if err := f.TopoSort(); err != nil {
		return nil, fmt.Errorf("composing %s: %w", d.Dir, err)
	}
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("composing %s: %w", d.Dir, err)
	}
	if err := d.composeRecord(f); err != nil {
		return nil, err
	}
	return f, nil
}

// composeRecord writes the union of the encoder's and the decoder's
// quantization records into f.
func (d *Dir) composeRecord(f *graph.Model) error {
	er, err := quantize.ReadRecord(d.Encoder)
	if errors.Is(err, quantize.ErrNoRecord) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", d.Path(EncoderFile), err)
	}
	dr, err := quantize.ReadRecord(d.Decoder)
	if err != nil {
		first, _ := d.DecoderFiles()
		return fmt.Errorf("%s: %w", d.Path(first), err)
	}
	rec := *dr
	rec.Quantizers = append([]quantize.Quantizer(nil), er.Quantizers...)
	have := map[string]bool{}
	for _, q := range er.Quantizers {
		have[q.Dequantize] = true
	}
	for _, q := range dr.Quantizers {
		if have[q.Dequantize] {
			continue
		}
		if n, ok := decoderRenames[q.Tensor]; ok {
			q.Tensor = n
		}
		rec.Quantizers = append(rec.Quantizers, q)
	}
	rec.Unquantized = append(append([]quantize.Unquantized(nil), er.Unquantized...), dr.Unquantized...)
	return quantize.WriteRecord(f, &rec)
}

// Project writes what f, the directory's composition (Compose) after a
// command changed it, holds back into the directory's graphs: the encoder
// and the decoder become f's parts (with every quantizer insert placed and
// every value training changed), and the decoder with past takes f's
// values of the tensors it shares and, when f has quantizers it lacks,
// the decoder's quantizers on its counterparts of their tensors. Each
// file's quantization record lists its own quantizers.
func (d *Dir) Project(f *graph.Model) error {
	first, next := d.DecoderFiles()
	enc, err := extract(f, d.Encoder, map[string]string{})
	if err != nil {
		return fmt.Errorf("%s: %w", d.Path(EncoderFile), err)
	}
	inverse := map[string]string{}
	for k, v := range decoderRenames {
		inverse[v] = k
	}
	dec, err := extract(f, d.Decoder, inverse)
	if err != nil {
		return fmt.Errorf("%s: %w", d.Path(first), err)
	}
	wp := d.DecoderWithPast
	// Values: the with-past decoder reads the tensors under the decoder's
	// names (canonicalize); it takes f's.
	for i, t := range wp.Graph().Initializer {
		if u := f.Initializer(t.Name); u != nil && u != t && u.DataType == t.DataType && slices.Equal(u.Dims, t.Dims) {
			wp.Graph().Initializer[i] = u
		}
	}
	wp.Reindex()
	if quantize.Quantized(dec) && !quantize.Quantized(wp) {
		if d.withPast == nil {
			return fmt.Errorf("%s: the decoder with past has no quantizers and no correspondence with the decoder to place them by", d.Path(next))
		}
		if err := copyQuantizers(dec, wp, d.withPast); err != nil {
			return fmt.Errorf("%s: %w", d.Path(next), err)
		}
	}
	for _, m := range []*graph.Model{enc, dec, wp} {
		if err := narrowRecord(f, m); err != nil {
			return err
		}
	}
	d.Encoder, d.Decoder = enc, dec
	return nil
}

// extract returns the part of f that computes file's outputs from file's
// inputs: f's nodes on the way (quantizers included), the initializers
// they read, file's inputs and outputs. ren maps f's names of file's
// inputs to file's own.
func extract(f, file *graph.Model, ren map[string]string) (*graph.Model, error) {
	back := map[string]string{}
	for fv, own := range ren {
		back[own] = fv
	}
	fname := func(own string) string {
		if fv, ok := back[own]; ok {
			return fv
		}
		return own
	}
	stop := map[string]bool{}
	for _, in := range file.Graph().Input {
		if file.Initializer(in.Name) == nil {
			stop[fname(in.Name)] = true
		}
	}
	keep := map[*onnx.NodeProto]bool{}
	var visit func(v string) error
	visit = func(v string) error {
		if stop[v] || f.Initializer(v) != nil || v == "" {
			return nil
		}
		p := f.Producer(v)
		if p == nil {
			return fmt.Errorf("value %s is computed by nothing in the composed graph", v)
		}
		if keep[p] {
			return nil
		}
		keep[p] = true
		for _, in := range graph.NodeReads(p) {
			if err := visit(in); err != nil {
				return err
			}
		}
		return nil
	}
	for _, o := range file.Graph().Output {
		if err := visit(fname(o.Name)); err != nil {
			return nil, err
		}
	}
	p := &onnx.ModelProto{
		IrVersion: file.Proto.IrVersion, ProducerName: file.Proto.ProducerName, ProducerVersion: file.Proto.ProducerVersion,
		OpsetImport: cloneAll(f.Proto.OpsetImport), Domain: file.Proto.Domain, ModelVersion: file.Proto.ModelVersion, DocString: file.Proto.DocString,
		Graph: &onnx.GraphProto{Name: file.Graph().Name, Input: cloneAll(file.Graph().Input), Output: cloneAll(file.Graph().Output)},
	}
	r := func(s string) string {
		if n, ok := ren[s]; ok {
			return n
		}
		return s
	}
	reads := map[string]bool{}
	for _, n := range f.Graph().Node {
		if !keep[n] {
			continue
		}
		c := proto.Clone(n).(*onnx.NodeProto)
		for i, in := range c.Input {
			c.Input[i] = r(in)
		}
		for _, in := range graph.NodeReads(n) {
			reads[in] = true
		}
		p.Graph.Node = append(p.Graph.Node, c)
	}
	for _, t := range f.Graph().Initializer {
		if reads[t.Name] {
			p.Graph.Initializer = append(p.Graph.Initializer, t)
		}
	}
	// The file's metadata, with f's where f has it (the record is
	// narrowed afterwards).
	meta := map[string]string{}
	var keys []string
	for _, kv := range file.Proto.MetadataProps {
		meta[kv.Key] = kv.Value
		keys = append(keys, kv.Key)
	}
	for _, kv := range f.Proto.MetadataProps {
		if _, ok := meta[kv.Key]; !ok {
			keys = append(keys, kv.Key)
		}
		meta[kv.Key] = kv.Value
	}
	for _, k := range keys {
		p.MetadataProps = append(p.MetadataProps, &onnx.StringStringEntryProto{Key: k, Value: meta[k]})
	}
	m := graph.FromProto(p, file.Dir)
	m.External = file.External
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// narrowRecord gives m, one file of a directory, the quantization record
// of f (its composition) narrowed to m's own quantizers, under m's names.
func narrowRecord(f, m *graph.Model) error {
	rec, err := quantize.ReadRecord(f)
	if errors.Is(err, quantize.ErrNoRecord) {
		removeMetadata(m, quantize.MetadataKey)
		return nil
	}
	if err != nil {
		return err
	}
	found, err := findWithout(m)
	if err != nil {
		return err
	}
	byDQ := map[string]quantize.Quantizer{}
	for _, q := range rec.Quantizers {
		byDQ[q.Dequantize] = q
	}
	out := *rec
	out.Quantizers = nil
	for _, q := range found {
		r, ok := byDQ[q.Dequantize]
		if !ok {
			return fmt.Errorf("quantizer %s on %s is in no record", q.Dequantize, q.Tensor)
		}
		r.Tensor, r.Output, r.Consumers = q.Tensor, q.Output, q.Consumers
		out.Quantizers = append(out.Quantizers, r)
	}
	out.Unquantized = nil
	for _, u := range rec.Unquantized {
		if slices.ContainsFunc(m.Graph().Node, func(n *onnx.NodeProto) bool { return n.Name == u.Node }) {
			out.Unquantized = append(out.Unquantized, u)
		}
	}
	return quantize.WriteRecord(m, &out)
}

// findWithout finds m's quantizers from its graph alone.
func findWithout(m *graph.Model) ([]quantize.Quantizer, error) {
	saved, had := m.Metadata(quantize.MetadataKey)
	removeMetadata(m, quantize.MetadataKey)
	qs, err := quantize.Find(m)
	if had {
		m.SetMetadata(quantize.MetadataKey, saved)
	}
	return qs, err
}

// removeMetadata deletes key from m's metadata.
func removeMetadata(m *graph.Model, key string) {
	props := m.Proto.MetadataProps[:0]
	for _, kv := range m.Proto.MetadataProps {
		if kv.Key != key {
			props = append(props, kv)
		}
	}
	m.Proto.MetadataProps = props
}

// copyQuantizers places the quantizers of dec, the decoder of a QAT
// directory, on their counterparts in wp, the fp32 decoder with past:
// each quantizer's nodes (Q, DQ, the scale computed from the clip, a
// blocked view) are copied with their names and constants, reading wp's
// tensor: a weight under its shared name, an activation as the with-past
// counterpart of each product that reads it (products, dec's node name →
// wp's) reads it there. The clip is one initializer name in both files.
func copyQuantizers(dec, wp *graph.Model, products map[string]string) error {
	units, err := quantize.Units(dec)
	if err != nil {
		return err
	}
	copied := map[string]bool{}
	for _, u := range units {
		q := u.Quantizer(dec)
		unit := u.Nodes(dec)
		uses := map[*onnx.NodeProto][]int{}
		var tp string
		for _, c := range dec.Consumers(q.Output) {
			if dec.Initializer(q.Tensor) != nil {
				break // weights: every reader of the shared initializer, below
			}
			name, ok := products[c.Name]
			if !ok {
				continue // a product the decoder with past does not compute
			}
			wc := wpNode(wp, name)
			if wc == nil {
				return fmt.Errorf("internal error: node %s is gone", name)
			}
			for i, in := range c.Input {
				if in != q.Output {
					continue
				}
				if i >= len(wc.Input) {
					return fmt.Errorf("node %s has no input %d, which the decoder's %s quantizes", name, i, c.Name)
				}
				if tp == "" {
					tp = wc.Input[i]
				} else if tp != wc.Input[i] {
					return fmt.Errorf("the decoder quantizes %s once where the decoder with past reads two tensors (%s, %s): the graphs differ too much to share the quantizer", q.Tensor, tp, wc.Input[i])
				}
				uses[wc] = append(uses[wc], i)
			}
		}
		if dec.Initializer(q.Tensor) != nil {
			if wp.Initializer(q.Tensor) == nil {
				continue
			}
			tp = q.Tensor
			for _, c := range wp.Consumers(q.Tensor) {
				if c.OpType == "Shape" || c.OpType == "Size" {
					continue
				}
				for i, in := range c.Input {
					if in == q.Tensor {
						uses[c] = append(uses[c], i)
					}
				}
			}
		}
		if len(uses) == 0 {
			continue
		}
		for _, n := range unit {
			if copied[n.Name] {
				continue
			}
			copied[n.Name] = true
			if wp.HasName(n.Name) {
				return fmt.Errorf("the name %s of quantizer node %s is taken", n.Name, n.Name)
			}
			c := proto.Clone(n).(*onnx.NodeProto)
			for i, in := range c.Input {
				if in == q.Tensor {
					c.Input[i] = tp
				} else if t := dec.Initializer(in); t != nil && wp.Initializer(in) == nil {
					wp.AddInitializer(t)
				}
			}
			wp.AddNode(c)
		}
		for c, slots := range uses {
			for _, i := range slots {
				wp.ReplaceInput(c, i, q.Output)
			}
		}
	}
	if err := wp.TopoSort(); err != nil {
		return err
	}
	return wp.Validate()
}

// wpNode returns wp's node of that name.
func wpNode(wp *graph.Model, name string) *onnx.NodeProto {
	for _, n := range wp.Graph().Node {
		if n.Name == name {
			return n
		}
	}
	return nil
}

package seq2seq

import (
	"fmt"
	"maps"
	"slices"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
	"google.golang.org/protobuf/proto"
)

// canonicalize makes one name denote one logical tensor across the
// directory's files, which is what lets qatc keep one quantizer and one
// parameter per tensor:
//
//   - every node has a name, unique in its file;
//   - an fp32 decoder with past gets its initializers renamed to the
//     decoder's of the same tensor (matchDecoders), and d.withPast records
//     which of its products is which of the decoder's;
//   - the encoder's token table takes the decoder's name when the two are
//     one table (shared embeddings), and must be when the config says
//     they are shared;
//   - any other name the encoder shares with the decoder for something
//     else is renamed in the encoder.
func (d *Dir) canonicalize() error {
	for _, m := range []*graph.Model{d.Encoder, d.Decoder, d.DecoderWithPast} {
		nameNodes(m)
	}
	first, next := d.DecoderFiles()
	if !quantize.Quantized(d.Decoder) && !quantize.Quantized(d.DecoderWithPast) {
		c, err := matchDecoders(d.Decoder, d.DecoderWithPast, d.Path(first), d.Path(next))
		if err != nil {
			return err
		}
		ren := map[string]string{}
		for w, n := range c.init {
			if w != n {
				ren[w] = n
			}
		}
		if err := renameTensors(d.DecoderWithPast, ren); err != nil {
			return fmt.Errorf("%s: %w", d.Path(next), err)
		}
		d.withPast = map[string]string{}
		for w, n := range c.node {
			if products[w.OpType] {
				d.withPast[n.Name] = w.Name
			}
		}
	}
	if err := d.shareTables(); err != nil {
		return err
	}
	return d.separateNames()
}

// nameNodes gives every unnamed node a name unique in m.
func nameNodes(m *graph.Model) {
	seen := map[string]bool{}
	for _, n := range m.Graph().Node {
		if n.Name != "" {
			if seen[n.Name] {
				n.Name = ""
			} else {
				seen[n.Name] = true
			}
		}
	}
	for _, n := range m.Graph().Node {
		if n.Name == "" {
			base := n.OpType
			if len(n.Output) > 0 && n.Output[0] != "" {
				base = n.Output[0] + "/" + n.OpType
			}
			name := base
			for k := 1; seen[name] || m.HasName(name) && m.Producer(name) != n; k++ {
				name = fmt.Sprintf("%s_%d", base, k)
			}
			n.Name, seen[name] = name, true
		}
	}
	m.Reindex()
}

// tokenTables returns the initializers m's Gathers look up with indices
// that come from the graph's inputs: token embeddings (position tables
// are indexed by computed positions).
func tokenTables(m *graph.Model) []string {
	var out []string
	for _, n := range m.Graph().Node {
		if n.OpType != "Gather" || len(n.Input) < 2 || !fromInputs(m, n.Input[1], map[string]bool{}) {
			continue
		}
		f := &graphFacts{m: m}
		if t, _ := f.traceWeight(n.Input[0]); t != "" && !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out
}

// fromInputs reports whether v's values depend on a graph input other
// than through its shape.
func fromInputs(m *graph.Model, v string, seen map[string]bool) bool {
	if seen[v] {
		return false
	}
	seen[v] = true
	if m.Input(v) != nil && m.Initializer(v) == nil {
		return true
	}
	p := m.Producer(v)
	if p == nil || p.OpType == "Shape" || p.OpType == "Size" {
		return false
	}
	for _, in := range p.Input {
		if in != "" && fromInputs(m, in, seen) {
			return true
		}
	}
	return false
}

// sharedEmbeddings are the model types whose encoder and decoder always
// read one token table (Marian shares it unless its config says
// otherwise).
var sharedEmbeddings = map[string]bool{"t5": true, "mt5": true, "bart": true, "mbart": true, "m2m_100": true, "nllb-moe": true, "pegasus": true, "blenderbot": true, "blenderbot-small": true, "marian": true, "longt5": true}

// shareTables names the encoder's token table after the decoder's when
// they hold the same values, and checks that they do when the config says
// the model shares them.
func (d *Dir) shareTables() error {
	et, dt := tokenTables(d.Encoder), tokenTables(d.Decoder)
	ren := map[string]string{}
	for _, e := range et {
		te := d.Encoder.Initializer(e)
		for _, n := range dt {
			if tn := d.Decoder.Initializer(n); sameValues(te, tn) {
				if e != n {
					ren[e] = n
				}
				break
			}
		}
	}
	shared := sharedEmbeddings[d.Config.ModelType]
	if v, ok := d.Config.raw["share_encoder_decoder_embeddings"]; ok {
		shared = string(v) == "true"
	}
	if shared && len(et) == 1 && len(dt) == 1 && len(ren) == 0 && et[0] != dt[0] {
		first, _ := d.DecoderFiles()
		return fmt.Errorf("%s and %s come from different models: config.json (model_type %s) shares one token table between encoder and decoder, but their tables %s and %s differ", d.Path(EncoderFile), d.Path(first), d.Config.ModelType, et[0], dt[0])
	}
	if shared && len(et) == 1 && len(dt) == 1 && et[0] == dt[0] && !sameValues(d.Encoder.Initializer(et[0]), d.Decoder.Initializer(dt[0])) {
		first, _ := d.DecoderFiles()
		return fmt.Errorf("%s and %s come from different models: config.json (model_type %s) shares one token table between encoder and decoder, but the files' %s differ", d.Path(EncoderFile), d.Path(first), d.Config.ModelType, et[0])
	}
	return renameTensors(d.Encoder, ren)
}

// sameValues reports whether two initializers hold the same type, dims
// and values.
func sameValues(a, b *onnx.TensorProto) bool {
	if a == nil || b == nil {
		return false
	}
	return a == b || sameTensor(a, b) || tensorDigest(a) == tensorDigest(b)
}

// separateNames renames, in the encoder, every node and value name the
// decoder also uses for something else (the two files were named by
// separate exports), so that the two compose into one graph. A name
// stays where it is one thing in both: an initializer of the same
// values, a node alike in both (a quantizer qatc wrote into both), the
// values such nodes write, and the encoder's own inputs and output,
// which composition wires to the decoder.
func (d *Dir) separateNames() error {
	e, dec := d.Encoder, d.Decoder
	same := d.sharedNodes()
	keep := map[string]bool{InputIDs: true, AttentionMask: true, LastHiddenState: true}
	decNames := map[string]bool{}
	for _, n := range dec.Graph().Node {
		decNames[n.Name] = true
		for _, v := range n.Output {
			decNames[v] = true
		}
	}
	for _, t := range dec.Graph().Initializer {
		decNames[t.Name] = true
	}
	for _, v := range dec.Graph().Input {
		decNames[v.Name] = true
	}
	taken := func(s string) bool { return decNames[s] || e.HasName(s) }
	fresh := func(s string) string {
		n := "encoder/" + s
		for k := 1; taken(n); k++ {
			n = fmt.Sprintf("encoder/%s_%d", s, k)
		}
		return n
	}
	ren := map[string]string{}
	for _, t := range e.Graph().Initializer {
		if decNames[t.Name] && !keep[t.Name] && !sameValues(t, dec.Initializer(t.Name)) {
			ren[t.Name] = fresh(t.Name)
		}
	}
	for _, n := range e.Graph().Node {
		for _, v := range n.Output {
			if v != "" && decNames[v] && !same[v] && !keep[v] {
				ren[v] = fresh(v)
			}
		}
	}
	if err := renameTensors(e, ren); err != nil {
		return fmt.Errorf("%s: %w", d.Path(EncoderFile), err)
	}
	for _, n := range e.Graph().Node {
		if decNames[n.Name] && !same[n.Name] {
			n.Name = fresh(n.Name)
		}
	}
	e.Reindex()
	return nil
}

// sharedNodes returns the names of the nodes the encoder and the decoder
// hold alike, and the values they write: same name, same operator and
// attributes, and inputs that are one thing in both (the same initializer,
// a value of such a node, or a decoder input composition wires to the
// encoder's value of that name). They are a quantizer qatc wrote into
// both files (a shared table's) or constants; composition keeps one.
func (d *Dir) sharedNodes() map[string]bool {
	e, dec := d.Encoder, d.Decoder
	decNodes := map[string]*onnx.NodeProto{}
	for _, n := range dec.Graph().Node {
		decNodes[n.Name] = n
	}
	same := map[string]bool{}
	for _, n := range e.Graph().Node {
		o := decNodes[n.Name]
		if o == nil {
			continue
		}
		r := proto.Clone(o).(*onnx.NodeProto)
		for i, in := range r.Input {
			if x, ok := decoderRenames[in]; ok {
				r.Input[i] = x
			}
		}
		if !proto.Equal(r, n) {
			continue
		}
		alike := true
		for _, in := range n.Input {
			switch {
			case in == "" || same[in]:
			case e.Initializer(in) != nil:
				alike = sameValues(e.Initializer(in), dec.Initializer(in))
			default:
				alike = in == AttentionMask && e.Input(in) != nil
			}
			if !alike {
				break
			}
		}
		if alike {
			same[n.Name] = true
			for _, v := range n.Output {
				same[v] = true
			}
		}
	}
	return same
}

// renameTensors renames values and initializers of m everywhere they
// appear: node inputs and outputs (subgraphs included), the graph's
// inputs, outputs and value infos, and initializer names. Names are
// renamed all at once, so a rename may take a name another one frees.
func renameTensors(m *graph.Model, ren map[string]string) error {
	if len(ren) == 0 {
		return nil
	}
	ren = maps.Clone(ren)
	targets := map[string]bool{}
	for _, n := range ren {
		if targets[n] {
			return fmt.Errorf("internal error: two tensors renamed to %s", n)
		}
		targets[n] = true
	}
	// A target name still used by something that stays moves aside.
	g := m.Graph()
	for n := range targets {
		if _, moving := ren[n]; moving || !(m.Initializer(n) != nil || m.Producer(n) != nil || m.Input(n) != nil) {
			continue
		}
		aside := n + "_qatc"
		for k := 1; m.HasName(aside) || targets[aside]; k++ {
			aside = fmt.Sprintf("%s_qatc%d", n, k)
		}
		ren[n] = aside
		targets[aside] = true
	}
	r := func(s string) string {
		if n, ok := ren[s]; ok {
			return n
		}
		return s
	}
	renameGraph(g, r)
	for _, v := range g.Input {
		v.Name = r(v.Name)
	}
	for _, v := range g.Output {
		v.Name = r(v.Name)
	}
	for _, v := range g.ValueInfo {
		v.Name = r(v.Name)
	}
	for _, t := range g.Initializer {
		t.Name = r(t.Name)
	}
	m.Reindex()
	return nil
}

// renameGraph applies r to the node inputs and outputs of g and its
// subgraphs.
func renameGraph(g *onnx.GraphProto, r func(string) string) {
	for _, n := range g.Node {
		for i, in := range n.Input {
			n.Input[i] = r(in)
		}
		for i, o := range n.Output {
			n.Output[i] = r(o)
		}
		for _, sg := range graph.Subgraphs(n) {
			renameGraph(sg, r)
		}
	}
}

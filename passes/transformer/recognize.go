package transformer

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// ErrNotEncoderDecoder is wrapped by Recognize's errors for graphs that
// are transformers but not encoder-decoder ones: decoder-only models and
// decoders without cross-attention.
var ErrNotEncoderDecoder = errors.New("not an encoder-decoder transformer")

// Options configure Recognize.
type Options struct {
	// Map names tensors by role where a graph defeats the recogniser
	// (role → tensor, e.g. "decoder.layer.1.ffn.dense2.weight": "W123");
	// Roles lists the roles. Entries override what was recognised.
	Map map[string]string
}

// block is one sublayer found in the graph, before layers are assembled.
type block struct {
	attn     *Attention
	ffn      *FFN
	in, out  string // residual stream entering and leaving
	preNorm  bool
	anchor   *onnx.NodeProto // the Softmax or activation the block was found from
	err      error           // why the sublayer at softmax could not be read
	consumed bool
}

// Recognize maps m, an fp32 or QAT encoder-decoder transformer graph, onto
// the typed Model. It works from the graph's structure; names matter only
// through opts.Map.
func Recognize(m *graph.Model, opts Options) (*Model, error) {
	shapes, err := m.InferShapes()
	if err != nil {
		return nil, fmt.Errorf("recognise transformer: %v", err)
	}
	ints, err := m.KnownInts()
	if err != nil {
		return nil, fmt.Errorf("recognise transformer: %v", err)
	}
	r := &recognizer{walker: walker{m: m, shapes: shapes, ints: ints, unresolved: map[*onnx.NodeProto]error{}}}
	tm, err := r.run()
	if err != nil {
		return nil, err
	}
	tm.w = &r.walker
	if len(opts.Map) > 0 {
		if err := tm.apply(m, opts.Map); err != nil {
			return nil, err
		}
		if _, ok := opts.Map["logits.weight"]; ok {
			tm.Tied = tm.Logits.Weight == tm.Tgt.Table && tm.Logits.Transposed || r.transposedCopy(tm.Logits.Weight, tm.Logits.Transposed, tm.Tgt.Table)
		}
	}
	// Every weight must now be known.
	rs := tm.roles()
	for _, name := range tm.Roles() {
		ro := rs[name]
		if ro.proj == nil || ro.bias || *ro.name != "" {
			continue
		}
		n := ro.proj.Node
		return nil, fmt.Errorf("recognise transformer: %s not found: %s: %v; name its weight with --map %s: TENSOR%s", describe(name), graph.NodeName(n), r.unresolved[n], name, r.around(n.Output[0]))
	}
	return tm, nil
}

type recognizer struct {
	walker
	blocks []*block
	byIn   map[string]*block
	norms  map[string]*LayerNorm   // by input value
	heads  map[*onnx.NodeProto]int // by Softmax
	act    map[string]string       // activation by FFN hidden value
}

func (r *recognizer) run() (*Model, error) {
	r.norms = map[string]*LayerNorm{}
	for _, n := range r.m.Graph().Node {
		if ln := r.layerNorm(n); ln != nil {
			r.norms[ln.Input] = ln
		}
	}
	r.byIn = map[string]*block{}
	for _, n := range r.m.Graph().Node {
		var b *block
		switch {
		case n.OpType == "Softmax":
			b = r.attention(n)
		case n.OpType == "Relu" || n.OpType == "Gelu" || n.OpType == "Erf":
			b = r.ffnAt(n)
		}
		if b == nil {
			continue
		}
		r.blocks = append(r.blocks, b)
		if b.err == nil {
			if o := r.byIn[b.in]; o != nil {
				return nil, fmt.Errorf("recognise transformer: two sublayers read the residual stream %s (at %s and %s)%s", b.in, r.where(o), r.where(b), r.around(b.in))
			}
			r.byIn[b.in] = b
		}
	}
	if len(r.blocks) == 0 {
		return nil, fmt.Errorf("recognise transformer: the graph has no Softmax (attention) and no ReLU/GELU feed-forward block: it is not a transformer")
	}
	tm := &Model{}
	embs, err := r.embeddings()
	if err != nil {
		return nil, err
	}
	// The stack whose chain holds cross-attention is the decoder.
	type chain struct {
		emb    Embedding
		input  string
		blocks []*block
		out    string
		norm   *LayerNorm
		cross  bool
		broken string // stream value where the chain stopped
	}
	var chains []*chain
	for input, e := range embs {
		c := &chain{emb: e, input: input}
		x := e.Output
		for {
			b := r.byIn[x]
			if b == nil {
				break
			}
			c.blocks = append(c.blocks, b)
			b.consumed = true
			if b.attn != nil && !b.attn.Self {
				c.cross = true
			}
			x = b.out
		}
		if ln := r.norms[x]; ln != nil {
			c.norm = ln
			x = ln.Output
		}
		c.out = x
		chains = append(chains, c)
	}
	sort.Slice(chains, func(i, j int) bool { return !chains[i].cross && chains[j].cross })
	if len(chains) < 2 || !chains[1].cross {
		for _, b := range r.blocks {
			if b.err != nil {
				return nil, fmt.Errorf("recognise transformer: %s: %v", r.where(b), b.err)
			}
		}
		if len(chains) == 1 {
			return nil, fmt.Errorf("recognise transformer: %w: one token embedding (Gather from %s) and no cross-attention: a decoder-only model", ErrNotEncoderDecoder, chains[0].input)
		}
		return nil, fmt.Errorf("recognise transformer: %w: no decoder found: no chain of sublayers from a token embedding contains cross-attention (an encoder-decoder model attends to the encoder output)", ErrNotEncoderDecoder)
	}
	enc, dec := chains[0], chains[1]
	tm.SrcInput, tm.Src = enc.input, enc.emb
	tm.TgtInput, tm.Tgt = dec.input, dec.emb
	if enc.norm != nil {
		tm.EncoderNorm = enc.norm
	}
	if dec.norm != nil {
		tm.DecoderNorm = dec.norm
	}
	// Encoder layers: self-attention then FFN.
	bs := enc.blocks
	for i := 0; ; i++ {
		if len(bs) == 0 {
			break
		}
		var l EncoderLayer
		if bs[0].attn == nil || !bs[0].attn.Self {
			return nil, r.missing("encoder", i, "self-attention", bs[0].in)
		}
		l.SelfAttn = *bs[0].attn
		if len(bs) < 2 || bs[1].ffn == nil {
			return nil, r.missing("encoder", i, "feed-forward block", bs[0].out)
		}
		l.FFN = *bs[1].ffn
		tm.Encoder = append(tm.Encoder, l)
		bs = bs[2:]
	}
	if len(tm.Encoder) == 0 {
		return nil, r.missing("encoder", 0, "self-attention", enc.emb.Output)
	}
	if enc.norm == nil && len(r.byIn) > 0 && enc.blocks[0].preNorm {
		return nil, fmt.Errorf("recognise transformer: encoder: pre-norm layers but no final LayerNorm after the last layer%s", r.around(enc.out))
	}
	bs = dec.blocks
	for i := 0; len(bs) > 0; i++ {
		var l DecoderLayer
		if bs[0].attn == nil || !bs[0].attn.Self {
			return nil, r.missing("decoder", i, "self-attention", bs[0].in)
		}
		l.SelfAttn = *bs[0].attn
		if len(bs) < 2 || bs[1].attn == nil || bs[1].attn.Self {
			return nil, r.missing("decoder", i, "cross-attention", bs[0].out)
		}
		l.CrossAttn = *bs[1].attn
		if l.CrossAttn.Memory != enc.out {
			return nil, fmt.Errorf("recognise transformer: decoder layer %d cross-attention: its keys come from %s, not the encoder output %s%s", i, l.CrossAttn.Memory, enc.out, r.around(l.CrossAttn.K.Input))
		}
		if len(bs) < 3 || bs[2].ffn == nil {
			return nil, r.missing("decoder", i, "feed-forward block", bs[1].out)
		}
		l.FFN = *bs[2].ffn
		tm.Decoder = append(tm.Decoder, l)
		bs = bs[3:]
	}
	for _, b := range r.blocks {
		if !b.consumed && b.err == nil {
			return nil, fmt.Errorf("recognise transformer: %s is not on the residual stream of either stack%s", r.where(b), r.around(b.in))
		}
	}
	// Sizes and flavour.
	first := tm.Encoder[0]
	tm.PreNorm = enc.blocks[0].preNorm
	for _, b := range append(append([]*block(nil), enc.blocks...), dec.blocks...) {
		if b.preNorm != tm.PreNorm {
			return nil, fmt.Errorf("recognise transformer: %s mixes pre- and post-norm sublayers", r.where(b))
		}
	}
	tm.Hidden = first.SelfAttn.Q.Out.Len()
	tm.FFN = first.FFN.Dense1.Out.Len()
	tm.Heads = r.heads[first.SelfAttn.Softmax]
	tm.Activation = r.act[first.FFN.Hidden]
	if err := r.logits(tm, dec.out); err != nil {
		return nil, err
	}
	return tm, tm.check(r.m)
}

// where names a block for messages.
func (r *recognizer) where(b *block) string {
	switch {
	case b.attn != nil || b.anchor != nil && b.anchor.OpType == "Softmax":
		return "attention at Softmax " + graph.NodeName(b.anchor)
	case b.ffn != nil:
		return "feed-forward block at " + graph.NodeName(b.ffn.Dense1.Node)
	case b.anchor != nil:
		return "feed-forward block at " + b.anchor.OpType + " " + graph.NodeName(b.anchor)
	}
	return "sublayer"
}

// missing reports a layer part not found after stream value x; when a
// sublayer that failed to be read lies just downstream, its reason is the
// better message.
func (r *recognizer) missing(stack string, i int, part, x string) error {
	failed := map[*onnx.NodeProto]*block{}
	for _, b := range r.blocks {
		if b.err != nil {
			failed[b.anchor] = b
		}
	}
	// Breadth-first from x: the nearest failed Softmax is the one this
	// part would have been.
	seen := map[string]bool{x: true}
	queue := []string{x}
	for steps := 0; len(queue) > 0 && steps < 400; steps++ {
		v := queue[0]
		queue = queue[1:]
		for _, c := range r.m.Consumers(v) {
			if b := failed[c]; b != nil {
				return fmt.Errorf("recognise transformer: %s layer %d %s: %v", stack, i, part, b.err)
			}
			for _, o := range c.Output {
				if !seen[o] {
					seen[o] = true
					queue = append(queue, o)
				}
			}
		}
	}
	return fmt.Errorf("recognise transformer: %s layer %d: %s not found after %s%s", stack, i, part, x, r.around(x))
}

// layerNorm recognises n as the last node of a LayerNorm: the
// LayerNormalization op, or the decomposition exporters write below
// opset 17: Add(Mul(Div(Sub(x, mean), Sqrt(Add(ReduceMean(Pow(·, 2)), ε))), γ), β).
func (r *recognizer) layerNorm(n *onnx.NodeProto) *LayerNorm {
	if n.OpType == "LayerNormalization" {
		if len(n.Input) < 3 || graph.IntAttr(n, "axis", -1) != -1 && !r.isLastAxis(n.Input[0], graph.IntAttr(n, "axis", -1)) {
			return nil
		}
		return &LayerNorm{Input: n.Input[0], Output: n.Output[0], Scale: n.Input[1], Bias: n.Input[2], Epsilon: graph.FloatAttr(n, "epsilon", 1e-5)}
	}
	if n.OpType != "Add" {
		return nil
	}
	beta, mul := r.paramOperand(n)
	if beta == "" || mul == nil || mul.OpType != "Mul" {
		return nil
	}
	gamma, div := r.paramOperand(mul)
	if gamma == "" || div == nil || div.OpType != "Div" {
		return nil
	}
	sub, sqrt := r.m.Producer(div.Input[0]), r.m.Producer(div.Input[1])
	if sub == nil || sub.OpType != "Sub" || sqrt == nil || sqrt.OpType != "Sqrt" {
		return nil
	}
	mean := r.m.Producer(sub.Input[1])
	if mean == nil || mean.OpType != "ReduceMean" || mean.Input[0] != sub.Input[0] {
		return nil
	}
	addEps := r.m.Producer(sqrt.Input[0])
	if addEps == nil || addEps.OpType != "Add" {
		return nil
	}
	eps, ok := r.scalar(addEps.Input[1])
	if !ok {
		return nil
	}
	variance := r.m.Producer(addEps.Input[0])
	if variance == nil || variance.OpType != "ReduceMean" {
		return nil
	}
	pow := r.m.Producer(variance.Input[0])
	if pow == nil || (pow.OpType != "Pow" && pow.OpType != "Mul") || pow.Input[0] != div.Input[0] {
		return nil
	}
	return &LayerNorm{Input: sub.Input[0], Output: n.Output[0], Scale: gamma, Bias: beta, Epsilon: float32(eps)}
}

// paramOperand splits a binary node into its float initializer operand
// and the producer of the other.
func (r *recognizer) paramOperand(n *onnx.NodeProto) (string, *onnx.NodeProto) {
	for i := range 2 {
		if t := r.m.Initializer(n.Input[i]); t != nil && len(t.Dims) == 1 {
			return n.Input[i], r.m.Producer(n.Input[1-i])
		}
	}
	return "", nil
}

// attention reads the attention block around Softmax s.
func (r *recognizer) attention(s *onnx.NodeProto) *block {
	b := &block{anchor: s}
	a := &Attention{Softmax: s}
	fail := func(format string, args ...any) *block {
		b.err = fmt.Errorf(format, args...)
		return b
	}
	// Q·Kᵀ: back from the Softmax through the mask Add and scalings.
	scores, scale, err := r.scores(s.Input[0])
	if err != nil {
		return fail("attention scores Q·Kᵀ not found: %v%s", err, r.around(s.Input[0]))
	}
	a.QOperand, a.KOperand = r.skipQ(scores.Input[0]), r.skipQ(scores.Input[1])
	a.ScoreScale = scale
	// probs·V, through views and constant scalings of the probabilities.
	var ctx *onnx.NodeProto
	probsScale := 1.0
	for _, c := range r.forward(s.Output[0]) {
		if c.OpType != "MatMul" {
			continue
		}
		if b, k := r.back(c.Input[0]); b == s.Output[0] {
			ctx, probsScale = c, k
		}
	}
	if ctx == nil {
		return fail("probs·V not found: no MatMul reads the attention probabilities%s", r.around(s.Output[0]))
	}
	a.Probs, a.VOperand = r.skipQ(ctx.Input[0]), r.skipQ(ctx.Input[1])
	var qb, kb, vb string
	qb, a.QScale = r.back(a.QOperand)
	if a.Q, err = r.projection(qb); err != nil {
		return fail("Q projection not found: %v%s", err, r.around(qb))
	}
	kb, a.KScale = r.back(a.KOperand)
	if a.K, err = r.projection(kb); err != nil {
		return fail("K projection not found: %v%s", err, r.around(kb))
	}
	a.Scale = a.QScale * a.KScale * a.ScoreScale
	vb, a.VScale = r.back(a.VOperand)
	if a.V, err = r.projection(vb); err != nil {
		return fail("V projection not found: %v%s", err, r.around(vb))
	}
	// Output projection: the dense layer reading the merged context,
	// through views and constant scalings.
	var out *onnx.NodeProto
	for _, c := range r.forward(ctx.Output[0]) {
		if c.OpType != "MatMul" && c.OpType != "Gemm" {
			continue
		}
		if b, k := r.back(c.Input[0]); b == ctx.Output[0] {
			out, a.ContextScale = c, probsScale*k
		}
	}
	if out == nil {
		return fail("output projection not found after the context%s", r.around(ctx.Output[0]))
	}
	a.Context = r.skipQ(out.Input[0])
	if a.Out, err = r.denseAfter(out); err != nil {
		return fail("output projection: %v%s", err, r.around(out.Output[0]))
	}
	hidden := a.Q.Out.Len()
	if a.K.Out.Len() != hidden || a.V.Out.Len() != hidden || a.Out.Out.Len() != hidden {
		return fail("Q, K, V and output projections have widths %d, %d, %d, %d; they must agree", hidden, a.K.Out.Len(), a.V.Out.Len(), a.Out.Out.Len())
	}
	dh := r.lastDim(a.QOperand)
	if dh <= 0 || hidden%dh != 0 {
		return fail("cannot tell the number of heads: the Q operand %s has last dimension %d, width %d", a.QOperand, dh, hidden)
	}
	if r.heads == nil {
		r.heads = map[*onnx.NodeProto]int{}
	}
	r.heads[s] = hidden / dh
	qIn, kIn := r.base(a.Q.Input), r.base(a.K.Input)
	if r.base(a.V.Input) != kIn {
		return fail("K and V read different inputs (%s, %s)", a.K.Input, a.V.Input)
	}
	a.Self, a.Memory = qIn == kIn, kIn
	if err := r.residual(b, a.Out.Output, qIn, &a.Norm, &a.Residual); err != nil {
		return fail("%v", err)
	}
	b.attn = a
	return b
}

// scores finds the Q·Kᵀ MatMul behind the Softmax input v, through mask
// additions and constant scalings, and returns their product.
func (r *recognizer) scores(v string) (*onnx.NodeProto, float64, error) {
	scale := 1.0
	for range 16 {
		v = r.skipQ(v)
		p := r.m.Producer(v)
		if p == nil {
			return nil, 0, fmt.Errorf("%s is not computed", v)
		}
		switch p.OpType {
		case "MatMul":
			if r.isConst(p.Input[0]) || r.isConst(p.Input[1]) {
				return nil, 0, fmt.Errorf("MatMul %s has a constant operand", graph.NodeName(p))
			}
			return p, scale, nil
		case "Mul", "Div":
			if x, c, ok := r.unscale(p); ok {
				v, scale = x, scale*c
				continue
			}
			return nil, 0, fmt.Errorf("%s %s scales by a non-constant", p.OpType, graph.NodeName(p))
		case "Add", "Sub", "Where":
			// The mask operand is data-independent of Q and K; pick the
			// operand that leads to a MatMul of two activations.
			ins := p.Input
			if p.OpType == "Where" {
				ins = p.Input[1:]
			}
			next := ""
			for _, in := range ins {
				if r.reachesScores(in, 8) {
					next = in
					break
				}
			}
			if next == "" {
				return nil, 0, fmt.Errorf("no operand of %s %s comes from Q·Kᵀ", p.OpType, graph.NodeName(p))
			}
			v = next
		case "Reshape", "Transpose", "Identity", "Cast":
			v = p.Input[0]
		default:
			return nil, 0, fmt.Errorf("%s is made by %s %s", v, p.OpType, graph.NodeName(p))
		}
	}
	return nil, 0, fmt.Errorf("no Q·Kᵀ MatMul within 16 nodes of %s", v)
}

// reachesScores reports whether v comes from a MatMul of two activations
// within depth nodes.
func (r *recognizer) reachesScores(v string, depth int) bool {
	if depth == 0 {
		return false
	}
	p := r.m.Producer(r.skipQ(v))
	if p == nil {
		return false
	}
	if p.OpType == "MatMul" {
		return !r.isConst(p.Input[0]) && !r.isConst(p.Input[1])
	}
	for _, in := range p.Input {
		if in != "" && r.reachesScores(in, depth-1) {
			return true
		}
	}
	return false
}

// residual finds the residual Add after a sublayer's output y whose input
// (seen through views) is in, and from it the sublayer's LayerNorm and
// placement.
func (r *recognizer) residual(b *block, y, in string, norm **LayerNorm, res *string) error {
	var add *onnx.NodeProto
	other := ""
	yb, ys := r.back(y)
	for _, c := range r.forward(y) {
		if c.OpType != "Add" {
			continue
		}
		for i := range 2 {
			if b, k := r.back(c.Input[i]); b == yb && !r.isConst(c.Input[1-i]) {
				if !near(k, ys) {
					return fmt.Errorf("the sublayer output is scaled by %.6g before the residual Add %s; a scaled residual branch is not a standard transformer layer%s", k/ys, graph.NodeName(c), r.around(y))
				}
				add, other = c, c.Input[1-i]
			}
		}
	}
	if add == nil {
		return fmt.Errorf("residual Add not found after the sublayer output%s", r.around(y))
	}
	*res = add.Output[0]
	if ln := r.lnWithOutput(in); ln != nil && ln.Input == other {
		*norm, b.in, b.out, b.preNorm = ln, other, add.Output[0], true
		return nil
	}
	if r.base(other) != in && other != in {
		return fmt.Errorf("residual Add %s adds %s, which is neither the sublayer input %s nor its LayerNorm's input%s", graph.NodeName(add), other, in, r.around(add.Output[0]))
	}
	ln := r.norms[add.Output[0]]
	if ln == nil {
		return fmt.Errorf("post-norm sublayer without a LayerNorm after its residual Add %s%s", graph.NodeName(add), r.around(add.Output[0]))
	}
	*norm, b.in, b.out = ln, other, ln.Output
	return nil
}

// lnWithOutput returns the LayerNorm producing v.
func (r *recognizer) lnWithOutput(v string) *LayerNorm {
	for _, ln := range r.norms {
		if ln.Output == v {
			return ln
		}
	}
	return nil
}

// ffnAt reads the feed-forward block around activation node n (Relu,
// Gelu, or the Erf of x·½(1+erf(x/√2))).
func (r *recognizer) ffnAt(n *onnx.NodeProto) *block {
	var x, y, act string
	switch n.OpType {
	case "Relu":
		x, y, act = n.Input[0], n.Output[0], "relu"
	case "Gelu":
		x, y, act = n.Input[0], n.Output[0], "gelu"
	case "Erf":
		x, _ = r.back(n.Input[0])
		y = r.geluOutput(n, x)
		if y == "" {
			return nil
		}
		act = "gelu"
	}
	// dense2 reads y through views and constant scalings (GELU's own ½
	// may come last, so compare what both are scalings of).
	yb, ys := r.back(y)
	var d2 *onnx.NodeProto
	hiddenScale := 1.0
	for _, c := range r.forward(y) {
		if c.OpType != "MatMul" && c.OpType != "Gemm" || r.isConst(c.Input[0]) {
			continue
		}
		if b, k := r.back(c.Input[0]); b == yb {
			d2, hiddenScale = c, k/ys
		}
	}
	if d2 == nil {
		return nil // an activation outside a feed-forward block
	}
	b := &block{}
	f := &FFN{Hidden: r.skipQ(d2.Input[0]), HiddenScale: hiddenScale}
	var err error
	if f.Dense1, err = r.projection(x); err != nil {
		b.err = fmt.Errorf("feed-forward dense1 not found: %v%s", err, r.around(x))
		b.anchor = n
		return b
	}
	if f.Dense2, err = r.denseAfter(d2); err != nil {
		b.err = fmt.Errorf("feed-forward dense2: %v%s", err, r.around(d2.Output[0]))
		b.anchor = n
		return b
	}
	if err := r.residual(b, f.Dense2.Output, r.base(f.Dense1.Input), &f.Norm, &f.Residual); err != nil {
		b.err, b.anchor = err, n
		return b
	}
	if r.act == nil {
		r.act = map[string]string{}
	}
	r.act[f.Hidden] = act
	b.ffn = f
	return b
}

// geluOutput returns the output of the erf GELU around Erf node e with
// input x: the node after which x·½(1+erf(·)) is complete.
func (r *recognizer) geluOutput(e *onnx.NodeProto, x string) string {
	out, sawX := "", false
	n := e
	for range 5 {
		cs := r.m.Consumers(n.Output[0])
		if len(cs) != 1 {
			break
		}
		c := cs[0]
		if c.OpType != "Add" && c.OpType != "Mul" && c.OpType != "Div" {
			break
		}
		hasX := c.Input[0] == x || c.Input[1] == x
		_, k0 := r.scalar(c.Input[0])
		_, k1 := r.scalar(c.Input[1])
		switch {
		case hasX && c.OpType == "Mul":
			sawX, out = true, c.Output[0]
		case sawX && (k0 || k1):
			out = c.Output[0]
		case sawX:
			return out
		}
		n = c
	}
	if !sawX {
		return ""
	}
	return out
}

// embeddings finds the token lookups: Gathers of a float matrix
// initializer by a graph input, scaled, plus positions.
func (r *recognizer) embeddings() (map[string]Embedding, error) {
	embs := map[string]Embedding{}
	for _, n := range r.m.Graph().Node {
		if n.OpType != "Gather" || graph.IntAttr(n, "axis", 0) != 0 {
			continue
		}
		table := r.skipQ(n.Input[0])
		t := r.m.Initializer(table)
		ids := n.Input[1]
		for p := r.m.Producer(ids); p != nil && p.OpType == "Cast"; p = r.m.Producer(ids) {
			ids = p.Input[0]
		}
		if t == nil || len(t.Dims) != 2 || graph.TensorType(t) != graph.Float || r.m.Input(ids) == nil {
			continue
		}
		if _, dup := embs[ids]; dup {
			return nil, fmt.Errorf("recognise transformer: graph input %s is looked up twice%s", ids, r.around(n.Output[0]))
		}
		e := Embedding{Table: table, Scale: 1, Lookup: n}
		x := n.Output[0]
		for {
			cs := r.m.Consumers(x)
			if len(cs) != 1 {
				break
			}
			c := cs[0]
			if c.OpType == "Mul" || c.OpType == "Div" {
				k, ok := r.scalar(c.Input[1])
				if !ok && c.OpType == "Mul" {
					k, ok = r.scalar(c.Input[0])
				}
				if !ok {
					break
				}
				if c.OpType == "Div" {
					k = 1 / k
				}
				e.Scale *= float32(k)
				x = c.Output[0]
				continue
			}
			if c.OpType == "Add" && e.Positions == "" && e.PositionTable == "" {
				pos := c.Input[0]
				if pos == x {
					pos = c.Input[1]
				}
				e.Positions = pos
				if tbl := r.positionTable(pos); tbl != "" {
					e.PositionTable, e.Positions = tbl, ""
				}
				x = c.Output[0]
				continue
			}
			break
		}
		e.Output = x
		embs[ids] = e
	}
	if len(embs) == 0 {
		return nil, fmt.Errorf("recognise transformer: no token embedding: no Gather reads a float [vocab, hidden] initializer with a graph input's ids")
	}
	return embs, nil
}

// positionTable returns the initializer [max_len, hidden] that v slices
// from row 0, or "".
func (r *recognizer) positionTable(v string) string {
	for {
		p := r.m.Producer(v)
		if p == nil {
			t := r.m.Initializer(v)
			if t != nil && len(t.Dims) == 2 {
				return v
			}
			return ""
		}
		switch p.OpType {
		case "Slice":
			// The end is the sequence length, known only at run time.
			if len(p.Input) < 3 {
				return ""
			}
			starts, ok := r.ints[p.Input[1]]
			axes := []int64{0}
			if len(p.Input) > 3 && p.Input[3] != "" {
				axes = r.ints[p.Input[3]]
			}
			if !ok || len(starts) != 1 || starts[0] != 0 || len(axes) != 1 || axes[0] != 0 {
				return ""
			}
		case "Unsqueeze", "Reshape", "Identity":
		default:
			return ""
		}
		v = p.Input[0]
	}
}

// logits finds the output projection: a graph output computed by a dense
// layer from the decoder output.
func (r *recognizer) logits(tm *Model, dec string) error {
	var errs []string
	for _, o := range r.m.Graph().Output {
		// Exporters may flatten the decoder output for a 2-D Gemm and
		// reshape the logits back: look through views on the output side.
		v := o.Name
		for p := r.m.Producer(v); p != nil && isView(p.OpType) && p.OpType != "Transpose" && p.OpType != "Dropout"; p = r.m.Producer(v) {
			v = p.Input[0]
		}
		p, err := r.projection(v)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", o.Name, err))
			continue
		}
		if r.base(p.Input) != dec {
			errs = append(errs, fmt.Sprintf("%s: reads %s, not the decoder output %s", o.Name, p.Input, dec))
			continue
		}
		tm.Logits, tm.LogitsOutput = p, o.Name
		tm.Vocab = p.Out.Len()
		tm.Tied = p.Weight == tm.Tgt.Table && p.Transposed
		if !tm.Tied {
			tm.Tied = r.transposedCopy(p.Weight, p.Transposed, tm.Tgt.Table)
		}
		return nil
	}
	return fmt.Errorf("recognise transformer: output projection not found: no graph output is a dense layer of the decoder output (%s)%s", strings.Join(errs, "; "), r.around(dec))
}

// transposedCopy reports whether weight, read as an [hidden, vocab]
// operand (transposed when stored [vocab, hidden]), holds exactly the
// table's values: the transposed copy PyTorch writes for a tied
// projection, or a plain copy read through transB or a Transpose.
func (r *recognizer) transposedCopy(weight string, transposed bool, table string) bool {
	w, t := r.m.Initializer(weight), r.m.Initializer(table)
	if w == nil || t == nil || len(w.Dims) != 2 || len(t.Dims) != 2 {
		return false
	}
	rows, cols := int(t.Dims[0]), int(t.Dims[1])
	if transposed && (w.Dims[0] != t.Dims[0] || w.Dims[1] != t.Dims[1]) || !transposed && (w.Dims[0] != t.Dims[1] || w.Dims[1] != t.Dims[0]) {
		return false
	}
	wf, err1 := graph.Floats(w)
	tf, err2 := graph.Floats(t)
	if err1 != nil || err2 != nil {
		return false
	}
	for i := range rows {
		for j := range cols {
			x := wf[j*rows+i]
			if transposed {
				x = wf[i*cols+j]
			}
			if tf[i*cols+j] != x {
				return false
			}
		}
	}
	return true
}

// check verifies the sizes of every part against the model's.
func (tm *Model) check(m *graph.Model) error {
	h := tm.Hidden
	if tm.Heads <= 0 || h%tm.Heads != 0 {
		return fmt.Errorf("recognise transformer: %d heads do not divide hidden size %d", tm.Heads, h)
	}
	tbl := m.Initializer(tm.Tgt.Table)
	if int(tbl.Dims[1]) != h {
		return fmt.Errorf("recognise transformer: target table %s is %v, not [vocab, %d]", tm.Tgt.Table, tbl.Dims, h)
	}
	if s := m.Initializer(tm.Src.Table); int(s.Dims[1]) != h {
		return fmt.Errorf("recognise transformer: source table %s is %v, not [vocab, %d]", tm.Src.Table, s.Dims, h)
	}
	for i, l := range tm.Encoder {
		if err := checkSub(fmt.Sprintf("encoder layer %d", i), h, tm, l.SelfAttn, nil, l.FFN); err != nil {
			return err
		}
	}
	for i, l := range tm.Decoder {
		if err := checkSub(fmt.Sprintf("decoder layer %d", i), h, tm, l.SelfAttn, &l.CrossAttn, l.FFN); err != nil {
			return err
		}
	}
	return nil
}

func checkSub(where string, h int, tm *Model, self Attention, cross *Attention, f FFN) error {
	atts := []Attention{self}
	if cross != nil {
		atts = append(atts, *cross)
	}
	for _, a := range atts {
		if a.Q.Out.Len() != h {
			return fmt.Errorf("recognise transformer: %s: attention width %d, model width %d", where, a.Q.Out.Len(), h)
		}
		if !(a.Scale > 0) || math.IsInf(a.Scale, 0) {
			return fmt.Errorf("recognise transformer: %s: attention scores are scaled by %.6g; a softmax temperature must be positive", where, a.Scale)
		}
	}
	if f.Dense1.Out.Len() != tm.FFN || f.Dense2.Out.Len() != h {
		return fmt.Errorf("recognise transformer: %s: feed-forward widths %d→%d, model %d→%d", where, f.Dense1.Out.Len(), f.Dense2.Out.Len(), tm.FFN, h)
	}
	return nil
}

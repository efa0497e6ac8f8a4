package incremental

import (
	"fmt"
	"math"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/transformer"
	"github.com/qatc/qatc/seq2seq"
	"google.golang.org/protobuf/proto"
)

// maskBias is added to the attention scores of padded source positions:
// after the row maximum is subtracted its exp is 0 in float32, as any
// exporter's mask value gives.
const maskBias = -1e9

// encoderGraph builds input_ids, attention_mask → last_hidden_state.
func (b *builder) encoderGraph() error {
	tm := b.tm
	b.m.AddInput(seq2seq.InputIDs, graph.Int64, []int64{-1, -1}, seq2seq.DimBatch, seq2seq.DimSrc)
	b.m.AddInput(seq2seq.AttentionMask, graph.Int64, []int64{-1, -1}, seq2seq.DimBatch, seq2seq.DimSrc)
	mask := b.padMask(seq2seq.AttentionMask)
	x, err := b.embed(tm.Src, seq2seq.InputIDs, "")
	if err != nil {
		return err
	}
	for i := range tm.Encoder {
		l := &tm.Encoder[i]
		where := fmt.Sprintf("encoder layer %d", i)
		if x, err = b.sublayer(x, l.SelfAttn.Norm, func(h string) (string, error) {
			out, _, _, err := b.attention(&l.SelfAttn, h, kv{mask: mask})
			return out, err
		}); err != nil {
			return fmt.Errorf("%s self-attention: %w", where, err)
		}
		if x, err = b.sublayer(x, l.FFN.Norm, func(h string) (string, error) { return b.ffn(&l.FFN, h) }); err != nil {
			return fmt.Errorf("%s feed-forward block: %w", where, err)
		}
	}
	if tm.EncoderNorm != nil {
		if x, err = b.layerNorm(tm.EncoderNorm, x); err != nil {
			return fmt.Errorf("encoder LayerNorm: %w", err)
		}
	}
	if _, err := b.rename(x, seq2seq.LastHiddenState); err != nil {
		return err
	}
	b.m.AddOutput(seq2seq.LastHiddenState, graph.Float, []int64{-1, -1, int64(tm.Hidden)}, seq2seq.DimBatch, seq2seq.DimSrc)
	return nil
}

// decoderGraph builds the first decoder step: no past; it returns the
// self-attention cache and the cross-attention keys and values.
func (b *builder) decoderGraph() error {
	tm := b.tm
	b.m.AddInput(seq2seq.InputIDs, graph.Int64, []int64{-1, -1}, seq2seq.DimBatch, seq2seq.DimTgt)
	b.m.AddInput(seq2seq.EncoderAttentionMask, graph.Int64, []int64{-1, -1}, seq2seq.DimBatch, seq2seq.DimSrc)
	b.m.AddInput(seq2seq.EncoderHiddenStates, graph.Float, []int64{-1, -1, int64(tm.Hidden)}, seq2seq.DimBatch, seq2seq.DimSrc)
	mask := b.padMask(seq2seq.EncoderAttentionMask)
	// Causal bias [len, len]: maskBias strictly above the diagonal.
	n := b.op("Shape", "decoder/length", []string{seq2seq.InputIDs}, graph.AttrInt("start", 1), graph.AttrInt("end", 2))
	square := b.op("Concat", "decoder/causal/shape", []string{n, n}, graph.AttrInt("axis", 0))
	fill := b.op("ConstantOfShape", "decoder/causal/fill", []string{square},
		graph.AttrTensor("value", graph.FloatTensor("value", []int64{1}, []float32{maskBias})))
	causal := b.op("Trilu", "decoder/causal/bias", []string{fill, b.scalarInt(1)}, graph.AttrInt("upper", 1))
	x, err := b.embed(tm.Tgt, seq2seq.InputIDs, "")
	if err != nil {
		return err
	}
	return b.decoderLayers(x, func(i int) (kv, kv) {
		return kv{mask: causal, present: [2]string{seq2seq.Present(i, "decoder", "key"), seq2seq.Present(i, "decoder", "value")}},
			kv{mask: mask, memory: seq2seq.EncoderHiddenStates, present: [2]string{seq2seq.Present(i, "encoder", "key"), seq2seq.Present(i, "encoder", "value")}}
	}, seq2seq.DimTgt, seq2seq.DimEncoderOut)
}

// withPastGraph builds a decoder step over the cache.
func (b *builder) withPastGraph() error {
	tm := b.tm
	b.m.AddInput(seq2seq.InputIDs, graph.Int64, []int64{-1, 1}, seq2seq.DimBatch)
	b.m.AddInput(seq2seq.EncoderAttentionMask, graph.Int64, []int64{-1, -1}, seq2seq.DimBatch, seq2seq.DimSrc)
	dh := int64(tm.Hidden / tm.Heads)
	for i := range tm.Decoder {
		for _, s := range []struct{ stack, dim string }{{"decoder", seq2seq.DimPast}, {"encoder", seq2seq.DimEncoderOut}} {
			for _, k := range []string{"key", "value"} {
				b.m.AddInput(seq2seq.Past(i, s.stack, k), graph.Float, []int64{-1, int64(tm.Heads), -1, dh}, seq2seq.DimBatch, "", s.dim)
			}
		}
	}
	b.oneStep = true
	mask := b.padMask(seq2seq.EncoderAttentionMask)
	past := b.op("Shape", "decoder/past_length", []string{seq2seq.Past(0, "decoder", "key")}, graph.AttrInt("start", 2), graph.AttrInt("end", 3))
	x, err := b.embed(tm.Tgt, seq2seq.InputIDs, past)
	if err != nil {
		return err
	}
	return b.decoderLayers(x, func(i int) (kv, kv) {
		return kv{past: [2]string{seq2seq.Past(i, "decoder", "key"), seq2seq.Past(i, "decoder", "value")},
				present: [2]string{seq2seq.Present(i, "decoder", "key"), seq2seq.Present(i, "decoder", "value")}},
			kv{mask: mask, past: [2]string{seq2seq.Past(i, "encoder", "key"), seq2seq.Past(i, "encoder", "value")}, cross: true}
	}, seq2seq.DimPastPlus1, "")
}

// decoderLayers runs the decoder stack from x with each layer's
// self- and cross-attention key/value sources, then the output
// projection, and declares the outputs: logits and each present value
// (selfDim and crossDim name their length dims; crossDim "" when the
// cross-attention values are not outputs).
func (b *builder) decoderLayers(x string, kvs func(int) (kv, kv), selfDim, crossDim string) error {
	tm := b.tm
	var err error
	// The logits' length: the decoder inputs', one with a past.
	logitsLen := int64(-1)
	if selfDim == seq2seq.DimPastPlus1 {
		logitsLen = 1
	}
	var outputs []*onnx.ValueInfoProto
	dh := int64(tm.Hidden / tm.Heads)
	cache := func(name, dim string) {
		outputs = append(outputs, graph.ValueInfo(name, graph.Float, []int64{-1, int64(tm.Heads), -1, dh}, seq2seq.DimBatch, "", dim))
	}
	for i := range tm.Decoder {
		l := &tm.Decoder[i]
		where := fmt.Sprintf("decoder layer %d", i)
		self, cross := kvs(i)
		if self.memory == "" && self.past[0] == "" {
			self.self = true
		}
		if x, err = b.sublayer(x, l.SelfAttn.Norm, func(h string) (string, error) {
			out, _, _, err := b.attention(&l.SelfAttn, h, self)
			return out, err
		}); err != nil {
			return fmt.Errorf("%s self-attention: %w", where, err)
		}
		cache(self.present[0], selfDim)
		cache(self.present[1], selfDim)
		if x, err = b.sublayer(x, l.CrossAttn.Norm, func(h string) (string, error) {
			out, _, _, err := b.attention(&l.CrossAttn, h, cross)
			return out, err
		}); err != nil {
			return fmt.Errorf("%s cross-attention: %w", where, err)
		}
		if crossDim != "" {
			cache(cross.present[0], crossDim)
			cache(cross.present[1], crossDim)
		}
		if x, err = b.sublayer(x, l.FFN.Norm, func(h string) (string, error) { return b.ffn(&l.FFN, h) }); err != nil {
			return fmt.Errorf("%s feed-forward block: %w", where, err)
		}
	}
	if tm.DecoderNorm != nil {
		if x, err = b.layerNorm(tm.DecoderNorm, x); err != nil {
			return fmt.Errorf("decoder LayerNorm: %w", err)
		}
	}
	base, steps, err := b.walk(tm.Logits.Node.Input[0], "")
	if err != nil {
		return fmt.Errorf("output projection: %w", err)
	}
	if !b.streams[base] {
		return fmt.Errorf("output projection reads %s, not the decoder output", base)
	}
	if x, err = b.apply(x, steps); err != nil {
		return err
	}
	ys, err := b.project(x, &tm.Logits)
	if err != nil {
		return fmt.Errorf("output projection: %w", err)
	}
	if _, err := b.rename(ys[0], seq2seq.Logits); err != nil {
		return err
	}
	b.m.AddOutput(seq2seq.Logits, graph.Float, []int64{-1, logitsLen, int64(tm.Vocab)}, seq2seq.DimBatch, seq2seq.DimTgt)
	g := b.m.Graph()
	g.Output = append(g.Output, outputs...)
	b.m.Reindex()
	return nil
}

// padMask returns the additive attention bias [batch, 1, 1, len] of an
// int64 mask input: maskBias where it is 0.
func (b *builder) padMask(input string) string {
	isPad := b.op("Equal", "mask/is_pad", []string{input, b.scalarInt(0)})
	f := b.op("Cast", "mask/float", []string{isPad}, graph.AttrInt("to", int64(graph.Float)))
	bias := b.op("Mul", "mask/bias", []string{f, b.float(maskBias)})
	return b.op("Unsqueeze", "mask/attention_bias", []string{bias, b.ints(1, 2)})
}

// sublayer wraps f with its residual connection and LayerNorm: x + f(LN(x))
// in a pre-norm model, LN(x + f(x)) in a post-norm one.
func (b *builder) sublayer(x string, ln *transformer.LayerNorm, f func(string) (string, error)) (string, error) {
	if ln == nil {
		return "", fmt.Errorf("no LayerNorm")
	}
	if b.tm.PreNorm {
		h, err := b.layerNorm(ln, x)
		if err != nil {
			return "", err
		}
		y, err := f(h)
		if err != nil {
			return "", err
		}
		return b.residual(x, y), nil
	}
	y, err := f(x)
	if err != nil {
		return "", err
	}
	return b.layerNorm(ln, b.residual(x, y))
}

// layerNorm normalizes x with ln's parameters.
func (b *builder) layerNorm(ln *transformer.LayerNorm, x string) (string, error) {
	scale, err := b.copyConst(ln.Scale)
	if err != nil {
		return "", fmt.Errorf("LayerNorm scale: %w", err)
	}
	bias, err := b.copyConst(ln.Bias)
	if err != nil {
		return "", fmt.Errorf("LayerNorm bias: %w", err)
	}
	return b.op("LayerNormalization", "layer_norm", []string{x, scale, bias},
		graph.AttrInt("axis", -1), graph.AttrFloat("epsilon", ln.Epsilon)), nil
}

// residual returns x + y. It stays an Add before the next LayerNorm:
// onnxruntime 1.30's CPU SkipLayerNormalization, which would fuse the
// two, takes longer than both (a demo-model decode: 21% more CPU time
// for an int8 directory, 7% for fp32).
func (b *builder) residual(x, y string) string {
	return b.op("Add", "residual", []string{x, y})
}

// embed returns the scaled token embeddings of ids plus their positions:
// from 0 when past is "", else the one position past (a [1] tensor).
func (b *builder) embed(e transformer.Embedding, ids, past string) (string, error) {
	src := b.src()
	table, err := b.weight(e.Lookup.Input[0], e.Table)
	if err != nil {
		return "", err
	}
	x := b.op("Gather", "embedding", []string{table, ids}, graph.AttrInt("axis", 0))
	// Replay the source's scalings and position Add, in their order.
	v := e.Lookup.Output[0]
	for v != e.Output {
		cs := src.Consumers(v)
		if len(cs) != 1 {
			return "", fmt.Errorf("embedding %s: %s has %d readers before the embedding output %s", e.Table, v, len(cs), e.Output)
		}
		c := cs[0]
		switch c.OpType {
		case "Mul", "Div":
			i, ok := b.scaling(c)
			if !ok || c.Input[i] != v {
				return "", fmt.Errorf("embedding %s: %s %s is not a scaling by a constant", e.Table, c.OpType, graph.NodeName(c))
			}
			if x, err = b.apply(x, []step{{node: c, data: i}}); err != nil {
				return "", err
			}
		case "Add":
			pos, err := b.positions(e, ids, past)
			if err != nil {
				return "", err
			}
			x = b.op("Add", "embedding/positions", []string{x, pos})
		default:
			return "", fmt.Errorf("embedding %s: unexpected %s %s before the embedding output", e.Table, c.OpType, graph.NodeName(c))
		}
		v = c.Output[0]
	}
	return x, nil
}

// positions returns the position embeddings of ids: rows 0..len-1, or
// the row past.
func (b *builder) positions(e transformer.Embedding, ids, past string) (string, error) {
	if e.PositionTable != "" {
		table, err := b.copyConst(e.PositionTable)
		if err != nil {
			return "", err
		}
		if past != "" {
			return b.op("Gather", "positions", []string{table, past}, graph.AttrInt("axis", 0)), nil
		}
		n := b.op("Shape", "length", []string{ids}, graph.AttrInt("start", 1), graph.AttrInt("end", 2))
		return b.op("Slice", "positions", []string{table, b.ints(0), n, b.ints(0)}), nil
	}
	if e.Positions == "" {
		return "", fmt.Errorf("embedding %s adds a value the recogniser could not name as positions", e.Table)
	}
	// Computed positions: copy their computation, reading these ids; with
	// a past, read past+1 BOS tokens and keep the last position.
	input := ids
	if past != "" {
		batch := b.op("Shape", "batch", []string{ids}, graph.AttrInt("start", 0), graph.AttrInt("end", 1))
		n := b.op("Add", "length", []string{past, b.ints(1)})
		shape := b.op("Concat", "positions/shape", []string{batch, n}, graph.AttrInt("axis", 0))
		input = b.op("ConstantOfShape", "positions/ids", []string{shape},
			graph.AttrTensor("value", graph.Int64Tensor("value", []int64{1}, []int64{b.opts.BOS})))
	}
	pos, err := b.copyCone(e.Positions, map[string]string{b.embeddingInput(e): input})
	if err != nil {
		return "", fmt.Errorf("positions %s: %w", e.Positions, err)
	}
	if past != "" {
		pos = b.op("Slice", "positions/last", []string{pos, b.ints(-1), b.ints(math.MaxInt64), b.ints(-2)})
	}
	return pos, nil
}

// embeddingInput returns the graph input e looks up.
func (b *builder) embeddingInput(e transformer.Embedding) string {
	if e.Table == b.tm.Src.Table && e.Lookup == b.tm.Src.Lookup {
		return b.tm.SrcInput
	}
	return b.tm.TgtInput
}

// copyCone copies the source's computation of v into m, reading subst[x]
// for each source graph input x it reads; other graph inputs are errors.
// Values keep their names, so a cone is copied once per graph.
func (b *builder) copyCone(v string, subst map[string]string) (string, error) {
	if v == "" {
		return "", nil
	}
	if n, ok := subst[v]; ok {
		return n, nil
	}
	if n, ok := b.copied[v]; ok {
		return n, nil
	}
	src := b.src()
	if src.Initializer(v) != nil {
		return b.copyConst(v)
	}
	p := src.Producer(v)
	if p == nil {
		return "", fmt.Errorf("it reads the graph input %s", v)
	}
	n := proto.Clone(p).(*onnx.NodeProto)
	for i, in := range p.Input {
		c, err := b.copyCone(in, subst)
		if err != nil {
			return "", err
		}
		n.Input[i] = c
	}
	b.m.AddNode(n)
	for _, o := range p.Output {
		b.copied[o] = o
	}
	return v, nil
}

// kv says where an attention's keys and values come from and where they go.
type kv struct {
	self   bool      // from the query's input (no past)
	memory string    // from this value of m (the encoder states)
	past   [2]string // the cached keys and values, inputs of m
	cross  bool      // past holds all of them (cross-attention): nothing is computed
	// present names the keys and values (as the attention reads them) as
	// outputs; "" keeps them internal.
	present [2]string
	mask    string // additive score bias, "" for none
}

// attnPaths is how the source gets from an attention's projections to
// the operands of its two products.
type attnPaths struct {
	q, k, v []step // projection output → Q, K, V operand
	scores  []step // Q·Kᵀ → Softmax input (scalings; masks are the builder's)
	probs   []step // Softmax output → probs operand
	ctx     []step // probs·V → output projection input
}

// paths reads (once) how the source computes attention a.
func (b *builder) paths(a *transformer.Attention) (*attnPaths, error) {
	if p, ok := b.attn[a.Softmax]; ok {
		return p, nil
	}
	src := b.src()
	s := a.Softmax
	if ax := graph.IntAttr(s, "axis", -1); ax != -1 && ax != 3 {
		return nil, fmt.Errorf("softmax %s is over axis %d, not the last", graph.NodeName(s), ax)
	}
	p := &attnPaths{}
	// Back from the Softmax to Q·Kᵀ through scalings, views, quantizers
	// and mask additions.
	var rev []step
	v := s.Input[0]
	var scores *onnx.NodeProto
	for range 32 {
		if q := b.quant[v]; q != nil {
			rev = append(rev, step{q: q})
			v = q.Tensor
			continue
		}
		n := src.Producer(v)
		if n == nil {
			break
		}
		if n.OpType == "MatMul" && !b.isConst(n.Input[0]) && !b.isConst(n.Input[1]) {
			scores = n
			break
		}
		switch {
		case views[n.OpType]:
			v = n.Input[0]
			continue
		case n.OpType == "Mul" || n.OpType == "Div":
			if i, ok := b.scaling(n); ok {
				rev = append(rev, step{node: n, data: i})
				v = n.Input[i]
				continue
			}
		case n.OpType == "Add" || n.OpType == "Sub" || n.OpType == "Where":
			ins := n.Input
			if n.OpType == "Where" {
				ins = ins[1:]
			}
			next := ""
			for _, in := range ins {
				if !b.isConst(in) && b.reachesProduct(in, 12) {
					next = in
					break
				}
			}
			if next != "" {
				v = next
				continue
			}
		}
		break
	}
	if scores == nil {
		return nil, fmt.Errorf("Q·Kᵀ not found behind softmax %s (%s)", graph.NodeName(s), describe(src, v))
	}
	for i := len(rev) - 1; i >= 0; i-- {
		p.scores = append(p.scores, rev[i])
	}
	var err error
	if _, p.q, err = b.walk(scores.Input[0], a.Q.Output); err != nil {
		return nil, fmt.Errorf("Q operand: %w", err)
	}
	if _, p.k, err = b.walk(scores.Input[1], a.K.Output); err != nil {
		return nil, fmt.Errorf("K operand: %w", err)
	}
	// probs·V: the MatMul whose left operand comes from the Softmax.
	var ctx *onnx.NodeProto
	for _, n := range src.Graph().Node {
		if n.OpType != "MatMul" {
			continue
		}
		if base, _, err := b.walk(n.Input[0], s.Output[0]); err == nil && base == s.Output[0] {
			ctx = n
			break
		}
	}
	if ctx == nil {
		return nil, fmt.Errorf("probs·V not found after softmax %s", graph.NodeName(s))
	}
	if _, p.probs, err = b.walk(ctx.Input[0], s.Output[0]); err != nil {
		return nil, err
	}
	if _, p.v, err = b.walk(ctx.Input[1], a.V.Output); err != nil {
		return nil, fmt.Errorf("V operand: %w", err)
	}
	if _, p.ctx, err = b.walk(a.Out.Node.Input[0], ctx.Output[0]); err != nil {
		return nil, fmt.Errorf("output projection input: %w", err)
	}
	b.attn[s] = p
	return p, nil
}

// reachesProduct reports whether source value v comes from a MatMul of
// two computed values within depth nodes.
func (b *builder) reachesProduct(v string, depth int) bool {
	if depth == 0 {
		return false
	}
	p := b.src().Producer(v)
	if p == nil {
		return false
	}
	if p.OpType == "MatMul" {
		return !b.isConst(p.Input[0]) && !b.isConst(p.Input[1])
	}
	for _, in := range p.Input {
		if in != "" && b.reachesProduct(in, depth-1) {
			return true
		}
	}
	return false
}

// attention computes attention a for the query stream value h (the
// sublayer's input after its pre-norm) and returns the output
// projection's output and the keys and values the products read.
func (b *builder) attention(a *transformer.Attention, h string, src kv) (string, string, string, error) {
	p, err := b.paths(a)
	if err != nil {
		return "", "", "", err
	}
	heads := int64(b.tm.Heads)
	dh := int64(b.tm.Hidden) / heads
	split := func(x string) string {
		if b.oneStep {
			// [batch, 1, hidden] is [batch, heads, 1, head] in memory.
			return b.op("Reshape", "heads", []string{x, b.ints(0, heads, 1, dh)})
		}
		x = b.op("Reshape", "heads", []string{x, b.ints(0, 0, heads, dh)})
		return b.op("Transpose", "heads", []string{x}, graph.AttrInts("perm", 0, 2, 1, 3))
	}
	in := func(pr *transformer.Projection, x string) (string, error) {
		base, steps, err := b.walk(pr.Node.Input[0], "")
		if err != nil {
			return "", err
		}
		if !b.streams[base] {
			return "", fmt.Errorf("%s reads %s, not the residual stream or the encoder output", graph.NodeName(pr.Node), base)
		}
		return b.apply(x, steps)
	}
	qIn, err := in(&a.Q, h)
	if err != nil {
		return "", "", "", err
	}
	var q, k, v, kt string
	switch {
	case src.cross:
		qs, err := b.project(qIn, &a.Q)
		if err != nil {
			return "", "", "", err
		}
		q, k, v = split(qs[0]), src.past[0], src.past[1]
	default:
		var ys []string
		kvIn := qIn
		if src.memory != "" {
			if kvIn, err = in(&a.K, src.memory); err != nil {
				return "", "", "", err
			}
			if vIn, err := in(&a.V, src.memory); err != nil || vIn != kvIn {
				return "", "", "", fmt.Errorf("K and V read the encoder output differently")
			}
			qs, err := b.project(qIn, &a.Q)
			if err != nil {
				return "", "", "", err
			}
			kvs, err := b.project(kvIn, &a.K, &a.V)
			if err != nil {
				return "", "", "", err
			}
			ys = append(qs, kvs...)
		} else {
			if ys, err = b.project(qIn, &a.Q, &a.K, &a.V); err != nil {
				return "", "", "", err
			}
		}
		q, k, v = split(ys[0]), split(ys[1]), split(ys[2])
		if src.past[0] == "" && src.present[0] == "" {
			// Keys read only here are transposed before their scaling
			// and quantizer, as the source's Q·Kᵀ operand is: a
			// DequantizeLinear feeding a Transpose makes onnxruntime
			// 1.30 move quantizers across it, which it gets wrong at
			// opset 21.
			kt = b.op("Transpose", "key_t", []string{k}, graph.AttrInts("perm", 0, 1, 3, 2))
			if kt, err = b.apply(kt, p.k); err != nil {
				return "", "", "", err
			}
		} else if k, err = b.apply(k, p.k); err != nil {
			return "", "", "", err
		}
		if v, err = b.apply(v, p.v); err != nil {
			return "", "", "", err
		}
		if src.past[0] != "" {
			k = b.op("Concat", "cache/key", []string{src.past[0], k}, graph.AttrInt("axis", 2))
			v = b.op("Concat", "cache/value", []string{src.past[1], v}, graph.AttrInt("axis", 2))
		}
		if src.present[0] != "" {
			if k, err = b.rename(k, src.present[0]); err != nil {
				return "", "", "", err
			}
			if v, err = b.rename(v, src.present[1]); err != nil {
				return "", "", "", err
			}
		}
	}
	if q, err = b.apply(q, p.q); err != nil {
		return "", "", "", err
	}
	var s string
	if kt != "" {
		s = b.op("MatMul", "scores", []string{q, kt})
	} else {
		// Q·Kᵀ of the cached keys, as onnxruntime fuses a Transpose and
		// MatMul (with no Transpose after a DequantizeLinear; see above).
		s = b.msOp("FusedMatMul", "scores", []string{q, k}, graph.AttrInt("transB", 1))
	}
	if s, err = b.apply(s, p.scores); err != nil {
		return "", "", "", err
	}
	if src.mask != "" {
		s = b.op("Add", "scores/masked", []string{s, src.mask})
	}
	probs := b.op("Softmax", "probs", []string{s}, graph.AttrInt("axis", -1))
	if probs, err = b.apply(probs, p.probs); err != nil {
		return "", "", "", err
	}
	c := b.op("MatMul", "context", []string{probs, v})
	if b.oneStep {
		c = b.op("Reshape", "context", []string{c, b.ints(0, 1, int64(b.tm.Hidden))})
	} else {
		c = b.op("Transpose", "context", []string{c}, graph.AttrInts("perm", 0, 2, 1, 3))
		c = b.op("Reshape", "context", []string{c, b.ints(0, 0, int64(b.tm.Hidden))})
	}
	if c, err = b.apply(c, p.ctx); err != nil {
		return "", "", "", err
	}
	out, err := b.project(c, &a.Out)
	if err != nil {
		return "", "", "", err
	}
	return out[0], k, v, nil
}

// ffn computes the feed-forward block on h.
func (b *builder) ffn(f *transformer.FFN, h string) (string, error) {
	base, steps, err := b.walk(f.Dense1.Node.Input[0], "")
	if err != nil {
		return "", err
	}
	if !b.streams[base] {
		return "", fmt.Errorf("dense1 reads %s, not the residual stream", base)
	}
	if h, err = b.apply(h, steps); err != nil {
		return "", err
	}
	y, err := b.project(h, &f.Dense1)
	if err != nil {
		return "", err
	}
	x := y[0]
	switch b.tm.Activation {
	case "relu":
		x = b.op("Relu", "activation", []string{x})
	case "gelu":
		// x·½(1 + erf(x/√2)), the pattern onnxruntime fuses into Gelu.
		e := b.op("Div", "gelu", []string{x, b.float(float32(math.Sqrt2))})
		e = b.op("Erf", "gelu", []string{e})
		e = b.op("Add", "gelu", []string{e, b.float(1)})
		e = b.op("Mul", "gelu", []string{x, e})
		x = b.op("Mul", "activation", []string{e, b.float(0.5)})
	default:
		return "", fmt.Errorf("activation %q", b.tm.Activation)
	}
	// Back from dense2's operand to the activation's output, through
	// quantizers, views and scalings (an erf GELU's own last Mul by ½
	// belongs to the activation).
	src := b.src()
	isAct := func(v string) bool {
		p := src.Producer(v)
		return p != nil && (p.OpType == "Relu" || p.OpType == "Gelu" || (p.OpType == "Mul" || p.OpType == "Div") && b.erfWithin(p, 4))
	}
	_, steps, err = b.walkUntil(f.Dense2.Node.Input[0], "", isAct)
	if err != nil {
		return "", err
	}
	if x, err = b.apply(x, steps); err != nil {
		return "", err
	}
	y, err = b.project(x, &f.Dense2)
	if err != nil {
		return "", err
	}
	return y[0], nil
}

// erfWithin reports whether an Erf computes one of n's inputs within
// depth nodes: n is part of an erf GELU.
func (b *builder) erfWithin(n *onnx.NodeProto, depth int) bool {
	if depth == 0 {
		return false
	}
	for _, in := range n.Input {
		if p := b.src().Producer(in); p != nil && (p.OpType == "Erf" || b.erfWithin(p, depth-1)) {
			return true
		}
	}
	return false
}

// weight returns the value a weight operand reads: initializer w behind
// source operand v, through its quantizer when v is quantized.
func (b *builder) weight(v, w string) (string, error) {
	src := b.src()
	for range 16 {
		if q := b.quant[v]; q != nil {
			if q.Tensor != w {
				return "", fmt.Errorf("weight %s is quantized as %s, not as the initializer", w, q.Tensor)
			}
			return b.quantize("", q)
		}
		p := src.Producer(v)
		if p == nil || len(p.Input) == 0 {
			break
		}
		switch p.OpType {
		case "Transpose", "Identity", "Cast", "Slice", "Reshape", "Squeeze", "Unsqueeze":
			v = p.Input[0]
			continue
		}
		break
	}
	return b.copyConst(w)
}

// project computes projections ps, which read the same input x, and
// returns their outputs. Projections that are consecutive slices of one
// kernel (a fused QKV or KV kernel) run as one MatMul and a Split.
func (b *builder) project(x string, ps ...*transformer.Projection) ([]string, error) {
	for _, p := range ps {
		if p.Weight == "" {
			return nil, fmt.Errorf("%s has no weight", graph.NodeName(p.Node))
		}
		if p.Node.OpType == "Gemm" && (graph.FloatAttr(p.Node, "alpha", 1) != 1 || graph.FloatAttr(p.Node, "beta", 1) != 1) {
			return nil, fmt.Errorf("gemm %s has alpha or beta other than 1", graph.NodeName(p.Node))
		}
	}
	fused := len(ps) > 1
	for i := 1; i < len(ps) && fused; i++ {
		a, c := ps[i-1], ps[i]
		fused = c.Weight == a.Weight && c.Transposed == a.Transposed && c.Out.Lo == a.Out.Hi &&
			c.Bias == a.Bias && (c.Bias == "" || c.BiasOut.Lo == a.BiasOut.Hi)
	}
	if !fused {
		var out []string
		for _, p := range ps {
			y, err := b.dense(x, p, p.Out, p.BiasOut)
			if err != nil {
				return nil, err
			}
			out = append(out, y)
		}
		return out, nil
	}
	first, last := ps[0], ps[len(ps)-1]
	y, err := b.dense(x, first, transformer.Range{Lo: first.Out.Lo, Hi: last.Out.Hi}, transformer.Range{Lo: first.BiasOut.Lo, Hi: last.BiasOut.Hi})
	if err != nil {
		return nil, err
	}
	sizes := make([]int64, len(ps))
	outs := make([]string, len(ps))
	for i, p := range ps {
		sizes[i] = int64(p.Out.Len())
		outs[i] = b.name("projection")
	}
	b.m.Op("Split", b.name("projection/Split"), []string{y, b.ints(sizes...)}, outs, graph.AttrInt("axis", -1))
	return outs, nil
}

// dense computes x·W[:, out] + bias[bout] for p's weight and bias.
func (b *builder) dense(x string, p *transformer.Projection, out, bout transformer.Range) (string, error) {
	w, err := b.weight(p.Node.Input[1], p.Weight)
	if err != nil {
		return "", err
	}
	t := b.src().Initializer(p.Weight)
	if p.Transposed {
		w = b.op("Transpose", "weight_t", []string{w}, graph.AttrInts("perm", 1, 0))
	}
	width := int(t.Dims[1])
	if p.Transposed {
		width = int(t.Dims[0])
	}
	if out.Lo != 0 || out.Hi != width {
		w = b.op("Slice", "weight_part", []string{w, b.ints(int64(out.Lo)), b.ints(int64(out.Hi)), b.ints(1)})
	}
	y := b.op("MatMul", "dense", []string{x, w})
	if p.Bias == "" {
		return y, nil
	}
	bt := b.src().Initializer(p.Bias)
	bias := p.Bias
	if bout.Lo != 0 || bout.Hi != int(bt.Dims[0]) {
		v, err := graph.Floats(bt)
		if err != nil {
			return "", err
		}
		bias = b.m.AddInitializer(graph.FloatTensor(b.name(p.Bias+"_part"), []int64{int64(bout.Len())}, v[bout.Lo:bout.Hi]))
	} else if bias, err = b.copyConst(p.Bias); err != nil {
		return "", err
	}
	return b.op("Add", "dense/bias", []string{y, bias}), nil
}

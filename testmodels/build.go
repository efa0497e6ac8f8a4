package testmodels

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// Names of the graph's inputs and output.
const (
	SrcInput     = "src_ids"
	TgtInput     = "tgt_ids"
	LogitsOutput = "logits"
)

// PositionTable is the name of the constant sinusoidal position table
// [MaxLen, d], shared by encoder and decoder. It is an initializer but not
// a parameter.
const PositionTable = "position_embedding"

// MetadataKey is the metadata_props key under which Build records the
// Config as JSON.
const MetadataKey = "qatc.testmodel"

// Build returns the model cfg describes, nodes in topological order.
func Build(cfg Config) (*graph.Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	b := &builder{cfg: cfg, m: graph.New("transformer", cfg.Opset), nodes: map[string]bool{}}
	b.m.Proto.DocString = "NeurST-style transformer built by github.com/qatc/qatc/testmodels"
	meta, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	b.m.SetMetadata(MetadataKey, string(meta))

	b.m.AddInput(SrcInput, graph.Int64, []int64{-1, -1}, "batch", "src_len")
	b.m.AddInput(TgtInput, graph.Int64, []int64{-1, -1}, "batch", "tgt_len")
	b.m.AddOutput(LogitsOutput, graph.Float, []int64{-1, -1, int64(cfg.Vocab)}, "batch", "tgt_len")

	srcTable, tgtTable := "shared_embedding", "shared_embedding"
	if cfg.SharedEmbeddings {
		b.embedding(srcTable)
	} else {
		srcTable, tgtTable = "encoder/embedding", "decoder/embedding"
		b.embedding(srcTable)
		b.embedding(tgtTable)
	}
	b.m.AddInitializer(graph.FloatTensor(PositionTable, []int64{int64(cfg.MaxLen), int64(cfg.Hidden)}, sinusoids(cfg.MaxLen, cfg.Hidden)))

	srcBias := b.paddingBias()
	enc := b.encoder(srcTable, srcBias)
	dec := b.decoder(tgtTable, enc, srcBias)
	b.softmax(dec, tgtTable)

	if b.err != nil {
		return nil, b.err
	}
	if err := b.m.TopoSort(); err != nil {
		return nil, fmt.Errorf("testmodels: %w", err)
	}
	return b.m, nil
}

// builder adds the model's nodes and weights; names follow NeurST's
// scopes so that inspect output reads like the original model.
type builder struct {
	cfg   Config
	m     *graph.Model
	nodes map[string]bool
	err   error
}

// op adds node op(inputs) whose name and single output are both name.
func (b *builder) op(op, name string, inputs []string, attrs ...*onnx.AttributeProto) string {
	if b.nodes[name] && b.err == nil {
		b.err = fmt.Errorf("testmodels: internal error: node %s added twice", name)
	}
	b.nodes[name] = true
	b.m.Op(op, name, inputs, []string{name}, attrs...)
	return name
}

// constant returns the output of a Constant node holding t, named
// const/<t.Name>, added on first use. Constants are nodes rather than
// initializers so that no tool mistakes them for trainable parameters.
func (b *builder) constant(t *onnx.TensorProto) string {
	name := "const/" + t.Name
	if !b.nodes[name] {
		t.Name = name
		b.op("Constant", name, nil, graph.AttrTensor("value", t))
	}
	return name
}

// ints returns a constant int64 vector.
func (b *builder) ints(name string, v ...int64) string {
	return b.constant(graph.Int64Tensor(name, []int64{int64(len(v))}, v))
}

// scalarInt returns a constant int64 scalar.
func (b *builder) scalarInt(name string, v int64) string {
	return b.constant(graph.Int64Tensor(name, nil, []int64{v}))
}

// scalar returns a constant float32 scalar.
func (b *builder) scalar(name string, v float64) string {
	return b.constant(graph.FloatTensor(name, nil, []float32{float32(v)}))
}

// embedding adds a [Vocab, d] table.
func (b *builder) embedding(name string) {
	v, d := b.cfg.Vocab, b.cfg.Hidden
	b.param(name, []int64{int64(v), int64(d)}, normal(1/math.Sqrt(float64(d))))
}

// paddingBias returns the additive attention bias [batch, 1, 1, src_len]:
// maskBias where src_ids is the pad id, 0 elsewhere.
func (b *builder) paddingBias() string {
	isPad := b.op("Equal", "encoder/padding/is_pad", []string{SrcInput, b.scalarInt("pad_id", b.cfg.PadID)})
	f := b.op("Cast", "encoder/padding/mask", []string{isPad}, graph.AttrInt("to", int64(graph.Float)))
	bias := b.op("Mul", "encoder/padding/bias", []string{f, b.scalar("mask_bias", maskBias)})
	return b.op("Unsqueeze", "encoder/padding/attention_bias", []string{bias, b.ints("axes_1_2", 1, 2)})
}

// length returns ids' second dimension as a 1-element vector.
func (b *builder) length(scope, ids string) string {
	shape := b.op("Shape", scope+"/shape", []string{ids})
	return b.op("Gather", scope+"/length", []string{shape, b.ints("one", 1)}, graph.AttrInt("axis", 0))
}

// embed returns table[ids]·√d plus the positions, [batch, len, d], and
// the sequence length as a 1-element vector.
func (b *builder) embed(scope, table, ids string) (x, length string) {
	length = b.length(scope, ids)
	look := b.op("Gather", scope+"/embedding/lookup", []string{table, ids}, graph.AttrInt("axis", 0))
	scaled := b.op("Mul", scope+"/embedding/scaled", []string{look, b.scalar("sqrt_hidden", math.Sqrt(float64(b.cfg.Hidden)))})
	pos := b.op("Slice", scope+"/positions", []string{PositionTable, b.ints("zero", 0), length, b.ints("zero", 0)})
	return b.op("Add", scope+"/input", []string{scaled, pos}), length
}

// encoder returns the encoder stack's output [batch, src_len, d].
func (b *builder) encoder(table, bias string) string {
	x, _ := b.embed("encoder", table, SrcInput)
	for i := range b.cfg.EncoderLayers {
		s := "encoder/layer_" + strconv.Itoa(i)
		x = b.sublayer(s+"/self_attention", x, func(y string) string {
			return b.attention(s+"/self_attention", y, y, bias, true)
		})
		x = b.sublayer(s+"/ffn", x, func(y string) string { return b.ffn(s+"/ffn", y) })
	}
	if b.cfg.PreNorm {
		x = b.layerNorm("encoder/ln", x)
	}
	return x
}

// decoder returns the decoder stack's output [batch, tgt_len, d].
func (b *builder) decoder(table, enc, srcBias string) string {
	x, n := b.embed("decoder", table, TgtInput)
	// Causal bias [tgt_len, tgt_len]: maskBias strictly above the diagonal.
	shape := b.op("Concat", "decoder/causal/shape", []string{n, n}, graph.AttrInt("axis", 0))
	fill := b.op("ConstantOfShape", "decoder/causal/fill", []string{shape},
		graph.AttrTensor("value", graph.FloatTensor("mask_bias", []int64{1}, []float32{maskBias})))
	causal := b.op("Trilu", "decoder/causal/bias", []string{fill, b.scalarInt("one_scalar", 1)}, graph.AttrInt("upper", 1))
	for i := range b.cfg.DecoderLayers {
		s := "decoder/layer_" + strconv.Itoa(i)
		x = b.sublayer(s+"/self_attention", x, func(y string) string {
			return b.attention(s+"/self_attention", y, y, causal, true)
		})
		x = b.sublayer(s+"/encdec_attention", x, func(y string) string {
			return b.attention(s+"/encdec_attention", y, enc, srcBias, false)
		})
		x = b.sublayer(s+"/ffn", x, func(y string) string { return b.ffn(s+"/ffn", y) })
	}
	if b.cfg.PreNorm {
		x = b.layerNorm("decoder/ln", x)
	}
	return x
}

// sublayer wraps f with the residual connection and LayerNorm: pre-norm
// x + f(LN(x)), post-norm LN(x + f(x)).
func (b *builder) sublayer(scope, x string, f func(string) string) string {
	if b.cfg.PreNorm {
		y := f(b.layerNorm(scope+"/ln", x))
		return b.op("Add", scope+"/residual", []string{x, y})
	}
	y := b.op("Add", scope+"/residual", []string{x, f(x)})
	return b.layerNorm(scope+"/ln", y)
}

// layerNorm normalizes x over its last axis with parameters scope/gamma and
// scope/beta.
func (b *builder) layerNorm(scope, x string) string {
	d := int64(b.cfg.Hidden)
	gamma := b.param(scope+"/gamma", []int64{d}, around(1, 0.1))
	beta := b.param(scope+"/beta", []int64{d}, around(0, 0.1))
	if b.cfg.Opset >= 17 {
		return b.op("LayerNormalization", scope+"/output", []string{x, gamma, beta},
			graph.AttrInt("axis", -1), graph.AttrFloat("epsilon", LayerNormEpsilon))
	}
	axes := graph.AttrInts("axes", -1)
	mean := b.op("ReduceMean", scope+"/mean", []string{x}, axes)
	centered := b.op("Sub", scope+"/centered", []string{x, mean})
	sq := b.op("Pow", scope+"/square", []string{centered, b.scalar("two", 2)})
	variance := b.op("ReduceMean", scope+"/variance", []string{sq}, axes)
	v := b.op("Add", scope+"/variance_eps", []string{variance, b.scalar("layer_norm_epsilon", LayerNormEpsilon)})
	std := b.op("Sqrt", scope+"/stddev", []string{v})
	norm := b.op("Div", scope+"/normalized", []string{centered, std})
	scaled := b.op("Mul", scope+"/scaled", []string{norm, gamma})
	return b.op("Add", scope+"/output", []string{scaled, beta})
}

// dense returns x·scope/kernel + scope/bias for a [in, out] kernel.
func (b *builder) dense(scope, x string, in, out int) string {
	k := b.param(scope+"/kernel", []int64{int64(in), int64(out)}, xavier(in, out))
	bias := b.param(scope+"/bias", []int64{int64(out)}, around(0, 0.05))
	mm := b.op("MatMul", scope+"/MatMul", []string{x, k})
	return b.op("Add", scope+"/BiasAdd", []string{mm, bias})
}

// fusedDense is dense with the kernel and bias of the square projections
// parent/<part> side by side, split back into one value per part. The parts
// are drawn exactly as dense would draw them, so a fused model computes the
// same function as the unfused one with the same seed.
func (b *builder) fusedDense(parent, name, x string, parts ...string) []string {
	d := b.cfg.Hidden
	n := len(parts)
	kernels := make([][]float32, n)
	biases := make([][]float32, n)
	for i, p := range parts {
		kernels[i] = draw(b.cfg.Seed, parent+"/"+p+"/kernel", d*d, xavier(d, d))
		biases[i] = draw(b.cfg.Seed, parent+"/"+p+"/bias", d, around(0, 0.05))
	}
	kernel := make([]float32, 0, d*d*n)
	for r := range d {
		for i := range parts {
			kernel = append(kernel, kernels[i][r*d:(r+1)*d]...)
		}
	}
	var bias []float32
	for i := range parts {
		bias = append(bias, biases[i]...)
	}
	scope := parent + "/" + name
	k := b.m.AddInitializer(graph.FloatTensor(scope+"/kernel", []int64{int64(d), int64(n * d)}, kernel))
	bb := b.m.AddInitializer(graph.FloatTensor(scope+"/bias", []int64{int64(n * d)}, bias))
	mm := b.op("MatMul", scope+"/MatMul", []string{x, k})
	y := b.op("Add", scope+"/BiasAdd", []string{mm, bb})
	sizes := make([]int64, n)
	outs := make([]string, n)
	for i, p := range parts {
		sizes[i] = int64(d)
		outs[i] = scope + "/split_" + p
	}
	name = scope + "/split"
	b.nodes[name] = true
	b.m.Op("Split", name, []string{y, b.ints("split_"+strconv.Itoa(n), sizes...)}, outs, graph.AttrInt("axis", -1))
	return outs
}

// attention returns multi-head attention of queries from x over keys and
// values from mem (x itself for self-attention), with bias added to the
// logits: [batch, len, d].
func (b *builder) attention(scope, x, mem, bias string, self bool) string {
	d := b.cfg.Hidden
	var q, k, v string
	switch {
	case !b.cfg.FusedQKV:
		q = b.dense(scope+"/q", x, d, d)
		k = b.dense(scope+"/k", mem, d, d)
		v = b.dense(scope+"/v", mem, d, d)
	case self:
		qkv := b.fusedDense(scope, "qkv", x, "q", "k", "v")
		q, k, v = qkv[0], qkv[1], qkv[2]
	default:
		q = b.dense(scope+"/q", x, d, d)
		kv := b.fusedDense(scope, "kv", mem, "k", "v")
		k, v = kv[0], kv[1]
	}
	dh := d / b.cfg.Heads
	heads := b.ints("heads_shape", 0, -1, int64(b.cfg.Heads), int64(dh))
	split := func(name, t string, perm ...int64) string {
		r := b.op("Reshape", scope+"/"+name+"_heads", []string{t, heads})
		return b.op("Transpose", scope+"/"+name+"_transposed", []string{r}, graph.AttrInts("perm", perm...))
	}
	qh := split("q", q, 0, 2, 1, 3) // [batch, heads, len, dh]
	qh = b.op("Mul", scope+"/q_scaled", []string{qh, b.scalar("inv_sqrt_head_size", 1/math.Sqrt(float64(dh)))})
	kh := split("k", k, 0, 2, 3, 1) // [batch, heads, dh, mem_len]
	vh := split("v", v, 0, 2, 1, 3) // [batch, heads, mem_len, dh]
	logits := b.op("MatMul", scope+"/logits", []string{qh, kh})
	logits = b.op("Add", scope+"/logits_masked", []string{logits, bias})
	probs := b.op("Softmax", scope+"/probs", []string{logits}, graph.AttrInt("axis", -1))
	ctx := b.op("MatMul", scope+"/context", []string{probs, vh})
	ctx = b.op("Transpose", scope+"/context_transposed", []string{ctx}, graph.AttrInts("perm", 0, 2, 1, 3))
	ctx = b.op("Reshape", scope+"/context_merged", []string{ctx, b.ints("merge_shape", 0, -1, int64(d))})
	return b.dense(scope+"/output", ctx, d, d)
}

// ffn returns dense2(act(dense1(x))).
func (b *builder) ffn(scope, x string) string {
	d, f := b.cfg.Hidden, b.cfg.FFN
	h := b.dense(scope+"/dense1", x, d, f)
	h = b.activation(scope+"/"+b.cfg.Activation, h)
	return b.dense(scope+"/dense2", h, f, d)
}

// activation applies ReLU or the exact (erf) GELU.
func (b *builder) activation(name, x string) string {
	switch {
	case b.cfg.Activation == "relu":
		return b.op("Relu", name, []string{x})
	case b.cfg.Opset >= 20:
		return b.op("Gelu", name, []string{x})
	}
	// gelu(x) = x · ½(1 + erf(x/√2))
	s := b.op("Mul", name+"/scaled", []string{x, b.scalar("inv_sqrt2", 1/math.Sqrt2)})
	e := b.op("Erf", name+"/erf", []string{s})
	e = b.op("Add", name+"/one_plus_erf", []string{e, b.scalar("one_float", 1)})
	e = b.op("Mul", name+"/half", []string{e, b.scalar("half", 0.5)})
	return b.op("Mul", name, []string{x, e})
}

// softmax adds the output projection onto the vocabulary: the transposed
// embedding table (the very initializer the lookups read) or, unshared, a
// [d, Vocab] kernel; plus a bias.
func (b *builder) softmax(x, table string) {
	v, d := b.cfg.Vocab, b.cfg.Hidden
	var kernel string
	if b.cfg.SharedEmbeddings {
		kernel = b.op("Transpose", "softmax/shared_embedding_transposed", []string{table}, graph.AttrInts("perm", 1, 0))
	} else {
		kernel = b.param("softmax/kernel", []int64{int64(d), int64(v)}, xavier(d, v))
	}
	bias := b.param("softmax/bias", []int64{int64(v)}, around(0, 0.05))
	mm := b.op("MatMul", "softmax/MatMul", []string{x, kernel})
	b.m.Op("Add", "softmax/BiasAdd", []string{mm, bias}, []string{LogitsOutput})
}

package testmodels_test

import (
	"math"
	"strconv"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/testmodels"
)

// reference is a straightforward float64 implementation of the network
// that testmodels.Build describes, written from the description rather
// than from the graph: it reads only the weights (by name) from the model,
// computes the position table itself and masks attention by skipping
// positions rather than by adding a bias.
type reference struct {
	t     testing.TB
	cfg   testmodels.Config
	m     *graph.Model
	cache map[string][]float64
}

// vec is one position's activations; seq is a sequence of them.
type (
	vec []float64
	seq []vec
)

func (r *reference) weights(name string) []float64 {
	if w, ok := r.cache[name]; ok {
		return w
	}
	init := r.m.Initializer(name)
	if init == nil {
		r.t.Fatalf("reference: model has no initializer %s", name)
	}
	f, err := graph.Floats(init)
	if err != nil {
		r.t.Fatal(err)
	}
	out := make([]float64, len(f))
	for i, v := range f {
		out[i] = float64(v)
	}
	if r.cache == nil {
		r.cache = map[string][]float64{}
	}
	r.cache[name] = out
	return out
}

// forward returns logits [batch, tgtLen, Vocab].
func (r *reference) forward(src, tgt []int64, batch, srcLen, tgtLen int) []float64 {
	var out []float64
	for i := range batch {
		for _, l := range r.sentence(src[i*srcLen:(i+1)*srcLen], tgt[i*tgtLen:(i+1)*tgtLen]) {
			out = append(out, l...)
		}
	}
	return out
}

func (r *reference) sentence(src, tgt []int64) seq {
	cfg := r.cfg
	srcTable, tgtTable := "shared_embedding", "shared_embedding"
	if !cfg.SharedEmbeddings {
		srcTable, tgtTable = "encoder/embedding", "decoder/embedding"
	}
	padded := func(_, j int) bool { return src[j] == cfg.PadID }
	causal := func(i, j int) bool { return j > i }

	x := r.embed(srcTable, src)
	for l := range cfg.EncoderLayers {
		s := "encoder/layer_" + strconv.Itoa(l)
		x = r.sublayer(s+"/self_attention", x, func(y seq) seq { return r.attention(s+"/self_attention", y, y, padded, true) })
		x = r.sublayer(s+"/ffn", x, func(y seq) seq { return r.ffn(s+"/ffn", y) })
	}
	if cfg.PreNorm {
		x = r.layerNorm("encoder/ln", x)
	}
	enc := x

	x = r.embed(tgtTable, tgt)
	for l := range cfg.DecoderLayers {
		s := "decoder/layer_" + strconv.Itoa(l)
		x = r.sublayer(s+"/self_attention", x, func(y seq) seq { return r.attention(s+"/self_attention", y, y, causal, true) })
		x = r.sublayer(s+"/encdec_attention", x, func(y seq) seq { return r.attention(s+"/encdec_attention", y, enc, padded, false) })
		x = r.sublayer(s+"/ffn", x, func(y seq) seq { return r.ffn(s+"/ffn", y) })
	}
	if cfg.PreNorm {
		x = r.layerNorm("decoder/ln", x)
	}

	d, v := cfg.Hidden, cfg.Vocab
	bias := r.weights("softmax/bias")
	if cfg.SharedEmbeddings {
		// logits = x · tableᵀ: the table is [Vocab, d], row-major.
		table := r.weights(tgtTable)
		tableT := make([]float64, d*v)
		for i := range v {
			for j := range d {
				tableT[j*v+i] = table[i*d+j]
			}
		}
		return dense(x, tableT, v, 0, v, bias)
	}
	return dense(x, r.weights("softmax/kernel"), v, 0, v, bias)
}

// embed returns table[ids]·√d + PE.
func (r *reference) embed(table string, ids []int64) seq {
	d := r.cfg.Hidden
	w := r.weights(table)
	n := d / 2
	out := make(seq, len(ids))
	for p, id := range ids {
		out[p] = make(vec, d)
		for j := range d {
			out[p][j] = w[int(id)*d+j] * math.Sqrt(float64(d))
		}
		for i := range n {
			// tensor2tensor: timescales 10000^(-i/(n-1)), sin half then cos half.
			angle := float64(p) / math.Pow(10000, float64(i)/float64(max(n-1, 1)))
			out[p][i] += math.Sin(angle)
			out[p][n+i] += math.Cos(angle)
		}
	}
	return out
}

func (r *reference) sublayer(scope string, x seq, f func(seq) seq) seq {
	if r.cfg.PreNorm {
		return add(x, f(r.layerNorm(scope+"/ln", x)))
	}
	return r.layerNorm(scope+"/ln", add(x, f(x)))
}

func (r *reference) layerNorm(scope string, x seq) seq {
	g, b := r.weights(scope+"/gamma"), r.weights(scope+"/beta")
	out := make(seq, len(x))
	for p, v := range x {
		var mean, variance float64
		for _, e := range v {
			mean += e
		}
		mean /= float64(len(v))
		for _, e := range v {
			variance += (e - mean) * (e - mean)
		}
		variance /= float64(len(v))
		out[p] = make(vec, len(v))
		for j, e := range v {
			out[p][j] = (e-mean)/math.Sqrt(variance+testmodels.LayerNormEpsilon)*g[j] + b[j]
		}
	}
	return out
}

func (r *reference) ffn(scope string, x seq) seq {
	d, f := r.cfg.Hidden, r.cfg.FFN
	h := dense(x, r.weights(scope+"/dense1/kernel"), f, 0, f, r.weights(scope+"/dense1/bias"))
	for _, v := range h {
		for j, e := range v {
			if r.cfg.Activation == "gelu" {
				v[j] = 0.5 * e * (1 + math.Erf(e/math.Sqrt2))
			} else {
				v[j] = max(e, 0)
			}
		}
	}
	return dense(h, r.weights(scope+"/dense2/kernel"), d, 0, d, r.weights(scope+"/dense2/bias"))
}

// projection returns the kernel, its row stride, column offset and the bias
// of attention projection part ("q", "k" or "v"), fused or not.
func (r *reference) projection(scope, part string, self bool) (kernel []float64, stride, off int, bias []float64) {
	d := r.cfg.Hidden
	fused := ""
	index := 0
	switch {
	case !r.cfg.FusedQKV:
	case self:
		fused, index = "qkv", map[string]int{"q": 0, "k": 1, "v": 2}[part]
	case part != "q":
		fused, index = "kv", map[string]int{"k": 0, "v": 1}[part]
	}
	if fused == "" {
		return r.weights(scope + "/" + part + "/kernel"), d, 0, r.weights(scope + "/" + part + "/bias")
	}
	k := r.weights(scope + "/" + fused + "/kernel")
	return k, len(k) / d, index * d, r.weights(scope + "/" + fused + "/bias")
}

// attention is multi-head attention of x over mem; masked(i, j) drops
// key j for query i.
func (r *reference) attention(scope string, x, mem seq, masked func(i, j int) bool, self bool) seq {
	d, heads := r.cfg.Hidden, r.cfg.Heads
	dh := d / heads
	proj := func(part string, in seq) seq {
		k, stride, off, b := r.projection(scope, part, self)
		return dense(in, k, stride, off, d, b)
	}
	q, k, v := proj("q", x), proj("k", mem), proj("v", mem)
	ctx := make(seq, len(x))
	for i := range x {
		ctx[i] = make(vec, d)
		for h := range heads {
			lo := h * dh
			scores := make([]float64, len(mem))
			best := math.Inf(-1)
			for j := range mem {
				if masked(i, j) {
					continue
				}
				var s float64
				for c := range dh {
					s += q[i][lo+c] * k[j][lo+c]
				}
				scores[j] = s / math.Sqrt(float64(dh))
				best = max(best, scores[j])
			}
			var sum float64
			for j := range mem {
				if !masked(i, j) {
					scores[j] = math.Exp(scores[j] - best)
					sum += scores[j]
				}
			}
			for j := range mem {
				if masked(i, j) {
					continue
				}
				for c := range dh {
					ctx[i][lo+c] += scores[j] / sum * v[j][lo+c]
				}
			}
		}
	}
	return dense(ctx, r.weights(scope+"/output/kernel"), d, 0, d, r.weights(scope+"/output/bias"))
}

// dense returns x·K[:, off:off+out] + bias[off:off+out] for a row-major
// kernel with row length stride.
func dense(x seq, kernel []float64, stride, off, out int, bias []float64) seq {
	res := make(seq, len(x))
	for p, v := range x {
		res[p] = make(vec, out)
		copy(res[p], bias[off:off+out])
		for i, e := range v {
			row := kernel[i*stride+off : i*stride+off+out]
			for o, k := range row {
				res[p][o] += e * k
			}
		}
	}
	return res
}

func add(a, b seq) seq {
	out := make(seq, len(a))
	for p := range a {
		out[p] = make(vec, len(a[p]))
		for j := range a[p] {
			out[p][j] = a[p][j] + b[p][j]
		}
	}
	return out
}

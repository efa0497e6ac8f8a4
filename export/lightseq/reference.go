package lightseq

import (
	"fmt"
	"math"

	"github.com/qatc/qatc/export/lightseq/lspb"
)

// Reference runs a QuantTransformer with LightSeq's int8 numerics as
// documented (shared/docs/lightseq-format.md), on the CPU, so that a
// file's behaviour can be checked without a GPU: activations are
// quantized to int8 with floor(x·127/c + 0.5) clamped to ±127 (ReLU
// outputs onto [−127, 127] from [0, c]), GEMMs multiply int8 by int8 into
// int32, and GEMMs with int8 output requantize with a·w/(o·127).
// Attention, LayerNorm, softmax and the encoder-decoder K/V projection run
// in float32.
type Reference struct {
	qt *lspb.QuantTransformer
	Sizes
	// Epsilon is the LayerNorm epsilon (LightSeq's kernels do not read it
	// from the file).
	Epsilon float32
}

// NewReference checks qt and prepares it for decoding.
func NewReference(qt *lspb.QuantTransformer) (*Reference, error) {
	s, err := Infer(qt)
	if err != nil {
		return nil, err
	}
	return &Reference{qt: qt, Sizes: s, Epsilon: 1e-6}, nil
}

// quant maps x onto int8 with clip c.
func quant(x []float32, c float32) []int8 {
	out := make([]int8, len(x))
	k := 127 / float64(c)
	for i, v := range x {
		out[i] = int8(math.Max(-127, math.Min(127, math.Floor(float64(v)*k+0.5))))
	}
	return out
}

// quantReLU maps ReLU outputs [0, c] onto [−127, 127].
func quantReLU(x []float32, c float32) []int8 {
	out := make([]int8, len(x))
	k := 2 * 127 / float64(c)
	for i, v := range x {
		out[i] = int8(math.Max(-127, math.Min(127, math.Floor(float64(v)*k-127+0.5))))
	}
	return out
}

// gemm multiplies a [n, k] int8 matrix by the offset-127 [k, m] kernel w
// into int32 accumulators; with offset, the inputs are a+127 (ReLU's
// mapping undone exactly).
func gemm(a []int8, n, k int, w []byte, m int, offset bool) []int32 {
	out := make([]int32, n*m)
	for i := range n {
		row := out[i*m : (i+1)*m]
		for p := range k {
			av := int32(a[i*k+p])
			if offset {
				av += 127
			}
			if av == 0 {
				continue
			}
			wr := w[p*m : (p+1)*m]
			for j := range m {
				row[j] += av * (int32(wr[j]) - 127)
			}
		}
	}
	return out
}

// dense8 is an int8-output GEMM: input clip a, weight clip wc, output clip
// o; returns the dequantized int8 outputs.
func dense8(x []float32, n, k int, a float32, w []byte, wc float32, m int, o float32) []float32 {
	acc := gemm(quant(x, a), n, k, w, m, false)
	alpha := float64(a) * float64(wc) / (float64(o) * 127)
	out := make([]float32, len(acc))
	for i, v := range acc {
		q := math.Max(-127, math.Min(127, math.Floor(float64(v)*alpha+0.5)))
		out[i] = float32(q * float64(o) / 127)
	}
	return out
}

// dequant8 quantizes then dequantizes x with clip c.
func dequant8(x []float32, c float32) []float32 {
	q := quant(x, c)
	out := make([]float32, len(x))
	for i, v := range q {
		out[i] = float32(v) * c / 127
	}
	return out
}

func addBias(x, b []float32) {
	m := len(b)
	for i := range x {
		x[i] += b[i%m]
	}
}

func (r *Reference) layerNorm(x []float32, scale, bias []float32) []float32 {
	h := len(scale)
	out := make([]float32, len(x))
	for i := 0; i < len(x); i += h {
		row := x[i : i+h]
		var mean, vr float64
		for _, v := range row {
			mean += float64(v)
		}
		mean /= float64(h)
		for _, v := range row {
			vr += (float64(v) - mean) * (float64(v) - mean)
		}
		inv := 1 / math.Sqrt(vr/float64(h)+float64(r.Epsilon))
		for j, v := range row {
			out[i+j] = float32((float64(v)-mean)*inv)*scale[j] + bias[j]
		}
	}
	return out
}

// attention computes softmax(q·kᵀ/√d)·v per head over float rows: q is
// [n, H] with stride qs, k and v [m, H] with strides; mask(i, j) hides key
// j from query i.
func (r *Reference) attention(q []float32, qs, n int, k, v []float32, kvs, m int, mask func(i, j int) bool) []float32 {
	h, heads := r.Hidden, r.Heads
	dh := h / heads
	scale := 1 / math.Sqrt(float64(dh))
	out := make([]float32, n*h)
	p := make([]float64, m)
	for hd := range heads {
		off := hd * dh
		for i := range n {
			mx := math.Inf(-1)
			for j := range m {
				if mask(i, j) {
					p[j] = math.Inf(-1)
					continue
				}
				var s float64
				for t := range dh {
					s += float64(q[i*qs+off+t]) * float64(k[j*kvs+off+t])
				}
				p[j] = s * scale
				mx = math.Max(mx, p[j])
			}
			var sum float64
			for j := range m {
				if math.IsInf(p[j], -1) {
					p[j] = 0
					continue
				}
				p[j] = math.Exp(p[j] - mx)
				sum += p[j]
			}
			for j := range m {
				if p[j] == 0 {
					continue
				}
				w := p[j] / sum
				for t := range dh {
					out[i*h+off+t] += float32(w * float64(v[j*kvs+off+t]))
				}
			}
		}
	}
	return out
}

// ffn runs a feed-forward block on LN output (or the stream, post-norm) x.
func (r *Reference) ffn(x []float32, n int, lnClip float32, k1 []byte, k1c float32, b1 []float32, outClip, actClip float32, k2 []byte, k2c float32, b2 []float32) []float32 {
	h, f := r.Hidden, r.FFN
	y := dense8(x, n, h, lnClip, k1, k1c, f, outClip)
	addBias(y, b1)
	gelu := r.qt.ModelConf.UseGelu
	for i, v := range y {
		if gelu {
			y[i] = float32(0.5 * float64(v) * (1 + math.Erf(float64(v)/math.Sqrt2)))
		} else if v < 0 {
			y[i] = 0
		}
	}
	var acc []int32
	var deq float64
	if gelu {
		acc = gemm(quant(y, actClip), n, f, k2, h, false)
		deq = float64(actClip) * float64(k2c) / (127 * 127)
	} else {
		acc = gemm(quantReLU(y, actClip), n, f, k2, h, true)
		deq = float64(actClip) / 254 * float64(k2c) / 127
	}
	out := make([]float32, n*h)
	for i, v := range acc {
		out[i] = float32(float64(v) * deq)
	}
	addBias(out, b2)
	return out
}

func residual(x, y []float32) {
	for i := range x {
		x[i] += y[i]
	}
}

// sublayer adds f's output to the residual stream x, with the LayerNorm
// (scale, bias) on f's input (pre-norm) or on the sum (post-norm).
func (r *Reference) sublayer(x, scale, bias []float32, post bool, f func(in []float32) []float32) []float32 {
	in := x
	if !post {
		in = r.layerNorm(x, scale, bias)
	}
	residual(x, f(in))
	if post {
		x = r.layerNorm(x, scale, bias)
	}
	return x
}

// embed looks tokens up in an int8 table ([V, H] when !transposed, else
// [H, V]), scales by √H and adds positions from first on.
func (r *Reference) embed(l *lspb.QuantEmbeddingLayer, ids []int64, first int, vocab int, transposed bool) ([]float32, error) {
	h := r.Hidden
	maxStep := len(l.PositionEmbedding) / h
	if first+len(ids) > maxStep {
		return nil, fmt.Errorf("sequence of %d tokens exceeds the %d positions", first+len(ids), maxStep)
	}
	sq := float32(math.Sqrt(float64(h)))
	out := make([]float32, len(ids)*h)
	for t, id := range ids {
		if id < 0 || int(id) >= vocab {
			return nil, fmt.Errorf("token id %d outside the vocabulary [0, %d)", id, vocab)
		}
		pos := l.PositionEmbedding[(first+t)*h : (first+t+1)*h]
		for j := range h {
			var u byte
			if transposed {
				u = l.TokenEmbedding[j*vocab+int(id)]
			} else {
				u = l.TokenEmbedding[int(id)*h+j]
			}
			out[t*h+j] = float32(int(u)-127)*l.EmbClipMax/127*sq + pos[j]
		}
	}
	return out, nil
}

// Encode runs the encoder on one source sentence: [len, H].
func (r *Reference) Encode(src []int64) ([]float32, error) {
	h, n := r.Hidden, len(src)
	x, err := r.embed(r.qt.SrcEmbedding, src, 0, r.SrcVocab, false)
	if err != nil {
		return nil, err
	}
	pad := int64(r.qt.ModelConf.SrcPaddingId)
	post := r.qt.ModelConf.IsPostLn
	mask := func(_, j int) bool { return src[j] == pad }
	for _, l := range r.qt.EncoderStack {
		x = r.sublayer(x, l.MultiheadNormScale, l.MultiheadNormBias, post, func(in []float32) []float32 {
			qkv := dense8(in, n, h, l.MultiheadLnClipMax, l.MultiheadProjectKernelQkv, l.MultiheadProjectKernelQkvClipMax, 3*h, l.MultiheadQkvDenseClipMax)
			addBias(qkv, l.MultiheadProjectBiasQkv)
			ctx := r.attention(qkv, 3*h, n, qkv[h:], qkv[2*h:], 3*h, n, mask)
			o := dense8(ctx, n, h, l.MultiheadProjectOutputClipMax, l.MultiheadProjectKernelOutput, l.MultiheadProjectKernelOutputClipMax, h, l.MultiheadOutputDenseClipMax)
			addBias(o, l.MultiheadProjectBiasOutput)
			return o
		})
		x = r.sublayer(x, l.FfnNormScale, l.FfnNormBias, post, func(in []float32) []float32 {
			return r.ffn(in, n, l.FfnLnClipMax, l.FfnFirstKernel, l.FfnFirstKernelClipMax, l.FfnFirstBias, l.FfnFirstOutputClipMax, l.FfnFirstActClipMax, l.FfnSecondKernel, l.FfnSecondKernelClipMax, l.FfnSecondBias)
		})
	}
	if !post {
		x = r.layerNorm(x, r.qt.SrcEmbedding.NormScale, r.qt.SrcEmbedding.NormBias)
	}
	return x, nil
}

// crossKV computes the encoder-decoder keys and values of every layer for
// the encoder output enc of m tokens in one float GEMM: [m, L·2·H].
func (r *Reference) crossKV(enc []float32, m int) []float32 {
	h, L := r.Hidden, r.DecoderLayers
	t := r.qt.TrgEmbedding
	kvw := 2 * L * h
	kvc := t.EncodeOutputProjectKernelKvClipMax[0]
	kv := make([]float32, m*kvw)
	for i := range m {
		for p := range h {
			e := float64(enc[i*h+p])
			wr := t.EncodeOutputProjectKernelKv[p*kvw : (p+1)*kvw]
			for j := range kvw {
				kv[i*kvw+j] += float32(e * float64(int(wr[j])-127) * float64(kvc) / 127)
			}
		}
	}
	addBias(kv, t.EncodeOutputProjectBiasKv)
	return kv
}

// State is a batch decoded with a key/value cache: the encoder and the
// cross-attention keys and values run once per sentence, and each Step
// runs the decoder on one new token per row, attending to the keys and
// values of the earlier ones. It computes exactly what the decoder
// computes on the whole prefix at that position. It implements
// decode.State.
type State struct {
	r    *Reference
	rows []*cacheRow
	pos  int
}

// cacheRow is one hypothesis: its source, the source's cross-attention
// keys and values (shared by the beams of a sentence, never written) and
// its self-attention keys and values per layer, [pos, H] each.
type cacheRow struct {
	src        []int64
	kv         []float32
	keys, vals [][]float32
}

// Start encodes each source (without padding) and returns the state
// before the first target token.
func (r *Reference) Start(srcs [][]int64) (*State, error) {
	s := &State{r: r}
	for _, src := range srcs {
		enc, err := r.Encode(src)
		if err != nil {
			return nil, err
		}
		s.rows = append(s.rows, &cacheRow{src: src, kv: r.crossKV(enc, len(src)),
			keys: make([][]float32, r.DecoderLayers), vals: make([][]float32, r.DecoderLayers)})
	}
	return s, nil
}

// Step feeds one target token per row (the start id first) and returns
// the logits of the next token, [rows × V], and V.
func (s *State) Step(tokens []int64) ([]float32, int, error) {
	r := s.r
	if len(tokens) != len(s.rows) {
		return nil, 0, fmt.Errorf("lightseq reference: %d tokens for %d rows", len(tokens), len(s.rows))
	}
	h, n := r.Hidden, len(tokens)
	t := r.qt.TrgEmbedding
	// Every row's token sits at the same position.
	x := make([]float32, 0, n*h)
	for _, tok := range tokens {
		e, err := r.embed(t, []int64{tok}, s.pos, r.Vocab, true)
		if err != nil {
			return nil, 0, err
		}
		x = append(x, e...)
	}
	kvw := 2 * r.DecoderLayers * h
	pad := int64(r.qt.ModelConf.SrcPaddingId)
	post := r.qt.ModelConf.IsPostLn
	none := func(_, _ int) bool { return false }
	for li, l := range r.qt.DecoderStack {
		x = r.sublayer(x, l.SelfNormScale, l.SelfNormBias, post, func(in []float32) []float32 {
			qkv := dense8(in, n, h, l.SelfLnClipMax, l.SelfProjectKernelQkv, l.SelfProjectKernelQkvClipMax, 3*h, l.SelfQkvDenseClipMax)
			addBias(qkv, l.SelfProjectBiasQkv)
			qkv = dequant8(qkv, l.SelfQkvBiasOutClipMax)
			ctx := make([]float32, n*h)
			for i, row := range s.rows {
				q := qkv[i*3*h : (i+1)*3*h]
				row.keys[li] = append(row.keys[li], q[h:2*h]...)
				row.vals[li] = append(row.vals[li], q[2*h:]...)
				copy(ctx[i*h:], r.attention(q, 3*h, 1, row.keys[li], row.vals[li], h, s.pos+1, none))
			}
			o := dense8(ctx, n, h, l.SelfProjectOutputClipMax, l.SelfProjectKernelOutput, l.SelfProjectKernelOutputClipMax, h, l.SelfOutputDenseClipMax)
			addBias(o, l.SelfProjectBiasOutput)
			return o
		})
		x = r.sublayer(x, l.EncdecNormScale, l.EncdecNormBias, post, func(in []float32) []float32 {
			q := dense8(in, n, h, l.EncdecLnClipMax, l.EncdecProjectKernelQ, l.EncdecProjectKernelQClipMax, h, l.EncdecQDenseClipMax)
			addBias(q, l.EncdecProjectBiasQ)
			off := li * 2 * h
			ctx := make([]float32, n*h)
			for i, row := range s.rows {
				src := row.src
				mask := func(_, j int) bool { return src[j] == pad }
				copy(ctx[i*h:], r.attention(q[i*h:], h, 1, row.kv[off:], row.kv[off+h:], kvw, len(src), mask))
			}
			o := dense8(ctx, n, h, l.EncdecProjectOutputClipMax, l.EncdecProjectKernelOutput, l.EncdecProjectKernelOutputClipMax, h, l.EncdecOutputDenseClipMax)
			addBias(o, l.EncdecProjectBiasOutput)
			return o
		})
		x = r.sublayer(x, l.FfnNormScale, l.FfnNormBias, post, func(in []float32) []float32 {
			return r.ffn(in, n, l.FfnLnClipMax, l.FfnFirstKernel, l.FfnFirstKernelClipMax, l.FfnFirstBias, l.FfnFirstOutputClipMax, l.FfnFirstActClipMax, l.FfnSecondKernel, l.FfnSecondKernelClipMax, l.FfnSecondBias)
		})
	}
	if !post {
		x = r.layerNorm(x, t.NormScale, t.NormBias)
	}
	logits := dense8(x, n, h, t.OutputLnClipMax, t.TokenEmbedding, t.EmbClipMax, r.Vocab, t.LogitsClipMax)
	addBias(logits, t.SharedBias)
	s.pos++
	return logits, r.Vocab, nil
}

// Reorder makes row i what row rows[i] was; a row taken more than once
// gets its own copy of the self-attention cache.
func (s *State) Reorder(rows []int) error {
	taken := make([]bool, len(s.rows))
	out := make([]*cacheRow, len(rows))
	for i, ri := range rows {
		if ri < 0 || ri >= len(s.rows) {
			return fmt.Errorf("lightseq reference: reorder to row %d of %d", ri, len(s.rows))
		}
		row := s.rows[ri]
		if taken[ri] {
			c := &cacheRow{src: row.src, kv: row.kv, keys: make([][]float32, len(row.keys)), vals: make([][]float32, len(row.vals))}
			for l := range row.keys {
				c.keys[l] = append([]float32(nil), row.keys[l]...)
				c.vals[l] = append([]float32(nil), row.vals[l]...)
			}
			row = c
		}
		taken[ri] = true
		out[i] = row
	}
	s.rows = out
	return nil
}

// Logits runs the decoder over the target prefix tgt (teacher forcing)
// against the encoder output enc of src, returning the logits of the last
// position [V].
func (r *Reference) Logits(src []int64, enc []float32, tgt []int64) ([]float32, error) {
	out, err := r.forced(src, enc, tgt)
	if err != nil {
		return nil, err
	}
	return out[len(out)-1], nil
}

// forced steps a one-row state through tgt, returning every position's
// logits.
func (r *Reference) forced(src []int64, enc []float32, tgt []int64) ([][]float32, error) {
	s := &State{r: r, rows: []*cacheRow{{src: src, kv: r.crossKV(enc, len(src)),
		keys: make([][]float32, r.DecoderLayers), vals: make([][]float32, r.DecoderLayers)}}}
	out := make([][]float32, len(tgt))
	for i, id := range tgt {
		l, _, err := s.Step([]int64{id})
		if err != nil {
			return nil, err
		}
		out[i] = l
	}
	return out, nil
}

// Greedy decodes src greedily: from the start id, append the argmax token
// until the end id or maxLen tokens (the start id not counted).
func (r *Reference) Greedy(src []int64, maxLen int) ([]int64, error) {
	s, err := r.Start([][]int64{src})
	if err != nil {
		return nil, err
	}
	conf := r.qt.ModelConf
	end := int64(conf.TrgEndId)
	if end == 0 {
		end = int64(r.Vocab - 1)
	}
	var out []int64
	next := int64(conf.TrgStartId)
	for len(out) < maxLen {
		logits, _, err := s.Step([]int64{next})
		if err != nil {
			return nil, err
		}
		best := 0
		for j, v := range logits {
			if v > logits[best] {
				best = j
			}
		}
		next = int64(best)
		out = append(out, next)
		if next == end {
			break
		}
	}
	return out, nil
}

// TeacherForced returns the logits [len(tgt)][V] of every target position:
// position i sees the prefix tgt[:i+1].
func (r *Reference) TeacherForced(src, tgt []int64) ([][]float32, error) {
	enc, err := r.Encode(src)
	if err != nil {
		return nil, err
	}
	return r.forced(src, enc, tgt)
}

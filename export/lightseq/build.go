package lightseq

import (
	"fmt"
	"math"

	"github.com/qatc/qatc/export/lightseq/lspb"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/passes/transformer"
)

// Encode returns w as LightSeq's offset-127 bytes for clip c:
// floor(clamp(w·127/c, −127, 127) + 127 + 0.5).
func Encode(w []float32, c float32) []byte {
	out := make([]byte, len(w))
	for i, x := range w {
		v := float64(x) * 127 / float64(c)
		v = math.Max(-127, math.Min(127, v))
		out[i] = byte(math.Floor(v + 127 + 0.5))
	}
	return out
}

// Decode returns the weights offset-127 bytes b stand for with clip c.
func Decode(b []byte, c float32) []float32 {
	out := make([]float32, len(b))
	for i, u := range b {
		out[i] = float32(int(u)-127) * c / 127
	}
	return out
}

// matrix is a projection's weight seen as [in, out].
type matrix struct {
	in, out int
	at      func(i, j int) float32
}

// part is a projection as LightSeq computes it: the constant scalings the
// graph applies around it folded into its kernel (gain) and its bias
// (biasGain), so that LightSeq's fixed computation gives the graph's
// values.
type part struct {
	transformer.Projection
	gain, biasGain float64
}

// plain is a projection with nothing to fold.
func plain(p transformer.Projection) part { return part{p, 1, 1} }

// attnParts returns an attention's projections as LightSeq computes them.
// LightSeq scales Q·Kᵀ by 1/√head size; the graph's own temperature
// (a.Scale, however it splits between q, k and the scores) is folded
// into Q as the ratio, V's scaling into V, and the context's into the
// output kernel (the context enters it linearly; its bias is unscaled).
func (e *exporter) attnParts(where string, a transformer.Attention) (q, k, v, out part) {
	r, vs, cs := e.attnGains(a)
	q, k, v, out = part{a.Q, r, r}, plain(a.K), part{a.V, vs, vs}, part{a.Out, cs, 1}
	for _, f := range []struct {
		what string
		k    float64
	}{{"Q (the scores' scale over 1/√head size)", r}, {"V", vs}, {"the output projection (the context's scale)", cs}} {
		if !near(f.k, 1) {
			e.rep.Notes = append(e.rep.Notes, fmt.Sprintf("%s: the graph's constant scaling %.6g is folded into %s", where, f.k, f.what))
		}
	}
	return q, k, v, out
}

// attnGains returns what attnParts folds into Q, V and the output kernel.
func (e *exporter) attnGains(a transformer.Attention) (q, v, ctx float64) {
	return a.Scale * math.Sqrt(float64(e.tm.Hidden/e.tm.Heads)), a.VScale, a.ContextScale
}

// ffnParts returns a feed-forward block's projections as LightSeq
// computes them: a scaling of the hidden activation folded into dense2.
func (e *exporter) ffnParts(where string, f transformer.FFN) (d1, d2 part) {
	if !near(f.HiddenScale, 1) {
		e.rep.Notes = append(e.rep.Notes, fmt.Sprintf("%s: the graph's constant scaling %.6g of the hidden activation is folded into dense2", where, f.HiddenScale))
	}
	return plain(f.Dense1), part{f.Dense2, f.HiddenScale, 1}
}

// near reports whether a and b agree to float32 rounding.
func near(a, b float64) bool { return math.Abs(a-b) <= 1e-6*math.Max(1, math.Abs(b)) }

// kernel returns part p's weight, times its gain, as an [in, out] matrix.
func (e *exporter) kernel(p part) (matrix, error) {
	w, err := e.floats(p.Weight)
	if err != nil {
		return matrix{}, err
	}
	d := e.m.Initializer(p.Weight).Dims
	rows, cols := int(d[0]), int(d[1])
	lo := p.Out.Lo
	g := float32(p.gain)
	if p.Transposed {
		return matrix{cols, p.Out.Len(), func(i, j int) float32 { return w[(lo+j)*cols+i] * g }}, nil
	}
	return matrix{rows, p.Out.Len(), func(i, j int) float32 { return w[i*cols+lo+j] * g }}, nil
}

// concat writes the [in, Σout] matrix of ps side by side.
func (e *exporter) concat(ps ...part) ([]float32, int, error) {
	var ms []matrix
	width := 0
	for _, p := range ps {
		m, err := e.kernel(p)
		if err != nil {
			return nil, 0, err
		}
		if len(ms) > 0 && m.in != ms[0].in {
			return nil, 0, fmt.Errorf("kernels %s and %s have different input sizes", ps[0].Weight, p.Weight)
		}
		ms = append(ms, m)
		width += m.out
	}
	out := make([]float32, 0, ms[0].in*width)
	for i := range ms[0].in {
		for _, m := range ms {
			for j := range m.out {
				out = append(out, m.at(i, j))
			}
		}
	}
	return out, ms[0].in, nil
}

// biases returns the parts' biases, times their bias gains, side by side
// (zeros where none).
func (e *exporter) biases(ps ...part) ([]float32, error) {
	var out []float32
	for _, p := range ps {
		if p.Bias == "" {
			out = append(out, make([]float32, p.Out.Len())...)
			continue
		}
		b, err := e.floats(p.Bias)
		if err != nil {
			return nil, err
		}
		for _, x := range b[p.BiasOut.Lo:p.BiasOut.Hi] {
			out = append(out, x*float32(p.biasGain))
		}
	}
	return out, nil
}

// kernelBytes encodes parts fused into one LightSeq kernel with one clip:
// the largest of their weight clips, each times its part's gain (so that
// a lone part keeps the QAT model's integers).
func (e *exporter) kernelBytes(field string, ps ...part) ([]byte, float32, error) {
	var c float32
	src := ""
	type key struct {
		w string
		g float64
	}
	seen := map[key]bool{}
	for _, p := range ps {
		if seen[key{p.Weight, p.gain}] {
			continue
		}
		seen[key{p.Weight, p.gain}] = true
		pc, s, err := e.weightClip(p.Weight)
		if err != nil {
			return nil, 0, err
		}
		if g := float32(math.Abs(p.gain)); g != 1 {
			pc *= g
			s += fmt.Sprintf(" × %g folded", g)
		}
		if pc > c {
			c = pc
		}
		if src != "" {
			src += "; "
		}
		src += s
	}
	if len(seen) > 1 {
		src = "largest of: " + src
		e.rep.Notes = append(e.rep.Notes, fmt.Sprintf("%s fuses %d separately quantized kernels: all are written with the largest clip %g (each weight moves by at most one step of that grid)", field, len(seen), c))
	}
	w, _, err := e.concat(ps...)
	if err != nil {
		return nil, 0, err
	}
	return Encode(w, c), e.record(field, c, src), nil
}

// norm returns a LayerNorm's scale and bias.
func (e *exporter) norm(ln *transformer.LayerNorm) ([]float32, []float32, error) {
	if ln == nil {
		return nil, nil, fmt.Errorf("missing LayerNorm")
	}
	s, err := e.floats(ln.Scale)
	if err != nil {
		return nil, nil, err
	}
	b, err := e.floats(ln.Bias)
	return s, b, err
}

// qkvDense returns the clip of an attention's Q/K/V GEMM output as
// LightSeq computes it (attnParts): the largest clip of the quantizers on
// the K and V operands of the attention MatMuls (the projection outputs
// seen through views and scalings), each carried back through the
// graph's scaling and forward through what attnParts folds; the Q
// operand's only when K and V have none (its quantizer usually sits after
// the score scaling, so an uncalibrated clip carried back grows by √head
// size and would coarsen the grid the three share); else calibration of
// the GEMM outputs; else the fallback.
func (e *exporter) qkvDense(field string, a transformer.Attention) float32 {
	qg, vg, _ := e.attnGains(a)
	type operand struct {
		v string
		k float64 // operand clip → LightSeq's output clip
	}
	for _, ops := range [][]operand{
		{{a.KOperand, 1 / a.KScale}, {a.VOperand, vg / a.VScale}},
		{{a.QOperand, qg / a.QScale}},
	} {
		var c float32
		var srcs []string
		for _, o := range ops {
			qq, has := e.quant[o.v]
			if !has || qq.Kind == quantize.KindWeight || qq.Kind == quantize.KindSoftmax {
				continue
			}
			if cv, err := e.clipValue(qq); err == nil {
				k := math.Abs(o.k)
				c = max(c, cv*float32(k))
				if near(k, 1) {
					srcs = append(srcs, o.v)
				} else {
					srcs = append(srcs, fmt.Sprintf("%s × %.6g", o.v, k))
				}
			}
		}
		if len(srcs) > 0 {
			return e.record(field, c, fmt.Sprintf("quantizers on %v", srcs))
		}
	}
	return e.fallbackScaled(field, []scaled{{a.Q.Node.Output[0], qg}, {a.K.Node.Output[0], 1}, {a.V.Node.Output[0], vg}})
}

// ffnFirstOutput is the FFN1 output clip: calibration, else the
// activation quantizer's clip carried back through the hidden scaling.
func (e *exporter) ffnFirstOutput(field string, f transformer.FFN) float32 {
	if c, ok := e.calib[f.Dense1.Node.Output[0]]; ok && c > 0 {
		return e.record(field, c, "calibration: max|x| of "+f.Dense1.Node.Output[0])
	}
	if c, src, ok, err := e.actClip(f.Hidden); ok && err == nil {
		return e.record(field, c/float32(math.Abs(f.HiddenScale)), "consumer's "+src)
	}
	return e.fallback(field, f.Dense1.Node.Output[0])
}

// denseOut is a dense-output clip: calibration of the GEMM output, else
// the fallback.
func (e *exporter) denseOut(field string, p transformer.Projection) float32 {
	return e.fallback(field, p.Node.Output[0])
}

// build assembles the message.
// A projection is one of a layer's quantized matrices as LightSeq stores
// it: the int8 kernel with its clip (field names the clip), and the bias,
// from the graph's parts.
type projection struct {
	field  string
	kernel *[]byte
	clip   *float32
	bias   *[]float32
	parts  []part
}

// A block is a layer's LayerNorm and the projections that read it.
type block struct {
	scale, bias *[]float32
	norm        *transformer.LayerNorm
	projs       []projection
}

// blocks fills the fields of layer f's blocks, in order.
func (e *exporter) blocks(f string, bs ...block) error {
	for _, b := range bs {
		var err error
		if *b.scale, *b.bias, err = e.norm(b.norm); err != nil {
			return fmt.Errorf("%s: %v", f, err)
		}
		for _, p := range b.projs {
			if *p.kernel, *p.clip, err = e.kernelBytes(f+p.field, p.parts...); err != nil {
				return err
			}
			if *p.bias, err = e.biases(p.parts...); err != nil {
				return err
			}
		}
	}
	return nil
}

// An inputClip is a clip LightSeq applies where the graph's quantizer
// reads v (field names it), k the scaling between LightSeq's value and
// the graph's.
type inputClip struct {
	dst   *float32
	field string
	v     string
	k     float64
}

func (e *exporter) build() (*lspb.QuantTransformer, error) {
	tm := e.tm
	qt := &lspb.QuantTransformer{
		ModelConf: &lspb.QuantModelConf{
			HeadNum:           int32(tm.Heads),
			BeamSize:          int32(e.opts.BeamSize),
			ExtraDecodeLength: int32(e.opts.ExtraDecodeLength),
			LengthPenalty:     e.opts.LengthPenalty,
			SrcPaddingId:      int32(e.opts.PadID),
			TrgStartId:        int32(e.opts.BosID),
			TrgEndId:          int32(e.opts.EosID),
			SamplingMethod:    "beam_search",
			IsPostLn:          !tm.PreNorm,
			UseGelu:           tm.Activation == "gelu",
		},
	}
	var err error
	for i, l := range tm.Encoder {
		f := fmt.Sprintf("encoder[%d].", i)
		el := &lspb.QuantEncoderLayer{}
		a := l.SelfAttn
		q, k, v, out := e.attnParts(fmt.Sprintf("encoder layer %d self-attention", i), a)
		d1, d2 := e.ffnParts(fmt.Sprintf("encoder layer %d feed-forward block", i), l.FFN)
		if err := e.blocks(f,
			block{&el.MultiheadNormScale, &el.MultiheadNormBias, a.Norm, []projection{
				{"multihead_project_kernel_qkv_clip_max", &el.MultiheadProjectKernelQkv, &el.MultiheadProjectKernelQkvClipMax, &el.MultiheadProjectBiasQkv, []part{q, k, v}},
				{"multihead_project_kernel_output_clip_max", &el.MultiheadProjectKernelOutput, &el.MultiheadProjectKernelOutputClipMax, &el.MultiheadProjectBiasOutput, []part{out}},
			}},
			block{&el.FfnNormScale, &el.FfnNormBias, l.FFN.Norm, []projection{
				{"ffn_first_kernel_clip_max", &el.FfnFirstKernel, &el.FfnFirstKernelClipMax, &el.FfnFirstBias, []part{d1}},
				{"ffn_second_kernel_clip_max", &el.FfnSecondKernel, &el.FfnSecondKernelClipMax, &el.FfnSecondBias, []part{d2}},
			}},
		); err != nil {
			return nil, err
		}
		for _, c := range []inputClip{
			{&el.MultiheadLnClipMax, "multihead_ln_clip_max", a.Q.Input, 1},
			{&el.MultiheadProjectOutputClipMax, "multihead_project_output_clip_max", a.Context, a.ContextScale},
			{&el.FfnLnClipMax, "ffn_ln_clip_max", l.FFN.Dense1.Input, 1},
			{&el.FfnFirstActClipMax, "ffn_first_act_clip_max", l.FFN.Hidden, l.FFN.HiddenScale},
		} {
			if *c.dst, err = e.inputClip(f+c.field, c.v, c.k); err != nil {
				return nil, err
			}
		}
		el.MultiheadQkvDenseClipMax = e.qkvDense(f+"multihead_qkv_dense_clip_max", a)
		el.MultiheadOutputDenseClipMax = e.denseOut(f+"multihead_output_dense_clip_max", a.Out)
		el.FfnFirstOutputClipMax = e.ffnFirstOutput(f+"ffn_first_output_clip_max", l.FFN)
		el.FfnSecondOutputClipMax = e.denseOut(f+"ffn_second_output_clip_max", l.FFN.Dense2)
		qt.EncoderStack = append(qt.EncoderStack, el)
	}
	var kvs []part
	for i, l := range tm.Decoder {
		f := fmt.Sprintf("decoder[%d].", i)
		dl := &lspb.QuantDecoderLayer{}
		a, x := l.SelfAttn, l.CrossAttn
		q, k, v, out := e.attnParts(fmt.Sprintf("decoder layer %d self-attention", i), a)
		xq, xk, xv, xout := e.attnParts(fmt.Sprintf("decoder layer %d cross-attention", i), x)
		d1, d2 := e.ffnParts(fmt.Sprintf("decoder layer %d feed-forward block", i), l.FFN)
		if err := e.blocks(f,
			block{&dl.SelfNormScale, &dl.SelfNormBias, a.Norm, []projection{
				{"self_project_kernel_qkv_clip_max", &dl.SelfProjectKernelQkv, &dl.SelfProjectKernelQkvClipMax, &dl.SelfProjectBiasQkv, []part{q, k, v}},
				{"self_project_kernel_output_clip_max", &dl.SelfProjectKernelOutput, &dl.SelfProjectKernelOutputClipMax, &dl.SelfProjectBiasOutput, []part{out}},
			}},
			block{&dl.EncdecNormScale, &dl.EncdecNormBias, x.Norm, []projection{
				{"encdec_project_kernel_q_clip_max", &dl.EncdecProjectKernelQ, &dl.EncdecProjectKernelQClipMax, &dl.EncdecProjectBiasQ, []part{xq}},
				{"encdec_project_kernel_output_clip_max", &dl.EncdecProjectKernelOutput, &dl.EncdecProjectKernelOutputClipMax, &dl.EncdecProjectBiasOutput, []part{xout}},
			}},
			block{&dl.FfnNormScale, &dl.FfnNormBias, l.FFN.Norm, []projection{
				{"ffn_first_kernel_clip_max", &dl.FfnFirstKernel, &dl.FfnFirstKernelClipMax, &dl.FfnFirstBias, []part{d1}},
				{"ffn_second_kernel_clip_max", &dl.FfnSecondKernel, &dl.FfnSecondKernelClipMax, &dl.FfnSecondBias, []part{d2}},
			}},
		); err != nil {
			return nil, err
		}
		for _, c := range []inputClip{
			{&dl.SelfLnClipMax, "self_ln_clip_max", a.Q.Input, 1},
			{&dl.SelfProjectOutputClipMax, "self_project_output_clip_max", a.Context, a.ContextScale},
			{&dl.EncdecLnClipMax, "encdec_ln_clip_max", x.Q.Input, 1},
			{&dl.EncdecProjectOutputClipMax, "encdec_project_output_clip_max", x.Context, x.ContextScale},
			{&dl.FfnLnClipMax, "ffn_ln_clip_max", l.FFN.Dense1.Input, 1},
			{&dl.FfnFirstActClipMax, "ffn_first_act_clip_max", l.FFN.Hidden, l.FFN.HiddenScale},
		} {
			if *c.dst, err = e.inputClip(f+c.field, c.v, c.k); err != nil {
				return nil, err
			}
		}
		dl.SelfQkvDenseClipMax = e.qkvDense(f+"self_qkv_dense_clip_max", a)
		dl.SelfQkvBiasOutClipMax = e.qkvDense(f+"self_qkv_bias_out_clip_max", a)
		dl.EncdecQDenseClipMax = e.encdecQ(f+"encdec_q_dense_clip_max", x)
		dl.SelfOutputDenseClipMax = e.denseOut(f+"self_output_dense_clip_max", a.Out)
		dl.EncdecOutputDenseClipMax = e.denseOut(f+"encdec_output_dense_clip_max", x.Out)
		dl.FfnFirstOutputClipMax = e.ffnFirstOutput(f+"ffn_first_output_clip_max", l.FFN)
		dl.FfnSecondOutputClipMax = e.denseOut(f+"ffn_second_output_clip_max", l.FFN.Dense2)
		qt.DecoderStack = append(qt.DecoderStack, dl)
		kvs = append(kvs, xk, xv)
	}
	if qt.SrcEmbedding, err = e.embedding("src", tm.Src, tm.EncoderNorm); err != nil {
		return nil, err
	}
	if qt.TrgEmbedding, err = e.embedding("trg", tm.Tgt, tm.DecoderNorm); err != nil {
		return nil, err
	}
	// Encoder-decoder K/V: [H, L, 2, H], one clip written L times.
	t := qt.TrgEmbedding
	var c float32
	if t.EncodeOutputProjectKernelKv, c, err = e.kernelBytes("trg.encode_output_project_kernel_kv_clip_max", kvs...); err != nil {
		return nil, err
	}
	for range tm.Decoder {
		t.EncodeOutputProjectKernelKvClipMax = append(t.EncodeOutputProjectKernelKvClipMax, c)
	}
	if t.EncodeOutputProjectBiasKv, err = e.biases(kvs...); err != nil {
		return nil, err
	}
	if t.SharedBias, err = e.biases(plain(tm.Logits)); err != nil {
		return nil, err
	}
	if t.OutputLnClipMax, err = e.inputClip("trg.output_ln_clip_max", tm.Logits.Input, 1); err != nil {
		return nil, err
	}
	t.LogitsClipMax = e.denseOut("trg.logits_clip_max", tm.Logits)
	return qt, nil
}

// encdecQ is the cross-attention Q GEMM output clip as LightSeq computes
// it (attnParts): calibration, else the Q operand quantizer's clip
// carried back through the graph's scaling of q and forward through the
// temperature folded into Q.
func (e *exporter) encdecQ(field string, a transformer.Attention) float32 {
	qg, _, _ := e.attnGains(a)
	if c, ok := e.calib[a.Q.Node.Output[0]]; ok && c > 0 {
		return e.record(field, c*float32(math.Abs(qg)), "calibration: max|x| of "+a.Q.Node.Output[0])
	}
	if c, src, ok, err := e.actClip(a.QOperand); ok && err == nil {
		k := math.Abs(qg / a.QScale)
		return e.record(field, c*float32(k), fmt.Sprintf("%s × %.6g (the scalings between it and LightSeq's Q)", src, k))
	}
	return e.fallbackScaled(field, []scaled{{a.Q.Node.Output[0], qg}})
}

// embedding writes one token table, positions and final LayerNorm.
func (e *exporter) embedding(which string, emb transformer.Embedding, ln *transformer.LayerNorm) (*lspb.QuantEmbeddingLayer, error) {
	tm := e.tm
	h := tm.Hidden
	table, err := e.floats(emb.Table)
	if err != nil {
		return nil, err
	}
	l := &lspb.QuantEmbeddingLayer{}
	c, src, err := e.weightClip(emb.Table)
	if err != nil {
		return nil, err
	}
	sq := float32(math.Sqrt(float64(h)))
	if r := emb.Scale / sq; math.Abs(float64(r-1)) > 1e-4 {
		// LightSeq always multiplies by √H: store table·scale/√H (source only;
		// refuse handled the target).
		scaled := make([]float32, len(table))
		for i, x := range table {
			scaled[i] = x * r
		}
		table, c = scaled, c*r
		e.rep.Notes = append(e.rep.Notes, fmt.Sprintf("%s table %s is scaled by %g in the graph, not √%d: written multiplied by %g", which, emb.Table, emb.Scale, h, r))
	}
	l.EmbClipMax = e.record(which+".emb_clip_max", c, src)
	if which == "trg" {
		v := len(table) / h
		tr := make([]float32, len(table))
		for i := range v {
			for j := range h {
				tr[j*v+i] = table[i*h+j]
			}
		}
		table = tr
	}
	l.TokenEmbedding = Encode(table, c)
	if l.PositionEmbedding, err = e.positions(emb); err != nil {
		return nil, err
	}
	if ln != nil {
		if l.NormScale, l.NormBias, err = e.norm(ln); err != nil {
			return nil, err
		}
	} else {
		// Post-norm stacks end on a layer's LayerNorm: an identity one.
		l.NormScale = make([]float32, h)
		for i := range l.NormScale {
			l.NormScale[i] = 1
		}
		l.NormBias = make([]float32, h)
	}
	return l, nil
}

// positions returns the float position table [max_step, H]: the stored
// one, or the computed one evaluated by running the model.
func (e *exporter) positions(emb transformer.Embedding) ([]float32, error) {
	if emb.PositionTable != "" {
		return e.floats(emb.PositionTable)
	}
	n := e.opts.MaxStep
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = int64(e.opts.EosID)
	}
	feed := map[string]*ort.Tensor{
		e.tm.SrcInput: ort.Int64([]int64{1, int64(n)}, ids),
		e.tm.TgtInput: ort.Int64([]int64{1, int64(n)}, ids),
	}
	s, err := ort.Open(e.m, &ort.Options{Outputs: []string{emb.Positions}})
	if err != nil {
		return nil, fmt.Errorf("evaluate positions %s: %v", emb.Positions, err)
	}
	defer s.Close()
	out, err := s.Run(feed, emb.Positions)
	if err != nil {
		return nil, fmt.Errorf("evaluate positions %s over %d steps (Options.MaxStep): %v; use a MaxStep no longer than the model's longest sequence", emb.Positions, n, err)
	}
	p := out[emb.Positions].Float32s()
	if len(p) != n*e.tm.Hidden {
		return nil, unsupported("positions %s hold %d values for %d steps of width %d: they depend on the batch or are not absolute", emb.Positions, len(p), n, e.tm.Hidden)
	}
	return p, nil
}

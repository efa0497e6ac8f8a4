package lightseq

import (
	"fmt"
	"math"

	"github.com/qatc/qatc/export/lightseq/lspb"
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
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

// kernel returns projection p's weight as an [in, out] matrix.
func (e *exporter) kernel(p transformer.Projection) (matrix, error) {
	w, err := e.floats(p.Weight)
	if err != nil {
		return matrix{}, err
	}
	d := e.m.Initializer(p.Weight).Dims
	rows, cols := int(d[0]), int(d[1])
	lo := p.Out.Lo
	if p.Transposed {
		return matrix{cols, p.Out.Len(), func(i, j int) float32 { return w[(lo+j)*cols+i] }}, nil
	}
	return matrix{rows, p.Out.Len(), func(i, j int) float32 { return w[i*cols+lo+j] }}, nil
}

// concat writes the [in, Σout] matrix of ps side by side.
func (e *exporter) concat(ps ...transformer.Projection) ([]float32, int, error) {
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

// biases returns the projections' biases side by side (zeros where none).
func (e *exporter) biases(ps ...transformer.Projection) ([]float32, error) {
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
		out = append(out, b[p.BiasOut.Lo:p.BiasOut.Hi]...)
	}
	return out, nil
}

// kernelBytes encodes projections fused into one LightSeq kernel with one
// clip: the largest of their weight clips.
func (e *exporter) kernelBytes(field string, ps ...transformer.Projection) ([]byte, float32, error) {
	var c float32
	src := ""
	seen := map[string]bool{}
	for _, p := range ps {
		if seen[p.Weight] {
			continue
		}
		seen[p.Weight] = true
		pc, s, err := e.weightClip(p.Weight)
		if err != nil {
			return nil, 0, err
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

// qkvDense returns the clip of an attention's Q/K/V GEMM output: from the
// quantizers on the K and V operands (the same values, seen through
// views), and on Q when nothing scales it in between.
func (e *exporter) qkvDense(field string, a transformer.Attention, q, k, v bool) float32 {
	var c float32
	var srcs []string
	try := func(operand string, ok bool) {
		if !ok {
			return
		}
		qq, has := e.quant[operand]
		if !has {
			return
		}
		if _, s := e.walkScale(operand); s != 1 {
			return
		}
		if cv, err := e.clipValue(qq); err == nil {
			c = max(c, cv)
			srcs = append(srcs, operand)
		}
	}
	try(a.QOperand, q)
	try(a.KOperand, k)
	try(a.VOperand, v)
	if len(srcs) > 0 {
		return e.record(field, c, fmt.Sprintf("quantizers on %v", srcs))
	}
	var vs []string
	for i, p := range []transformer.Projection{a.Q, a.K, a.V} {
		if []bool{q, k, v}[i] {
			vs = append(vs, p.Node.Output[0])
		}
	}
	return e.fallback(field, vs...)
}

// walkScale returns the constant factor between an attention operand and
// the projection output it comes from.
func (e *exporter) walkScale(v string) (string, float64) {
	scale := 1.0
	for {
		p := e.m.Producer(v)
		if p == nil {
			return v, scale
		}
		switch p.OpType {
		case "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity":
			v = p.Input[0]
			continue
		case "Mul", "Div":
			if t := constFloat(e.m, p.Input[1]); t != nil {
				if p.OpType == "Mul" {
					scale *= float64(*t)
				} else {
					scale /= float64(*t)
				}
				v = p.Input[0]
				continue
			}
		}
		return v, scale
	}
}

// constFloat reads a one-element float initializer or Constant.
func constFloat(m *graph.Model, v string) *float32 {
	t := m.Initializer(v)
	if t == nil {
		if p := m.Producer(v); p != nil && p.OpType == "Constant" {
			if a := graph.Attr(p, "value"); a != nil {
				t = a.T
			}
		}
	}
	if t == nil {
		return nil
	}
	f, err := graph.Floats(t)
	if err != nil || len(f) != 1 {
		return nil
	}
	return &f[0]
}

// ffnFirstOutput is the FFN1 output clip: calibration, else the
// activation quantizer's clip.
func (e *exporter) ffnFirstOutput(field string, f transformer.FFN) float32 {
	if c, ok := e.calib[f.Dense1.Node.Output[0]]; ok && c > 0 {
		return e.record(field, c, "calibration: max|x| of "+f.Dense1.Node.Output[0])
	}
	if c, src, ok, err := e.actClip(f.Hidden); ok && err == nil {
		return e.record(field, c, "consumer's "+src)
	}
	return e.fallback(field, f.Dense1.Node.Output[0])
}

// denseOut is a dense-output clip: calibration of the GEMM output, else
// the fallback.
func (e *exporter) denseOut(field string, p transformer.Projection) float32 {
	return e.fallback(field, p.Node.Output[0])
}

// build assembles the message.
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
		if el.MultiheadNormScale, el.MultiheadNormBias, err = e.norm(a.Norm); err != nil {
			return nil, fmt.Errorf("%s: %v", f, err)
		}
		if el.MultiheadProjectKernelQkv, el.MultiheadProjectKernelQkvClipMax, err = e.kernelBytes(f+"multihead_project_kernel_qkv_clip_max", a.Q, a.K, a.V); err != nil {
			return nil, err
		}
		if el.MultiheadProjectBiasQkv, err = e.biases(a.Q, a.K, a.V); err != nil {
			return nil, err
		}
		if el.MultiheadProjectKernelOutput, el.MultiheadProjectKernelOutputClipMax, err = e.kernelBytes(f+"multihead_project_kernel_output_clip_max", a.Out); err != nil {
			return nil, err
		}
		if el.MultiheadProjectBiasOutput, err = e.biases(a.Out); err != nil {
			return nil, err
		}
		if el.FfnNormScale, el.FfnNormBias, err = e.norm(l.FFN.Norm); err != nil {
			return nil, fmt.Errorf("%s: %v", f, err)
		}
		if el.FfnFirstKernel, el.FfnFirstKernelClipMax, err = e.kernelBytes(f+"ffn_first_kernel_clip_max", l.FFN.Dense1); err != nil {
			return nil, err
		}
		if el.FfnFirstBias, err = e.biases(l.FFN.Dense1); err != nil {
			return nil, err
		}
		if el.FfnSecondKernel, el.FfnSecondKernelClipMax, err = e.kernelBytes(f+"ffn_second_kernel_clip_max", l.FFN.Dense2); err != nil {
			return nil, err
		}
		if el.FfnSecondBias, err = e.biases(l.FFN.Dense2); err != nil {
			return nil, err
		}
		for _, c := range []struct {
			dst   *float32
			field string
			v     string
		}{
			{&el.MultiheadLnClipMax, "multihead_ln_clip_max", a.Q.Input},
			{&el.MultiheadProjectOutputClipMax, "multihead_project_output_clip_max", a.Context},
			{&el.FfnLnClipMax, "ffn_ln_clip_max", l.FFN.Dense1.Input},
			{&el.FfnFirstActClipMax, "ffn_first_act_clip_max", l.FFN.Hidden},
		} {
			if *c.dst, err = e.inputClip(f+c.field, c.v); err != nil {
				return nil, err
			}
		}
		el.MultiheadQkvDenseClipMax = e.qkvDense(f+"multihead_qkv_dense_clip_max", a, true, true, true)
		el.MultiheadOutputDenseClipMax = e.denseOut(f+"multihead_output_dense_clip_max", a.Out)
		el.FfnFirstOutputClipMax = e.ffnFirstOutput(f+"ffn_first_output_clip_max", l.FFN)
		el.FfnSecondOutputClipMax = e.denseOut(f+"ffn_second_output_clip_max", l.FFN.Dense2)
		qt.EncoderStack = append(qt.EncoderStack, el)
	}
	var kvs []transformer.Projection
	for i, l := range tm.Decoder {
		f := fmt.Sprintf("decoder[%d].", i)
		dl := &lspb.QuantDecoderLayer{}
		a, x := l.SelfAttn, l.CrossAttn
		if dl.SelfNormScale, dl.SelfNormBias, err = e.norm(a.Norm); err != nil {
			return nil, fmt.Errorf("%s: %v", f, err)
		}
		if dl.SelfProjectKernelQkv, dl.SelfProjectKernelQkvClipMax, err = e.kernelBytes(f+"self_project_kernel_qkv_clip_max", a.Q, a.K, a.V); err != nil {
			return nil, err
		}
		if dl.SelfProjectBiasQkv, err = e.biases(a.Q, a.K, a.V); err != nil {
			return nil, err
		}
		if dl.SelfProjectKernelOutput, dl.SelfProjectKernelOutputClipMax, err = e.kernelBytes(f+"self_project_kernel_output_clip_max", a.Out); err != nil {
			return nil, err
		}
		if dl.SelfProjectBiasOutput, err = e.biases(a.Out); err != nil {
			return nil, err
		}
		if dl.EncdecNormScale, dl.EncdecNormBias, err = e.norm(x.Norm); err != nil {
			return nil, fmt.Errorf("%s: %v", f, err)
		}
		if dl.EncdecProjectKernelQ, dl.EncdecProjectKernelQClipMax, err = e.kernelBytes(f+"encdec_project_kernel_q_clip_max", x.Q); err != nil {
			return nil, err
		}
		if dl.EncdecProjectBiasQ, err = e.biases(x.Q); err != nil {
			return nil, err
		}
		if dl.EncdecProjectKernelOutput, dl.EncdecProjectKernelOutputClipMax, err = e.kernelBytes(f+"encdec_project_kernel_output_clip_max", x.Out); err != nil {
			return nil, err
		}
		if dl.EncdecProjectBiasOutput, err = e.biases(x.Out); err != nil {
			return nil, err
		}
		if dl.FfnNormScale, dl.FfnNormBias, err = e.norm(l.FFN.Norm); err != nil {
			return nil, fmt.Errorf("%s: %v", f, err)
		}
		if dl.FfnFirstKernel, dl.FfnFirstKernelClipMax, err = e.kernelBytes(f+"ffn_first_kernel_clip_max", l.FFN.Dense1); err != nil {
			return nil, err
		}
		if dl.FfnFirstBias, err = e.biases(l.FFN.Dense1); err != nil {
			return nil, err
		}
		if dl.FfnSecondKernel, dl.FfnSecondKernelClipMax, err = e.kernelBytes(f+"ffn_second_kernel_clip_max", l.FFN.Dense2); err != nil {
			return nil, err
		}
		if dl.FfnSecondBias, err = e.biases(l.FFN.Dense2); err != nil {
			return nil, err
		}
		for _, c := range []struct {
			dst   *float32
			field string
			v     string
		}{
			{&dl.SelfLnClipMax, "self_ln_clip_max", a.Q.Input},
			{&dl.SelfProjectOutputClipMax, "self_project_output_clip_max", a.Context},
			{&dl.EncdecLnClipMax, "encdec_ln_clip_max", x.Q.Input},
			{&dl.EncdecProjectOutputClipMax, "encdec_project_output_clip_max", x.Context},
			{&dl.FfnLnClipMax, "ffn_ln_clip_max", l.FFN.Dense1.Input},
			{&dl.FfnFirstActClipMax, "ffn_first_act_clip_max", l.FFN.Hidden},
		} {
			if *c.dst, err = e.inputClip(f+c.field, c.v); err != nil {
				return nil, err
			}
		}
		dl.SelfQkvDenseClipMax = e.qkvDense(f+"self_qkv_dense_clip_max", a, true, true, true)
		dl.SelfQkvBiasOutClipMax = e.qkvDense(f+"self_qkv_bias_out_clip_max", a, true, true, true)
		dl.EncdecQDenseClipMax = e.encdecQ(f+"encdec_q_dense_clip_max", x)
		dl.SelfOutputDenseClipMax = e.denseOut(f+"self_output_dense_clip_max", a.Out)
		dl.EncdecOutputDenseClipMax = e.denseOut(f+"encdec_output_dense_clip_max", x.Out)
		dl.FfnFirstOutputClipMax = e.ffnFirstOutput(f+"ffn_first_output_clip_max", l.FFN)
		dl.FfnSecondOutputClipMax = e.denseOut(f+"ffn_second_output_clip_max", l.FFN.Dense2)
		qt.DecoderStack = append(qt.DecoderStack, dl)
		kvs = append(kvs, x.K, x.V)
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
	if t.SharedBias, err = e.biases(tm.Logits); err != nil {
		return nil, err
	}
	if t.OutputLnClipMax, err = e.inputClip("trg.output_ln_clip_max", tm.Logits.Input); err != nil {
		return nil, err
	}
	t.LogitsClipMax = e.denseOut("trg.logits_clip_max", tm.Logits)
	return qt, nil
}

// encdecQ is the cross-attention Q GEMM output clip: calibration, else
// the Q operand quantizer's clip mapped back through the score scale.
func (e *exporter) encdecQ(field string, a transformer.Attention) float32 {
	if c, ok := e.calib[a.Q.Node.Output[0]]; ok && c > 0 {
		return e.record(field, c, "calibration: max|x| of "+a.Q.Node.Output[0])
	}
	if q, ok := e.quant[a.QOperand]; ok {
		if c, err := e.clipValue(q); err == nil {
			_, s := e.walkScale(a.QOperand)
			return e.record(field, c/float32(s), fmt.Sprintf("quantizer on the Q operand %s divided by its scale %g", a.QOperand, s))
		}
	}
	return e.fallback(field, a.Q.Node.Output[0])
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

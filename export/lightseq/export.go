package lightseq

import (
	"errors"
	"fmt"
	"math"
	"sort"

	"github.com/qatc/qatc/export/lightseq/lspb"
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/passes/transformer"
)

// Options configure Export.
type Options struct {
	// PadID, BosID and EosID are the special token ids (model_conf's
	// src_padding_id, trg_start_id and trg_end_id).
	PadID, BosID, EosID int
	// BeamSize (default 4), LengthPenalty (default 0.6) and
	// ExtraDecodeLength (default 50) go to model_conf for LightSeq's beam
	// search.
	BeamSize          int
	LengthPenalty     float32
	ExtraDecodeLength int
	// MaxStep is the number of position rows written when the graph
	// computes its positions instead of slicing a stored table (default
	// 256); a stored table is written whole.
	MaxStep int
	// Map names tensors by role for the recogniser (transformer.Options).
	Map map[string]string
	// Calib, when set, is a batch (graph input name → int64 tensor) the QAT
	// model is run on to measure the GEMM outputs whose clips qatc has no
	// quantizer for.
	Calib map[string]*ort.Tensor
}

// ClipSource says where one clip field's value came from.
type ClipSource struct {
	Field  string // e.g. "decoder[1].self_qkv_dense_clip_max"
	Value  float32
	Source string // "quantizer X", "calibration max|V|", "fallback …"
}

// Report says what Export wrote and from where.
type Report struct {
	Model *transformer.Model
	Clips []ClipSource
	// Notes are the approximations made (fused clips, rescaled tables).
	Notes []string
}

// Fallbacks counts the clip fields written from the fallback value.
func (r *Report) Fallbacks() int {
	n := 0
	for _, c := range r.Clips {
		if len(c.Source) >= 8 && c.Source[:8] == "fallback" {
			n++
		}
	}
	return n
}

// ErrUnsupported is wrapped by the errors of models LightSeq cannot
// represent.
var ErrUnsupported = errors.New("LightSeq cannot represent this model")

func unsupported(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnsupported, fmt.Sprintf(format, args...))
}

// exporter carries one Export's state.
type exporter struct {
	m      *graph.Model
	tm     *transformer.Model
	opts   Options
	quant  map[string]quantize.Quantizer // by quantized tensor
	params quantize.Params
	calib  map[string]float32 // max |x| by value
	rep    *Report
}

// Export converts a QAT encoder-decoder model into LightSeq's
// QuantTransformer: 8-bit per-tensor weights as offset-127 bytes in
// [in, out] layout, clips from qatc's quantizers (see ClipTable), and the
// model_conf from the graph and opts. The result satisfies Check.
func Export(qat *graph.Model, opts Options) (*lspb.QuantTransformer, *Report, error) {
	if opts.BeamSize == 0 {
		opts.BeamSize = 4
	}
	if opts.LengthPenalty == 0 {
		opts.LengthPenalty = 0.6
	}
	if opts.ExtraDecodeLength == 0 {
		opts.ExtraDecodeLength = 50
	}
	if opts.MaxStep == 0 {
		opts.MaxStep = 256
	}
	rec, err := quantize.ReadRecord(qat)
	if err != nil {
		return nil, nil, fmt.Errorf("lightseq export: %w", err)
	}
	qs, err := quantize.Find(qat)
	if err != nil {
		return nil, nil, fmt.Errorf("lightseq export: %w", err)
	}
	tm, err := transformer.Recognize(qat, transformer.Options{Map: opts.Map})
	if err != nil {
		if errors.Is(err, transformer.ErrNotEncoderDecoder) {
			return nil, nil, fmt.Errorf("lightseq export: %w: %v", ErrUnsupported, err)
		}
		return nil, nil, fmt.Errorf("lightseq export: %w", err)
	}
	e := &exporter{m: qat, tm: tm, opts: opts, quant: map[string]quantize.Quantizer{}, params: rec.Params, rep: &Report{Model: tm}}
	for _, q := range qs {
		e.quant[q.Tensor] = q
	}
	if err := e.refuse(); err != nil {
		return nil, nil, fmt.Errorf("lightseq export: %w", err)
	}
	if err := e.calibrate(); err != nil {
		return nil, nil, fmt.Errorf("lightseq export: %w", err)
	}
	qt, err := e.build()
	if err != nil {
		return nil, nil, fmt.Errorf("lightseq export: %w", err)
	}
	if err := Check(qt); err != nil {
		return nil, nil, fmt.Errorf("lightseq export: the file would not load: %w", err)
	}
	return qt, e.rep, nil
}

// refuse rejects what LightSeq's int8 format cannot hold.
func (e *exporter) refuse() error {
	tm := e.tm
	for _, q := range e.quant {
		if q.Axis != nil && q.Kind == quantize.KindWeight {
			return unsupported("weight %s is quantized per channel (axis %d): LightSeq stores one clip per tensor; insert with per-tensor granularity", q.Tensor, *q.Axis)
		}
		if q.Bits != 8 && q.Kind != quantize.KindSoftmax {
			return unsupported("%s is quantized to %d bits: LightSeq's kernels are 8-bit only", q.Tensor, q.Bits)
		}
	}
	if !tm.Tied {
		return unsupported("the output projection %s is not the target token table %s: LightSeq computes logits with the target table", tm.Logits.Weight, tm.Tgt.Table)
	}
	if tm.Activation != "relu" && tm.Activation != "gelu" {
		return unsupported("feed-forward activation %q", tm.Activation)
	}
	if !tm.PreNorm {
		for _, n := range []*transformer.LayerNorm{tm.EncoderNorm, tm.DecoderNorm} {
			if n != nil {
				return unsupported("post-norm layers followed by a final LayerNorm of the stack (scale %s): LightSeq's post-norm stacks end on their last layer's LayerNorm, so a second one cannot be written", n.Scale)
			}
		}
	}
	if len(tm.Encoder) == 0 || len(tm.Decoder) == 0 {
		return unsupported("LightSeq needs both an encoder and a decoder")
	}
	for _, emb := range []transformer.Embedding{tm.Src, tm.Tgt} {
		if emb.PositionTable == "" && emb.Positions == "" {
			return unsupported("the embedding of %s adds no absolute positions (rotary or relative positions are not LightSeq's)", emb.Table)
		}
	}
	sq := float32(math.Sqrt(float64(tm.Hidden)))
	if math.Abs(float64(tm.Tgt.Scale-sq)) > 1e-4*float64(sq) {
		return unsupported("target embeddings are scaled by %g, not √%d: LightSeq always scales by √hidden and the tied table is also the logits kernel", tm.Tgt.Scale, tm.Hidden)
	}
	return nil
}

// floats reads an initializer.
func (e *exporter) floats(name string) ([]float32, error) {
	t := e.m.Initializer(name)
	if t == nil {
		return nil, fmt.Errorf("initializer %s is missing", name)
	}
	return graph.Floats(t)
}

// clipValue reads a quantizer's scalar clip.
func (e *exporter) clipValue(q quantize.Quantizer) (float32, error) {
	v, err := e.floats(q.Clip)
	if err != nil {
		return 0, err
	}
	if len(v) != 1 {
		return 0, unsupported("clip %s of %s has %d values: LightSeq stores one clip per tensor", q.Clip, q.Tensor, len(v))
	}
	return v[0], nil
}

// weightClip returns the clip of weight initializer w.
func (e *exporter) weightClip(w string) (float32, string, error) {
	q, ok := e.quant[w]
	if !ok || q.Kind != quantize.KindWeight {
		v, err := e.floats(w)
		if err != nil {
			return 0, "", err
		}
		var mx float32
		for _, x := range v {
			mx = max(mx, float32(math.Abs(float64(x))))
		}
		return mx, "no quantizer on " + w + ": max|w|", nil
	}
	c, err := e.clipValue(q)
	return c, "quantizer on " + w + " (" + q.Clip + ")", err
}

// actClip returns the clip of the act/relu quantizer on value v.
func (e *exporter) actClip(v string) (float32, string, bool, error) {
	q, ok := e.quant[v]
	if !ok || q.Kind == quantize.KindWeight || q.Kind == quantize.KindSoftmax {
		return 0, "", false, nil
	}
	c, err := e.clipValue(q)
	return c, "quantizer on " + v, true, err
}

// record notes a clip field's value and source.
func (e *exporter) record(field string, v float32, src string) float32 {
	e.rep.Clips = append(e.rep.Clips, ClipSource{field, v, src})
	return v
}

// inputClip is an activation clip that must come from a quantizer on v,
// where the graph holds k times the value LightSeq quantizes (the clip is
// divided by |k|): the fallback (with a note) when the input was excluded
// from quantization.
func (e *exporter) inputClip(field, v string, k float64) (float32, error) {
	c, src, ok, err := e.actClip(v)
	if err != nil {
		return 0, err
	}
	if !ok {
		return e.fallbackScaled(field, []scaled{{v, 1 / k}}), nil
	}
	if k = math.Abs(k); k != 1 {
		c /= float32(k)
		src += fmt.Sprintf(" / %.6g (the graph's scaling)", k)
	}
	return e.record(field, c, src), nil
}

// scaled is a value whose calibrated range, times k, gives a clip.
type scaled struct {
	v string
	k float64
}

// fallback writes the calibrated range of vs, or Params.ActClipMax.
func (e *exporter) fallback(field string, vs ...string) float32 {
	ss := make([]scaled, len(vs))
	for i, v := range vs {
		ss[i] = scaled{v, 1}
	}
	return e.fallbackScaled(field, ss)
}

// fallbackScaled writes the largest calibrated range of the values, each
// times its factor, or Params.ActClipMax when none was calibrated.
func (e *exporter) fallbackScaled(field string, vs []scaled) float32 {
	var mx float32
	found := false
	for _, v := range vs {
		if c, ok := e.calib[v.v]; ok {
			mx, found = max(mx, c*float32(math.Abs(v.k))), true
		}
	}
	if found && mx > 0 {
		return e.record(field, mx, fmt.Sprintf("calibration: max|x| of %s", vs[0].v))
	}
	return e.record(field, e.params.ActClipMax, fmt.Sprintf("fallback: Params.ActClipMax (no quantizer or calibration for %s)", vs[0].v))
}

// denseClips lists the GEMM outputs that have no quantizer of their own,
// for calibration.
func (e *exporter) denseValues() []string {
	var vs []string
	add := func(ps ...transformer.Projection) {
		for _, p := range ps {
			vs = append(vs, p.Node.Output[0], p.Output)
		}
	}
	for _, l := range e.tm.Encoder {
		add(l.SelfAttn.Q, l.SelfAttn.K, l.SelfAttn.V, l.SelfAttn.Out, l.FFN.Dense1, l.FFN.Dense2)
	}
	for _, l := range e.tm.Decoder {
		add(l.SelfAttn.Q, l.SelfAttn.K, l.SelfAttn.V, l.SelfAttn.Out, l.CrossAttn.Q, l.CrossAttn.Out, l.FFN.Dense1, l.FFN.Dense2)
	}
	add(e.tm.Logits)
	seen := map[string]bool{}
	var out []string
	for _, v := range vs {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	sort.Strings(out)
	return out
}

// calibrate runs the QAT model on Options.Calib and records max |x| of
// every dense output. LightSeq requantizes a GEMM's output before adding
// the bias, so the output of a Gemm that adds its bias itself is measured
// less that bias (as a MatMul's output is, its bias Add coming after).
func (e *exporter) calibrate() error {
	e.calib = map[string]float32{}
	if e.opts.Calib == nil {
		return nil
	}
	vs := e.denseValues()
	s, err := ort.Open(e.m, &ort.Options{Outputs: vs})
	if err != nil {
		return fmt.Errorf("calibration: %v", err)
	}
	defer s.Close()
	out, err := s.Run(e.opts.Calib, vs...)
	if err != nil {
		return fmt.Errorf("calibration: %v", err)
	}
	biases, err := e.gemmBiases()
	if err != nil {
		return fmt.Errorf("calibration: %v", err)
	}
	for _, v := range vs {
		var mx float32
		b := biases[v]
		for i, x := range out[v].Float32s() {
			if len(b) > 0 {
				x -= b[i%len(b)]
			}
			mx = max(mx, float32(math.Abs(float64(x))))
		}
		e.calib[v] = mx
	}
	return nil
}

// gemmBiases returns the bias vectors that Gemm nodes of the model's
// projections add themselves, by the node's output.
func (e *exporter) gemmBiases() (map[string][]float32, error) {
	out := map[string][]float32{}
	add := func(ps ...transformer.Projection) error {
		for _, p := range ps {
			n := p.Node
			// The C operand itself, whole: what the Gemm adds.
			if n.OpType != "Gemm" || len(n.Input) < 3 || n.Input[2] != p.Bias || p.Bias == "" || out[n.Output[0]] != nil {
				continue
			}
			b, err := e.floats(p.Bias)
			if err != nil {
				return err
			}
			out[n.Output[0]] = b
		}
		return nil
	}
	var ps []transformer.Projection
	for _, l := range e.tm.Encoder {
		ps = append(ps, l.SelfAttn.Q, l.SelfAttn.K, l.SelfAttn.V, l.SelfAttn.Out, l.FFN.Dense1, l.FFN.Dense2)
	}
	for _, l := range e.tm.Decoder {
		ps = append(ps, l.SelfAttn.Q, l.SelfAttn.K, l.SelfAttn.V, l.SelfAttn.Out, l.CrossAttn.Q, l.CrossAttn.K, l.CrossAttn.V, l.CrossAttn.Out, l.FFN.Dense1, l.FFN.Dense2)
	}
	ps = append(ps, e.tm.Logits)
	return out, add(ps...)
}

// Format returns the report as aligned text: one line per clip field
// with its value and source, then the notes.
func (r *Report) Format() string {
	w := 0
	for _, c := range r.Clips {
		w = max(w, len(c.Field))
	}
	var b []byte
	for _, c := range r.Clips {
		b = fmt.Appendf(b, "%-*s %10.5g  %s\n", w, c.Field, c.Value, c.Source)
	}
	for _, n := range r.Notes {
		b = fmt.Appendf(b, "note: %s\n", n)
	}
	return string(b)
}

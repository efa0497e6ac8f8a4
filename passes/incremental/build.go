package incremental

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/passes/transformer"
	"github.com/qatc/qatc/seq2seq"
)

// Options configure Build.
type Options struct {
	// Map names tensors by role where the recogniser fails
	// (transformer.Options.Map).
	Map map[string]string
	// Pad, BOS and EOS are the special ids written to the config (BOS
	// starts every translation).
	Pad, BOS, EOS int64
	// Float builds the graphs without the source's quantizers: the fp32
	// model a QAT model was made from.
	Float bool
}

// CacheDoc describes the cache tensors for Qatc.Cache.
const CacheDoc = "keys and values [batch, heads, len, head_size] as the attention products read them: after the model's scaling and quantizers"

// Set is the three graphs of an incremental decoder with their config,
// and what the recogniser found in the source.
type Set struct {
	seq2seq.Dir
	// Model is what the recogniser found in the source.
	Model *transformer.Model
}

// ErrFormat is wrapped by Build's errors for models already exported to
// an integer format, whose graphs the recogniser does not read.
var ErrFormat = errors.New("exported model")

// Build recognises the encoder-decoder transformer in m (an fp32 or QAT
// full-sequence model; see transformer.Recognize) and builds from its
// roles the three graphs of Hugging Face Optimum's seq2seq layout:
//
//   - the encoder: input_ids, attention_mask → last_hidden_state;
//   - the decoder's first step: input_ids, encoder_hidden_states,
//     encoder_attention_mask → logits and present.{i}.decoder.{key,value}
//     (self-attention) and present.{i}.encoder.{key,value}
//     (cross-attention over the encoder states, computed here once);
//   - the decoder with past: input_ids [batch, 1], encoder_attention_mask
//     and past_key_values.{i}.{decoder,encoder}.{key,value} → logits and
//     present.{i}.decoder.{key,value}, one position longer.
//
// Every weight, bias, LayerNorm parameter and table is the source's
// initializer under its own name, and every quantizer the source applies
// on the way is copied with its clip (unless opts.Float): the graphs
// compute what the full-sequence model computes, one position at a time.
// The cache holds the keys and values as the attention products read
// them, after the model's scaling and quantizers, so a step re-quantizes
// nothing. Each graph is in the QAT form passes/fold exports, with the
// source's quantization record narrowed to its own quantizers.
func Build(m *graph.Model, opts Options) (*Set, error) {
	if f, ok := m.Metadata("qatc.format"); ok {
		return nil, fmt.Errorf("%w: the model is already in the %s format; build the incremental graphs from the QAT model it was exported from (qatc export QAT --incremental -o DIR --format %s)", ErrFormat, f, f)
	}
	tm, err := transformer.Recognize(m, transformer.Options{Map: opts.Map})
	if err != nil {
		return nil, err
	}
	src, err := newSource(m, tm, opts.Float)
	if err != nil {
		return nil, err
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	cfg := src.config(opts)
	s := &Set{Model: tm, Dir: seq2seq.Dir{Config: &cfg}}
	s.Config.Qatc.ID = hex.EncodeToString(id)
	s.Config.Qatc.Format = "fp32"
	if len(src.quant) > 0 && !opts.Float {
		s.Config.Qatc.Format = "qat"
	}
	s.Config.Qatc.Cache = CacheDoc
	if rec, ok := m.Metadata(quantize.MetadataKey); ok && !opts.Float {
		s.Config.Qatc.Quantization = json.RawMessage(rec)
	}
	for _, p := range []struct {
		file  string
		dst   **graph.Model
		build func(*builder) error
	}{
		{seq2seq.EncoderFile, &s.Encoder, (*builder).encoderGraph},
		{seq2seq.DecoderFile, &s.Decoder, (*builder).decoderGraph},
		{seq2seq.DecoderWithPastFile, &s.DecoderWithPast, (*builder).withPastGraph},
	} {
		b := src.newBuilder(p.file, opts)
		if err := p.build(b); err != nil {
			return nil, fmt.Errorf("incremental %s: %w", p.file, err)
		}
		if err := b.finish(s.Config.Qatc.ID); err != nil {
			return nil, fmt.Errorf("incremental %s: %w", p.file, err)
		}
		*p.dst = b.m
	}
	return s, nil
}

// source is what the builders read from the full-sequence model.
type source struct {
	m  *graph.Model
	tm *transformer.Model
	// quant maps a quantizer's dequantized output to it.
	quant map[string]*quantize.Quantizer
	// dropQuant builds the graphs without the quantizers.
	dropQuant bool
	rec       *quantize.Record
	// streams are the residual-stream values (embedding outputs, LayerNorm
	// outputs, residual sums) where operand walks stop.
	streams map[string]bool
	attn    map[*onnx.NodeProto]*attnPaths // by Softmax
	// shapesOf is the source's shape inference, computed when needed.
	shapesOf map[string]graph.TensorInfo
}

func newSource(m *graph.Model, tm *transformer.Model, float bool) (*source, error) {
	s := &source{m: m, tm: tm, dropQuant: float, quant: map[string]*quantize.Quantizer{}, streams: map[string]bool{}, attn: map[*onnx.NodeProto]*attnPaths{}}
	qs, err := quantize.Find(m)
	if err != nil {
		return nil, err
	}
	for i := range qs {
		q := &qs[i]
		if q.Kind != quantize.KindWeight && q.Axis != nil && !float {
			return nil, fmt.Errorf("activation quantizer on %s has an axis: incremental graphs take per-tensor activation quantizers", q.Tensor)
		}
		s.quant[q.Output] = q
	}
	if rec, err := quantize.ReadRecord(m); err == nil {
		s.rec = rec
	} else if !errors.Is(err, quantize.ErrNoRecord) {
		return nil, err
	}
	stream := func(v string) { s.streams[v] = true }
	norm := func(ln *transformer.LayerNorm) {
		if ln != nil {
			stream(ln.Input)
			stream(ln.Output)
		}
	}
	stream(tm.Src.Output)
	stream(tm.Tgt.Output)
	norm(tm.EncoderNorm)
	norm(tm.DecoderNorm)
	attn := func(a *transformer.Attention) {
		norm(a.Norm)
		stream(a.Residual)
		stream(a.Memory)
	}
	for i := range tm.Encoder {
		l := &tm.Encoder[i]
		attn(&l.SelfAttn)
		norm(l.FFN.Norm)
		stream(l.FFN.Residual)
	}
	for i := range tm.Decoder {
		l := &tm.Decoder[i]
		attn(&l.SelfAttn)
		attn(&l.CrossAttn)
		norm(l.FFN.Norm)
		stream(l.FFN.Residual)
	}
	return s, nil
}

// config reads the sizes of the recognised model.
func (s *source) config(opts Options) seq2seq.Config {
	tm := s.tm
	c := seq2seq.Config{
		ModelType: seq2seq.ModelType, Hidden: tm.Hidden,
		EncoderLayers: len(tm.Encoder), DecoderLayers: len(tm.Decoder),
		EncoderHeads: tm.Heads, DecoderHeads: tm.Heads, EncoderFFN: tm.FFN, DecoderFFN: tm.FFN,
		Vocab: tm.Vocab, Activation: tm.Activation, PreNorm: tm.PreNorm, Tied: tm.Tied,
		PadID: opts.Pad, BOSID: opts.BOS, EOSID: opts.EOS, DecoderStart: opts.BOS,
	}
	if t := s.m.Initializer(tm.Src.Table); t != nil {
		c.SrcVocab = int(t.Dims[0])
	}
	for _, e := range []transformer.Embedding{tm.Src, tm.Tgt} {
		if t := s.m.Initializer(e.PositionTable); t != nil && e.PositionTable != "" {
			if n := int(t.Dims[0]); c.MaxPositions == 0 || n < c.MaxPositions {
				c.MaxPositions = n
			}
		}
	}
	return c
}

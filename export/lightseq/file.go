package lightseq

import (
	"fmt"
	"github.com/qatc/qatc/decode"
	"os"
	"strings"

	"github.com/qatc/qatc/export/lightseq/lspb"
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/safeio"
	"google.golang.org/protobuf/proto"
)

// maxMessage is protobuf's 2 GiB limit on one message.
const maxMessage = 1<<31 - 1

// Sizes are the dimensions LightSeq's loader infers from a file.
type Sizes struct {
	Hidden, Heads, FFN, Vocab, SrcVocab, MaxStep, SrcMaxStep int
	EncoderLayers, DecoderLayers                             int
}

// Infer returns the sizes the loader infers from qt, checking its rules:
// H % 4 == 0, FFN size even, head size even, and the length of every field.
func Infer(qt *lspb.QuantTransformer) (Sizes, error) {
	var s Sizes
	src, trg, conf := qt.GetSrcEmbedding(), qt.GetTrgEmbedding(), qt.GetModelConf()
	if src == nil || trg == nil || conf == nil {
		return s, fmt.Errorf("src_embedding, trg_embedding and model_conf are all required")
	}
	h := len(trg.NormScale)
	s.Hidden, s.Heads = h, int(conf.HeadNum)
	s.EncoderLayers, s.DecoderLayers = len(qt.EncoderStack), len(qt.DecoderStack)
	switch {
	case h == 0:
		return s, fmt.Errorf("trg_embedding.norm_scale is empty: the hidden size is its length")
	case h%4 != 0:
		return s, fmt.Errorf("hidden size %d is not a multiple of 4", h)
	case s.Heads <= 0 || h%s.Heads != 0:
		return s, fmt.Errorf("head_num %d does not divide hidden size %d", s.Heads, h)
	case (h/s.Heads)%2 != 0:
		return s, fmt.Errorf("head size %d (hidden %d / %d heads) is odd", h/s.Heads, h, s.Heads)
	case s.EncoderLayers == 0 || s.DecoderLayers == 0:
		return s, fmt.Errorf("%d encoder and %d decoder layers: both stacks are required", s.EncoderLayers, s.DecoderLayers)
	case len(trg.PositionEmbedding) == 0 || len(trg.PositionEmbedding)%h != 0:
		return s, fmt.Errorf("trg position_embedding has %d values, not a multiple of hidden size %d", len(trg.PositionEmbedding), h)
	case len(trg.TokenEmbedding)%h != 0 || len(src.TokenEmbedding)%h != 0:
		return s, fmt.Errorf("token_embedding sizes %d (src) and %d (trg) are not multiples of hidden size %d", len(src.TokenEmbedding), len(trg.TokenEmbedding), h)
	case len(src.PositionEmbedding)%h != 0:
		return s, fmt.Errorf("src position_embedding has %d values, not a multiple of hidden size %d", len(src.PositionEmbedding), h)
	}
	s.MaxStep = len(trg.PositionEmbedding) / h
	s.SrcMaxStep = len(src.PositionEmbedding) / h
	s.Vocab = len(trg.TokenEmbedding) / h
	s.SrcVocab = len(src.TokenEmbedding) / h
	s.FFN = len(qt.EncoderStack[0].FfnFirstKernel) / h
	if s.FFN == 0 || s.FFN%2 != 0 {
		return s, fmt.Errorf("FFN size %d (ffn_first_kernel %d bytes / hidden %d) must be even and positive", s.FFN, len(qt.EncoderStack[0].FfnFirstKernel), h)
	}
	l, v, f := s.DecoderLayers, s.Vocab, s.FFN
	type field struct {
		name      string
		got, want int
	}
	fields := []field{
		{"src_embedding.norm_scale", len(src.NormScale), h}, {"src_embedding.norm_bias", len(src.NormBias), h},
		{"trg_embedding.norm_bias", len(trg.NormBias), h},
		{"trg_embedding.encode_output_project_kernel_kv", len(trg.EncodeOutputProjectKernelKv), h * l * 2 * h},
		{"trg_embedding.encode_output_project_bias_kv", len(trg.EncodeOutputProjectBiasKv), l * 2 * h},
		{"trg_embedding.encode_output_project_kernel_kv_clip_max", len(trg.EncodeOutputProjectKernelKvClipMax), l},
		{"trg_embedding.shared_bias", len(trg.SharedBias), v},
	}
	for i, e := range qt.EncoderStack {
		p := fmt.Sprintf("encoder_stack[%d].", i)
		fields = append(fields,
			field{p + "multihead_norm_scale", len(e.MultiheadNormScale), h}, field{p + "multihead_norm_bias", len(e.MultiheadNormBias), h},
			field{p + "multihead_project_kernel_qkv", len(e.MultiheadProjectKernelQkv), h * 3 * h}, field{p + "multihead_project_bias_qkv", len(e.MultiheadProjectBiasQkv), 3 * h},
			field{p + "multihead_project_kernel_output", len(e.MultiheadProjectKernelOutput), h * h}, field{p + "multihead_project_bias_output", len(e.MultiheadProjectBiasOutput), h},
			field{p + "ffn_norm_scale", len(e.FfnNormScale), h}, field{p + "ffn_norm_bias", len(e.FfnNormBias), h},
			field{p + "ffn_first_kernel", len(e.FfnFirstKernel), h * f}, field{p + "ffn_first_bias", len(e.FfnFirstBias), f},
			field{p + "ffn_second_kernel", len(e.FfnSecondKernel), f * h}, field{p + "ffn_second_bias", len(e.FfnSecondBias), h})
	}
	for i, d := range qt.DecoderStack {
		p := fmt.Sprintf("decoder_stack[%d].", i)
		fields = append(fields,
			field{p + "self_norm_scale", len(d.SelfNormScale), h}, field{p + "self_norm_bias", len(d.SelfNormBias), h},
			field{p + "self_project_kernel_qkv", len(d.SelfProjectKernelQkv), h * 3 * h}, field{p + "self_project_bias_qkv", len(d.SelfProjectBiasQkv), 3 * h},
			field{p + "self_project_kernel_output", len(d.SelfProjectKernelOutput), h * h}, field{p + "self_project_bias_output", len(d.SelfProjectBiasOutput), h},
			field{p + "encdec_norm_scale", len(d.EncdecNormScale), h}, field{p + "encdec_norm_bias", len(d.EncdecNormBias), h},
			field{p + "encdec_project_kernel_q", len(d.EncdecProjectKernelQ), h * h}, field{p + "encdec_project_bias_q", len(d.EncdecProjectBiasQ), h},
			field{p + "encdec_project_kernel_output", len(d.EncdecProjectKernelOutput), h * h}, field{p + "encdec_project_bias_output", len(d.EncdecProjectBiasOutput), h},
			field{p + "ffn_norm_scale", len(d.FfnNormScale), h}, field{p + "ffn_norm_bias", len(d.FfnNormBias), h},
			field{p + "ffn_first_kernel", len(d.FfnFirstKernel), h * f}, field{p + "ffn_first_bias", len(d.FfnFirstBias), f},
			field{p + "ffn_second_kernel", len(d.FfnSecondKernel), f * h}, field{p + "ffn_second_bias", len(d.FfnSecondBias), h})
	}
	for _, fl := range fields {
		if fl.got != fl.want {
			return s, fmt.Errorf("%s has %d values; the loader expects %d", fl.name, fl.got, fl.want)
		}
	}
	return s, nil
}

// Check reports the first reason LightSeq's loader would reject qt:
// Infer's size rules, plus offset-127 bytes within [0, 254] and positive
// clips.
func Check(qt *lspb.QuantTransformer) error {
	if _, err := Infer(qt); err != nil {
		return err
	}
	bad := func(name string, b []byte) error {
		for i, u := range b {
			if u > 254 {
				return fmt.Errorf("%s byte %d is %d, outside the offset-127 range [0, 254]", name, i, u)
			}
		}
		return nil
	}
	pos := func(name string, c float32) error {
		if !(c > 0) {
			return fmt.Errorf("%s is %g; clips must be positive", name, c)
		}
		return nil
	}
	var errs []error
	for i, e := range qt.EncoderStack {
		p := fmt.Sprintf("encoder_stack[%d].", i)
		errs = append(errs, bad(p+"multihead_project_kernel_qkv", e.MultiheadProjectKernelQkv), bad(p+"multihead_project_kernel_output", e.MultiheadProjectKernelOutput),
			bad(p+"ffn_first_kernel", e.FfnFirstKernel), bad(p+"ffn_second_kernel", e.FfnSecondKernel))
		for _, c := range []struct {
			n string
			v float32
		}{{"multihead_project_kernel_qkv_clip_max", e.MultiheadProjectKernelQkvClipMax}, {"multihead_project_kernel_output_clip_max", e.MultiheadProjectKernelOutputClipMax},
			{"ffn_first_kernel_clip_max", e.FfnFirstKernelClipMax}, {"ffn_second_kernel_clip_max", e.FfnSecondKernelClipMax}, {"multihead_ln_clip_max", e.MultiheadLnClipMax},
			{"multihead_project_output_clip_max", e.MultiheadProjectOutputClipMax}, {"ffn_ln_clip_max", e.FfnLnClipMax}, {"ffn_first_act_clip_max", e.FfnFirstActClipMax},
			{"multihead_qkv_dense_clip_max", e.MultiheadQkvDenseClipMax}, {"multihead_output_dense_clip_max", e.MultiheadOutputDenseClipMax}, {"ffn_first_output_clip_max", e.FfnFirstOutputClipMax}} {
			errs = append(errs, pos(p+c.n, c.v))
		}
	}
	for i, d := range qt.DecoderStack {
		p := fmt.Sprintf("decoder_stack[%d].", i)
		errs = append(errs, bad(p+"self_project_kernel_qkv", d.SelfProjectKernelQkv), bad(p+"self_project_kernel_output", d.SelfProjectKernelOutput),
			bad(p+"encdec_project_kernel_q", d.EncdecProjectKernelQ), bad(p+"encdec_project_kernel_output", d.EncdecProjectKernelOutput),
			bad(p+"ffn_first_kernel", d.FfnFirstKernel), bad(p+"ffn_second_kernel", d.FfnSecondKernel))
		for _, c := range []struct {
			n string
			v float32
		}{{"self_project_kernel_qkv_clip_max", d.SelfProjectKernelQkvClipMax}, {"self_project_kernel_output_clip_max", d.SelfProjectKernelOutputClipMax},
			{"encdec_project_kernel_q_clip_max", d.EncdecProjectKernelQClipMax}, {"encdec_project_kernel_output_clip_max", d.EncdecProjectKernelOutputClipMax},
			{"ffn_first_kernel_clip_max", d.FfnFirstKernelClipMax}, {"ffn_second_kernel_clip_max", d.FfnSecondKernelClipMax}, {"self_ln_clip_max", d.SelfLnClipMax},
			{"self_project_output_clip_max", d.SelfProjectOutputClipMax}, {"encdec_ln_clip_max", d.EncdecLnClipMax}, {"encdec_project_output_clip_max", d.EncdecProjectOutputClipMax},
			{"ffn_ln_clip_max", d.FfnLnClipMax}, {"ffn_first_act_clip_max", d.FfnFirstActClipMax}, {"self_qkv_dense_clip_max", d.SelfQkvDenseClipMax},
			{"self_output_dense_clip_max", d.SelfOutputDenseClipMax}, {"encdec_q_dense_clip_max", d.EncdecQDenseClipMax}, {"encdec_output_dense_clip_max", d.EncdecOutputDenseClipMax},
			{"ffn_first_output_clip_max", d.FfnFirstOutputClipMax}, {"self_qkv_bias_out_clip_max", d.SelfQkvBiasOutClipMax}} {
			errs = append(errs, pos(p+c.n, c.v))
		}
	}
	for _, w := range []struct {
		n string
		l *lspb.QuantEmbeddingLayer
	}{{"src_embedding", qt.SrcEmbedding}, {"trg_embedding", qt.TrgEmbedding}} {
		errs = append(errs, bad(w.n+".token_embedding", w.l.TokenEmbedding), pos(w.n+".emb_clip_max", w.l.EmbClipMax))
	}
	t := qt.TrgEmbedding
	errs = append(errs, bad("trg_embedding.encode_output_project_kernel_kv", t.EncodeOutputProjectKernelKv),
		pos("trg_embedding.output_ln_clip_max", t.OutputLnClipMax), pos("trg_embedding.logits_clip_max", t.LogitsClipMax))
	for i, c := range t.EncodeOutputProjectKernelKvClipMax {
		errs = append(errs, pos(fmt.Sprintf("trg_embedding.encode_output_project_kernel_kv_clip_max[%d]", i), c))
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Write checks qt and writes it to path (which must end in .pb) through a
// temporary file, so that a failure leaves no partial file.
func Write(path string, qt *lspb.QuantTransformer) error {
	if !strings.HasSuffix(path, ".pb") {
		return fmt.Errorf("lightseq: output %s must end in .pb: LightSeq picks the loader by extension", path)
	}
	if err := Check(qt); err != nil {
		return fmt.Errorf("lightseq: %s would not load: %v", path, err)
	}
	data, err := proto.Marshal(qt)
	if err != nil {
		return fmt.Errorf("lightseq: encode %s: %v", path, err)
	}
	if len(data) > maxMessage {
		return fmt.Errorf("lightseq: %s would be %d bytes; one protobuf message is limited to 2 GiB", path, len(data))
	}
	return safeio.WriteFile(path, data)
}

// Read parses a LightSeq .pb file and checks it as the loader would.
func Read(path string) (*lspb.QuantTransformer, error) {
	data, err := safeio.ReadFile(path, 2<<30)
	if err != nil {
		return nil, fmt.Errorf("lightseq: %v", err)
	}
	qt := &lspb.QuantTransformer{}
	if err := proto.Unmarshal(data, qt); err != nil {
		return nil, fmt.Errorf("lightseq: %s is not a QuantTransformer protobuf: %v", path, err)
	}
	if err := Check(qt); err != nil {
		return nil, fmt.Errorf("lightseq: %s: %v", path, err)
	}
	return qt, nil
}

// FileReport is what WriteFile wrote and how it checked it.
type FileReport struct {
	Bytes  int64
	Sizes  Sizes
	Report *Report
	Verify VerifyReport
}

// WriteFile writes the LightSeq file of the QAT model qat (read from
// path, which names it in errors) to out: Export, then Verify against the
// QAT model on batch, which must pass before anything is written, then
// Write, read back and compared field by field with what was written.
func WriteFile(qat *graph.Model, path, out string, opts Options, batch map[string]*ort.Tensor) (*FileReport, error) {
	qt, rep, err := Export(qat, opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	chk, err := Verify(qat, rep.Model, qt, batch)
	if err != nil {
		return nil, fmt.Errorf("%s: the LightSeq file was not written: %w", path, err)
	}
	if err := Write(out, qt); err != nil {
		return nil, err
	}
	back, err := Read(out)
	if err != nil {
		return nil, fmt.Errorf("reading back %s: %w", out, err)
	}
	if !proto.Equal(back, qt) {
		return nil, fmt.Errorf("reading back %s: the file holds other values than were written", out)
	}
	sizes, err := Infer(back)
	if err != nil {
		return nil, fmt.Errorf("reading back %s: %w", out, err)
	}
	st, err := os.Stat(out)
	if err != nil {
		return nil, err
	}
	return &FileReport{Bytes: st.Size(), Sizes: sizes, Report: rep, Verify: chk}, nil
}

// Spec returns the LightSeq file at path as a model decode decodes: with
// the Go reference decoder of LightSeq's int8 numerics (Reference).
func Spec(path string) (decode.ModelSpec, error) {
	qt, err := Read(path)
	if err != nil {
		return decode.ModelSpec{}, err
	}
	ref, err := NewReference(qt)
	if err != nil {
		return decode.ModelSpec{}, fmt.Errorf("%s: %w", path, err)
	}
	start := func(s [][]int64) (decode.State, error) { return ref.Start(s) }
	return decode.ModelSpec{Path: path, Model: decode.StartFunc(start), Vocab: ref.Vocab}, nil
}

package lightseq

// clipTable states, for every clip field of the LightSeq file, which qatc
// quantizer feeds it and what is written where qatc has none. Export
// follows it and says in its Report, field by field, which source it
// used. "dense output" clips quantize a GEMM's output, which qatc never
// quantizes (NeurST fake-quantizes GEMM inputs only): they come from a
// quantizer on an equivalent value when one exists, else from the
// largest |value| the QAT model computes on Options.Calib, else from the
// record's initial activation clip (Params.ActClipMax, NeurST's 16).
var clipTable = []struct{ Field, Source string }{
	{"*_kernel_*_clip_max", "weight quantizer on that kernel (one per-tensor clip; the largest clip when LightSeq fuses kernels that qatc quantizes separately, e.g. separate Q, K, V)"},
	{"emb_clip_max", "weight quantizer on the token table (the Gather operand); tied copies share it"},
	{"encode_output_project_kernel_kv_clip_max", "the largest weight clip over every decoder layer's cross-attention K and V kernels, written once per layer (the loader's chunking does not line up with layers)"},
	{"multihead_ln_clip_max, self_ln_clip_max, encdec_ln_clip_max, ffn_ln_clip_max", "act quantizer on the input of the Q (or QKV) / dense1 GEMM (the LayerNorm output, or the residual stream in post-norm)"},
	{"*_project_output_clip_max", "act quantizer on the output projection's input (the merged attention context)"},
	{"ffn_first_act_clip_max", "relu (or act, for GELU) quantizer on the dense2 input"},
	{"output_ln_clip_max", "act quantizer on the logits GEMM input"},
	{"multihead_qkv_dense_clip_max, self_qkv_dense_clip_max, self_qkv_bias_out_clip_max", "the largest clip of the act quantizers on the K and V operands of the attention MatMuls (the projection outputs seen through views and constant scalings, each clip divided by its scaling; V's times the scaling folded into V), or on Q when K and V have none; else calibration of the Q/K/V GEMM outputs; else fallback"},
	{"encdec_q_dense_clip_max", "calibration of the Q GEMM output; else the quantizer on the Q operand divided by the graph's scaling of q (times the temperature folded into Q); else fallback"},
	{"*_project_output_clip_max, ffn_first_act_clip_max (with scalings)", "divided by the constant scaling the graph applies to the context or the hidden activation before its quantizer (folded into the next kernel instead)"},
	{"ffn_first_output_clip_max", "calibration of the dense1 GEMM output (no quantizer sees the pre-activation); else the activation quantizer's clip (values above it saturate after the activation anyway); else fallback"},
	{"*_output_dense_clip_max (attention output projections), logits_clip_max", "no qatc quantizer: calibration on Options.Calib, else fallback Params.ActClipMax"},
	{"ffn_second_output_clip_max", "never read by the runtime: written as the calibrated/fallback clip of the dense2 output"},
}

// ClipTable returns the clip sources as "field: source" lines, for help
// text and reports.
func ClipTable() []string {
	out := make([]string, len(clipTable))
	for i, r := range clipTable {
		out[i] = r.Field + ": " + r.Source
	}
	return out
}

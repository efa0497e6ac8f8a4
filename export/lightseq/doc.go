// Package lightseq writes, reads and runs LightSeq's int8 transformer
// weight file (the QuantTransformer protobuf of lspb; field numbers and
// loader rules in shared/docs/lightseq-format.md).
//
// Export maps a QAT encoder-decoder graph onto the format with
// passes/transformer and fills every field: LayerNorm parameters and
// biases as floats; kernels as offset-127 bytes in [in, out] layout
// (PyTorch's [out, in] weights transposed), Q/K/V side by side as
// [H, 3, H], the encoder-decoder K/V kernels of all decoder layers as one
// [H, L, 2, H] kernel with one shared clip written L times; token tables
// unscaled (the runtime multiplies by √H), the target table transposed to
// [H, V] because it is also the logits kernel; positions as a float
// table, evaluated with onnxruntime when the graph computes them; and
// model_conf from the graph and Options. Constant scalings the graph
// applies around attention and the feed-forward block are folded into the
// kernels (the softmax temperature beyond LightSeq's fixed 1/√head size
// into Q, V's into V, the context's into the output kernel, the hidden
// activation's into dense2), so one model exported through different
// paths gives the same file. Every clip comes from the qatc
// quantizer clipTable names (ClipTable prints it); the GEMM-output clips
// qatc has no quantizer for are measured on Options.Calib or take the
// documented fallback, and the Report lists each field's source. What
// LightSeq cannot represent is refused with the reason, wrapping
// ErrUnsupported: per-channel or sub-8-bit quantizers, decoder-only
// models, missing cross-attention, an output projection other than the
// target table, positions that are not absolute.
//
// What the writer rounds: a weight w with clip c becomes
// floor(clamp(w·127/c, −127, 127) + 127.5), so the file's weights differ
// from the QAT model's fake-quantized ones (round half to even onto
// [−128, 127]) by at most one step c/127; kernels LightSeq fuses but qatc
// quantized separately are written with the largest of their clips.
//
// Write checks a message against the loader's rules (Check, Infer: H % 4,
// FFN size even, head size even, every field's length) and writes it
// atomically; Read parses and checks a file. Reference runs a file with
// LightSeq's documented int8 numerics on the CPU (int8 GEMMs with int32
// accumulation, int8 requantization of GEMM outputs, float attention and
// LayerNorm) and decodes greedily, so a file's behaviour is checked
// without a GPU. Verify runs it teacher-forced against the QAT model and
// fails a file below MinTop1 argmax agreement or above MaxRMSErr relative
// logit error (bounds chosen from the measurements listed with them).
package lightseq

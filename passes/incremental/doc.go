// Package incremental builds, from a full-sequence encoder-decoder
// transformer (fp32 or QAT), the graphs that translate it step by step
// with a key/value cache, in Hugging Face Optimum's seq2seq layout and
// names: encoder_model.onnx, decoder_model.onnx (the first step, which
// also computes every layer's cross-attention keys and values once) and
// decoder_with_past_model.onnx (one token per row; the self-attention
// cache grows by one position), with a config.json of sizes and ids.
//
// The graphs are built from the roles passes/transformer recognises, not
// cut out of the source graph, so any recognised model gets them: pre- or
// post-norm, tied or separate embeddings, fused or separate QKV kernels,
// stored or computed positions (whose computation is copied). Every
// weight is the source's initializer under its own name, and every
// quantizer met on the way from a role's input to the operand the source's
// product reads (the activation quantizers, the scalings by constants of
// Q and K, the weight quantizers) is copied with its clip, in the same
// order. The graphs are therefore in the QAT form passes/fold exports,
// and compute, position by position, what the source computes.
//
// Choices that make a step cheap on onnxruntime's CPU kernels:
//   - the cache holds keys and values as the attention products read
//     them (after scaling and quantization), so a step quantizes only its
//     new position; IntCache makes an integer format's cache hold the
//     quantizers' integers themselves;
//   - a residual Add and the LayerNorm after it stay two nodes: onnxruntime
//     1.30's CPU SkipLayerNormalization is slower than both;
//   - in the decoder with past, the one-position queries change layout by
//     Reshape instead of Transpose;
//   - projections that slice one fused kernel run as one MatMul and a
//     Split (passes/fold's QOperator then fuses the integer products of
//     one activation the same way for separate kernels).
package incremental

// Package export writes deployment models from QAT models and checks them.
//
// Export turns a QAT model (passes/quantize, fine-tuned or not) into one of
// four ONNX formats, all built by passes/fold:
//
//   - qdq: int8 weight initializers read by DequantizeLinear, activation
//     QuantizeLinear/DequantizeLinear pairs with the learned scales as
//     constants. It is the portable form: onnxruntime's QDQ fusions and
//     TensorRT consume it, and it computes exactly what the QAT model
//     computes. Activations stay signed symmetric for TensorRT. Weights of
//     4 bits or fewer are INT4 initializers (two a byte) read by
//     DequantizeLinear, per tensor, per channel or per block (block_size),
//     at opset 21 (raised when every node means the same there; else they
//     stay int8 in [-8, 7] and Report.Notes says why); only a table
//     gathered as integers stays int8.
//   - qoperator: onnxruntime's integer operator MatMulIntegerToFloat on
//     every matrix product with quantized operands, static activation
//     scales, activations moved to uint8 (zero point 128) where that is
//     exact, for the u8×s8 VNNI kernels; the fastest format on x86 CPUs.
//   - dynamic: int8 weights from the learned clips, activations quantized
//     per batch (DynamicQuantizeLinear + MatMulInteger, which onnxruntime
//     fuses into DynamicQuantizeMatMul).
//   - matmulnbits: every weight product becomes onnxruntime's
//     com.microsoft.MatMulNBits: the weights packed at 2, 4 or 8 bits
//     (the container that holds their grid exactly), per-block scales
//     (per-channel ones repeated over blocks of 128), accuracy level 4
//     (int8 compute). The activation quantizers stay in front of it, so
//     that the learned clips still saturate; the kernel then requantizes
//     each block of its input to int8 over the block's range. Embedding
//     lookups keep the qdq form and dequantize only the rows they read.
//     It is the small fast form for 4-bit weights, but on x86 CPUs with
//     VNNI, 8-bit qoperator stays about twice as fast (BenchmarkNBits,
//     base testmodel, 2 threads, onnxruntime 1.30 on an AMD EPYC: over
//     fp32, qoperator 2.4–2.8×, matmulnbits 1.0–1.5×).
//
// Verify runs the exported model and the QAT model on a batch and fails
// when their logits differ beyond the format's bound (see bounds) or when
// onnxruntime runs no integer kernel for the export; Kernels lists what
// onnxruntime runs, from its profiler.
//
// Export is a pass pipeline (Pipeline; package passes): fold, int-cache
// (only for the incremental graphs), the format's rewrite, guard-blocked
// and check-folded, each a named pass that qatc export --passes lists and
// --dump-after writes the graph after. File is qatc export's one library
// call: the check batch, the formats, an incremental directory or a
// LightSeq file, and the check.
package export

// Package export writes deployment models from QAT models and checks them.
//
// Export turns a QAT model (passes/quantize, fine-tuned or not) into one of
// three int8 ONNX formats, all built by passes/fold:
//
//   - qdq: int8 weight initializers read by DequantizeLinear, activation
//     QuantizeLinear/DequantizeLinear pairs with the learned scales as
//     constants. It is the portable form: onnxruntime's QDQ fusions and
//     TensorRT consume it, and it computes exactly what the QAT model
//     computes. Activations stay signed symmetric for TensorRT.
//   - qoperator: onnxruntime's integer operator MatMulIntegerToFloat on
//     every matrix product with quantized operands, static activation
//     scales, activations moved to uint8 (zero point 128) where that is
//     exact, for the u8×s8 VNNI kernels; the fastest format on x86 CPUs.
//   - dynamic: int8 weights from the learned clips, activations quantized
//     per batch (DynamicQuantizeLinear + MatMulInteger, which onnxruntime
//     fuses into DynamicQuantizeMatMul).
//
// Verify runs the exported model and the QAT model on a batch and fails
// when their logits differ beyond the format's bound (see bounds) or when
// onnxruntime runs no integer kernel for the export; Kernels lists what
// onnxruntime runs, from its profiler.
package export

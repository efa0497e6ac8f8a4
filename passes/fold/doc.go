// Package fold turns a QAT model into deployment graphs.
//
// A QAT model (passes/quantize) is the fp32 model with a fake-quantizer on
// each quantized tensor: a QuantizeLinear/DequantizeLinear pair whose scale
// the graph computes from a clip initializer as Div(Max(clip, tiny), qmax);
// fold reads those quantizers with quantize.Units.
// Fold evaluates that arithmetic into constant scales and stores quantized
// weights as integers (the qdq form); QOperator and Dynamic then rewrite
// the qdq form's matrix products into onnxruntime's integer kernels with
// static or per-batch activation scales. For weights of 4 bits or fewer,
// Int4 stores the qdq form's integers as ONNX INT4 initializers (opset 21,
// raised by RaiseOpset where no node changed meaning), and MatMulNBits
// rewrites the weight products into onnxruntime's weight-only quantized
// MatMulNBits (packed 2-, 4- or 8-bit weights, per-block scales).
//
// The folded form is also read back here, beside its writers:
// DequantizedAt reads a dequantized operand (integers, constant scale,
// layout), Stored lists an exported model's integer weights in every
// format (DequantizeLinear, MatMulIntegerToFloat, MatMulInteger,
// MatMulNBits) with their scales and integers, for inspect and the
// export's check. Unfold reads the qdq (int8 and INT4, per tensor,
// channel or block), qoperator, matmulnbits and dynamic forms back into
// the QAT form (clips that compute the file's scales bit for bit), so
// that an exported file's incremental graphs can be built and folded
// again.
//
// Every rewrite states what it rounds: Fold's integers and scales are
// bit-identical to what the QAT graph computes on the fly; QOperator
// changes only the order of float operations (integer accumulation, one
// rescale); Dynamic replaces the learned activation ranges by each batch's;
// Int4 and MatMulNBits store the very same integers and scales (MatMulNBits
// at accuracy level 4 requantizes its input per block to int8).
package fold

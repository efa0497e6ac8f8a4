// Package fold turns a QAT model into deployment graphs.
//
// A QAT model (passes/quantize) is the fp32 model with a fake-quantizer on
// each quantized tensor: a QuantizeLinear/DequantizeLinear pair whose scale
// the graph computes from a clip initializer as Div(Max(clip, tiny), qmax).
// Fold evaluates that arithmetic into constant scales and stores quantized
// weights as integers (the qdq form); QOperator and Dynamic then rewrite
// the qdq form's matrix products into onnxruntime's integer kernels with
// static or per-batch activation scales.
//
// Every rewrite states what it rounds: Fold's integers and scales are
// bit-identical to what the QAT graph computes on the fly; QOperator
// changes only the order of float operations (integer accumulation, one
// rescale); Dynamic replaces the learned activation ranges by each batch's.
package fold

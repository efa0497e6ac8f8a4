// Package quantize owns qatc's QAT graph form: it inserts fake quantizers
// (QuantizeLinear/DequantizeLinear pairs) into an fp32 ONNX graph,
// reproducing NeurST's placement on any exporter's graph, records them, and
// is the one reader of them. Every other package finds quantizers here:
// Match and Units read a quantizer's chain (Unit: nodes, blocked view,
// integers, clip, scale, kind, bits, axis), Find gives the record's view
// of them, Readers and QuantizedInput look through them, Strip removes
// them, and Moves says which data-movement ops a pass may look through
// (the one list of them).
//
// Placement is structural, not by name: every MatMul/Gemm operand that is a
// float initializer (directly or through Transpose, Identity, Cast or a
// constant Slice) gets a weight quantizer on the initializer itself, and so
// does every embedding table read by a Gather with data-dependent indices;
// every other MatMul/Gemm operand gets an activation quantizer whose kind
// follows its producer through Reshape/Transpose/Dropout/Identity (Relu →
// relu, Softmax → softmax, else act). Biases, normalisation parameters,
// residual sums and logits are never operands, so they are never quantized.
// Exact or transposed copies of one initializer (the tied embedding that
// exporters write twice) share one clip initializer so that they stay tied.
//
// The graph form of a quantizer is fixed by DESIGN.md: the clip initializer
// <T>_clip_max feeds Max(clip, tiny) / qmax = scale; below 8 bits a Clip on
// the integer tensor holds the grid to 2^bits levels. Insert records the
// parameters and every quantizer in the model's metadata under
// qatc.quantization (ReadRecord, WriteRecord); Find recovers the quantizers
// from the graph alone and checks them against that record. Kinds
// (KindWeight, KindAct, KindReLU, KindSoftmax) and granularities (Tensor,
// Channel, Block) are named here for every package.
//
// Plan reports what Insert would do without editing the model.
package quantize

// Package inspect describes models for people, as qatc inspect prints
// them: a summary of any model (inputs, outputs, opsets, operators,
// parameters, metadata; Summary), the quantizer table of a QAT or exported
// model (kind, bits, granularity, clip, scale, and for a QAT model's
// weights the clipped share and SQNR measured on the integers an export
// would store; Quantizers), and one quantized weight's integers as
// NeurST's viewer shows them, with a histogram of the float weight against
// its clip range (Tensor).
//
// A QAT model's quantizers are read with passes/quantize and folded on a
// copy with passes/fold; an exported model's integers are read back with
// fold.Stored, whatever its format.
package inspect

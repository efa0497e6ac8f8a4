// Package lspb holds the Go types of LightSeq's int8 transformer weight
// file (message QuantTransformer), generated from quant_transformer.proto
// (see that file for how). export/lightseq writes and reads it.
package lspb

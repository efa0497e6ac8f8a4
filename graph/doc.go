// Package graph is qatc's in-memory ONNX model: loading and saving (with
// external data), an index of values (producer, consumers, initializers),
// topological order, shape inference, rewriting helpers and validation.
//
// A Model wraps the ONNX protobuf itself (package onnx), so every field the
// exporter wrote, known or not, survives a load-save round trip. The index is
// kept current by the rewriting helpers; code that edits the protobuf
// directly calls Reindex afterwards.
//
// graph runs nothing and knows nothing about quantization.
package graph

// Package graph is qatc's in-memory ONNX model: loading and saving (with
// external data), an index of values (producer, consumers, initializers),
// topological order, shape inference, rewriting helpers and validation.
//
// A Model wraps the ONNX protobuf itself (package onnx), so every field the
// exporter wrote, known or not, survives a load-save round trip. The index is
// kept current by the rewriting helpers; code that edits the protobuf
// directly calls Reindex afterwards.
//
// Load reads external data into the tensors, so a loaded model always holds
// its bytes inline; Save writes external data again when asked or when the
// tensors pass protobuf's 2 GiB limit. External-data locations are resolved
// inside the model's directory only.
//
// InferShapes gives every value an element type and, for the supported op
// set, a rank with static or named dimensions, with one rule per op type
// in the table of ops.go (passes/autodiff types the forward graph with it
// too), walking the nodes in TopoSort's order; Const reads constants
// (initializers and Constant nodes) for every pass; Validate reports
// structural problems with one-line messages naming the node and value.
//
// graph runs nothing and knows nothing about quantization.
package graph

package graph

import (
	"google.golang.org/protobuf/encoding/protowire"
)

// A model's structure is the model without the data of its large tensors:
// the graph, every tensor's name, type and dims, and the values of small
// tensors (shapes, slice bounds, scalars). Reading it costs the graph's
// size, not the weights', so the output checks and onnxruntime's file
// checks can look at a model that is about to be read anyway without
// holding its weights twice.
//
// This is the one place qatc reads protobuf's wire format by hand: the
// generated types (package onnx) decode a message whole, so the filter
// drops the large tensors' data fields from the bytes first and then
// decodes what is left with the generated types. Everything else,
// onnxruntime's view of a file's inputs and outputs included
// (ort.OpenFile, through CheckFile), reads the generated types.

// structureKeep is the largest tensor data (in bytes) a structure keeps.
const structureKeep = 4096

// Message types whose fields the filter walks, and their tensor-bearing
// fields (numbers from onnx.proto).
type wireType int

const (
	wireModel wireType = iota
	wireGraph
	wireNode
	wireAttribute
	wireSparse
	wireFunction
	wireTraining
	wireTensor
)

var wireChildren = map[wireType]map[protowire.Number]wireType{
	wireModel:     {7: wireGraph, 20: wireTraining, 25: wireFunction},
	wireGraph:     {1: wireNode, 5: wireTensor, 15: wireSparse},
	wireNode:      {5: wireAttribute},
	wireAttribute: {5: wireTensor, 6: wireGraph, 10: wireTensor, 11: wireGraph, 22: wireSparse, 23: wireSparse},
	wireSparse:    {1: wireTensor, 2: wireTensor},
	wireFunction:  {7: wireNode, 11: wireAttribute},
	wireTraining:  {1: wireGraph, 2: wireGraph},
}

// tensorDataFields are TensorProto's data fields: float_data, int32_data,
// string_data, int64_data, raw_data, double_data, uint64_data.
var tensorDataFields = map[protowire.Number]bool{4: true, 5: true, 6: true, 7: true, 9: true, 10: true, 11: true}

// stripData returns the serialized model b without the data of tensors
// holding more than keep bytes, or nil if b is not well-formed protobuf
// (the full parser then reports why).
func stripData(b []byte, keep int) []byte {
	out, ok := filterMessage(nil, b, wireModel, keep, 0)
	if !ok {
		return nil
	}
	return out
}

// maxDepth bounds the nesting of messages the filter follows, as the
// protobuf decoder bounds its recursion.
const maxDepth = 1000

func filterMessage(out, b []byte, typ wireType, keep, depth int) ([]byte, bool) {
	if depth > maxDepth {
		return nil, false
	}
	drop := false
	if typ == wireTensor {
		size := 0
		for rest := b; len(rest) > 0; {
			num, wt, n := protowire.ConsumeTag(rest)
			if n < 0 {
				return nil, false
			}
			m := protowire.ConsumeFieldValue(num, wt, rest[n:])
			if m < 0 {
				return nil, false
			}
			if tensorDataFields[num] {
				size += m
			}
			rest = rest[n+m:]
		}
		drop = size > keep
	}
	children := wireChildren[typ]
	for len(b) > 0 {
		num, wt, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		m := protowire.ConsumeFieldValue(num, wt, b[n:])
		if m < 0 {
			return nil, false
		}
		field := b[:n+m]
		b = b[n+m:]
		if drop && tensorDataFields[num] {
			continue
		}
		child, walk := children[num]
		if !walk || wt != protowire.BytesType {
			out = append(out, field...)
			continue
		}
		v, _ := protowire.ConsumeBytes(field[n:])
		sub, ok := filterMessage(nil, v, child, keep, depth+1)
		if !ok {
			return nil, false
		}
		out = protowire.AppendTag(out, num, protowire.BytesType)
		out = protowire.AppendBytes(out, sub)
	}
	return out, true
}

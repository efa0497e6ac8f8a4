package graph

import "github.com/qatc/qatc/onnx"

// AttrInt returns an int attribute.
func AttrInt(name string, v int64) *onnx.AttributeProto {
	return &onnx.AttributeProto{Name: name, Type: onnx.AttributeProto_INT, I: v}
}

// AttrFloat returns a float attribute.
func AttrFloat(name string, v float32) *onnx.AttributeProto {
	return &onnx.AttributeProto{Name: name, Type: onnx.AttributeProto_FLOAT, F: v}
}

// AttrInts returns an ints attribute.
func AttrInts(name string, v ...int64) *onnx.AttributeProto {
	return &onnx.AttributeProto{Name: name, Type: onnx.AttributeProto_INTS, Ints: v}
}

// AttrFloats returns a floats attribute.
func AttrFloats(name string, v ...float32) *onnx.AttributeProto {
	return &onnx.AttributeProto{Name: name, Type: onnx.AttributeProto_FLOATS, Floats: v}
}

// AttrString returns a string attribute.
func AttrString(name, v string) *onnx.AttributeProto {
	return &onnx.AttributeProto{Name: name, Type: onnx.AttributeProto_STRING, S: []byte(v)}
}

// AttrTensor returns a tensor attribute (as Constant's value).
func AttrTensor(name string, t *onnx.TensorProto) *onnx.AttributeProto {
	return &onnx.AttributeProto{Name: name, Type: onnx.AttributeProto_TENSOR, T: t}
}

// Attr returns n's attribute called name, or nil.
func Attr(n *onnx.NodeProto, name string) *onnx.AttributeProto {
	for _, a := range n.Attribute {
		if a.Name == name {
			return a
		}
	}
	return nil
}

// IntAttr returns n's int attribute name, or def when absent.
func IntAttr(n *onnx.NodeProto, name string, def int64) int64 {
	if a := Attr(n, name); a != nil {
		return a.I
	}
	return def
}

// FloatAttr returns n's float attribute name, or def when absent.
func FloatAttr(n *onnx.NodeProto, name string, def float32) float32 {
	if a := Attr(n, name); a != nil {
		return a.F
	}
	return def
}

// IntsAttr returns n's ints attribute name, or nil when absent.
func IntsAttr(n *onnx.NodeProto, name string) []int64 {
	if a := Attr(n, name); a != nil {
		return a.Ints
	}
	return nil
}

// StringAttr returns n's string attribute name, or def when absent.
func StringAttr(n *onnx.NodeProto, name, def string) string {
	if a := Attr(n, name); a != nil {
		return string(a.S)
	}
	return def
}

package graph

import (
	"strconv"
	"strings"

	"github.com/qatc/qatc/onnx"
)

// Dim is one dimension of an inferred shape: static when Value >= 0, else
// symbolic, named by Param ("" when nothing is known about it).
type Dim struct {
	Value int64
	Param string
}

// Static reports whether the dimension's size is known.
func (d Dim) Static() bool { return d.Value >= 0 }

func (d Dim) String() string {
	switch {
	case d.Value >= 0:
		return strconv.FormatInt(d.Value, 10)
	case d.Param != "":
		return d.Param
	}
	return "?"
}

// TensorInfo is what shape inference knows about one value: its element
// type and, when RankKnown, one Dim per axis.
type TensorInfo struct {
	Elem      DataType
	RankKnown bool
	Dims      []Dim
}

// Rank returns the rank, or -1 when it is unknown.
func (t TensorInfo) Rank() int {
	if !t.RankKnown {
		return -1
	}
	return len(t.Dims)
}

func (t TensorInfo) String() string {
	if !t.RankKnown {
		return t.Elem.String() + "[...]"
	}
	parts := make([]string, len(t.Dims))
	for i, d := range t.Dims {
		parts[i] = d.String()
	}
	return t.Elem.String() + "[" + strings.Join(parts, ",") + "]"
}

// IOInfo describes a graph input or output as the model declares it:
// Dims is nil when the rank is unknown; a dim of -1 is dynamic, named by
// DimParams at the same position when the model names it. onnxruntime
// sessions describe their inputs and outputs alike.
type IOInfo struct {
	Name      string
	Elem      DataType
	Dims      []int64
	DimParams []string
}

// String formats the info as in "src_ids int64[batch,src_len]".
func (v IOInfo) String() string { return v.Name + " " + v.Type() }

// Type formats the element type and dims, naming symbolic dims, as in
// "int64[batch,src_len]".
func (v IOInfo) Type() string {
	if v.Dims == nil {
		return v.Elem.String() + "[...]"
	}
	parts := make([]string, len(v.Dims))
	for i, d := range v.Dims {
		switch {
		case d >= 0:
			parts[i] = strconv.FormatInt(d, 10)
		case i < len(v.DimParams) && v.DimParams[i] != "":
			parts[i] = v.DimParams[i]
		default:
			parts[i] = "?"
		}
	}
	return v.Elem.String() + "[" + strings.Join(parts, ",") + "]"
}

// Declared returns the IOInfo of a declared value; a value without a
// tensor type has element type Undefined and unknown rank.
func Declared(v *onnx.ValueInfoProto) IOInfo {
	ti := valueInfoType(v)
	info := IOInfo{Name: v.Name, Elem: ti.Elem}
	if !ti.RankKnown {
		return info
	}
	info.Dims = make([]int64, len(ti.Dims))
	info.DimParams = make([]string, len(ti.Dims))
	for i, d := range ti.Dims {
		info.Dims[i], info.DimParams[i] = d.Value, d.Param
	}
	return info
}

// Inputs returns the inputs a caller must feed: the graph inputs that are
// not initializers (a runtime uses an initializer's value when its input
// is not fed), in the model's order.
func (m *Model) Inputs() []IOInfo {
	var out []IOInfo
	for _, v := range m.Graph().Input {
		if m.Initializer(v.Name) == nil {
			out = append(out, Declared(v))
		}
	}
	return out
}

// Outputs returns the graph's declared outputs.
func (m *Model) Outputs() []IOInfo {
	out := make([]IOInfo, len(m.Graph().Output))
	for i, v := range m.Graph().Output {
		out[i] = Declared(v)
	}
	return out
}

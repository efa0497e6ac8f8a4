package ort

import (
	"fmt"
	"os"
	"syscall"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// IOInfo describes one input or output of a session as the model declares
// it. Dims is nil when the rank is unknown; a dim of -1 is dynamic, named
// by DimParams at the same position when the model names it.
type IOInfo struct {
	Name      string
	Elem      graph.DataType
	Dims      []int64
	DimParams []string
}

// String formats the info as in "src_ids int64[batch,src_len]".
func (v IOInfo) String() string { return v.Name + " " + v.typeString() }

// typeString formats the element type and dims, naming symbolic dims.
func (v IOInfo) typeString() string {
	if v.Dims == nil {
		return v.Elem.String() + "[...]"
	}
	s := v.Elem.String() + "["
	for i, d := range v.Dims {
		if i > 0 {
			s += ","
		}
		switch {
		case d >= 0:
			s += fmt.Sprint(d)
		case v.DimParams[i] != "":
			s += v.DimParams[i]
		default:
			s += "?"
		}
	}
	return s + "]"
}

// valueInfo converts a ValueInfoProto; a value without a tensor type has
// element type Undefined and unknown rank.
func valueInfo(v *onnx.ValueInfoProto) IOInfo {
	info := IOInfo{Name: v.Name}
	tt := v.GetType().GetTensorType()
	if tt == nil {
		return info
	}
	info.Elem = graph.DataType(tt.ElemType)
	if tt.Shape == nil {
		return info
	}
	info.Dims = make([]int64, len(tt.Shape.Dim))
	info.DimParams = make([]string, len(tt.Shape.Dim))
	for i, d := range tt.Shape.Dim {
		info.Dims[i] = -1
		switch x := d.Value.(type) {
		case *onnx.TensorShapeProto_Dimension_DimValue:
			info.Dims[i] = x.DimValue
		case *onnx.TensorShapeProto_Dimension_DimParam:
			info.DimParams[i] = x.DimParam
		}
	}
	return info
}

// graphIO lists the inputs a caller must feed (graph inputs that are not
// initializers: onnxruntime uses an initializer's value when its input is
// not fed) and the declared outputs.
func graphIO(inputs, outputs []*onnx.ValueInfoProto, isInit func(string) bool) (in, out []IOInfo) {
	for _, v := range inputs {
		if !isInit(v.Name) {
			in = append(in, valueInfo(v))
		}
	}
	for _, v := range outputs {
		out = append(out, valueInfo(v))
	}
	return in, out
}

// fileIO reads a model file's inputs and outputs without decoding its
// tensors: it maps the file and walks the protobuf wire format down to the
// graph's input, output and initializer-name fields, so a large model is
// not read into memory a second time beside onnxruntime's copy.
func fileIO(path string) (in, out []IOInfo, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if st.IsDir() {
		return nil, nil, fmt.Errorf("%s is a directory, not an ONNX model", path)
	}
	if st.Size() == 0 {
		return nil, nil, fmt.Errorf("%s: empty file, not an ONNX model", path)
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %v", path, err)
	}
	defer syscall.Munmap(data)
	var g wireGraph
	if err := scanModel(data, &g); err != nil {
		return nil, nil, fmt.Errorf("%s: not a valid ONNX model (%v)", path, err)
	}
	if !g.seen {
		return nil, nil, fmt.Errorf("%s: not an ONNX model: it has no graph", path)
	}
	in, out = graphIO(g.inputs, g.outputs, func(name string) bool { return g.inits[name] })
	return in, out, nil
}

// wireGraph collects the parts of a GraphProto fileIO needs.
type wireGraph struct {
	seen            bool
	inputs, outputs []*onnx.ValueInfoProto
	inits           map[string]bool
}

// Field numbers in onnx.proto.
const (
	modelGraph        = 7  // ModelProto.graph
	graphInitializer  = 5  // GraphProto.initializer
	graphInput        = 11 // GraphProto.input
	graphOutput       = 12 // GraphProto.output
	graphSparseInit   = 15 // GraphProto.sparse_initializer
	tensorName        = 8  // TensorProto.name
	sparseTensorValue = 1  // SparseTensorProto.values
)

// scanModel walks a serialized ModelProto. Protobuf merges repeated
// occurrences of a message field, so every graph field is scanned.
func scanModel(b []byte, g *wireGraph) error {
	g.inits = map[string]bool{}
	return scanFields(b, func(num protowire.Number, v []byte) error {
		if num != modelGraph {
			return nil
		}
		g.seen = true
		return scanFields(v, func(num protowire.Number, v []byte) error {
			switch num {
			case graphInput, graphOutput:
				vi := &onnx.ValueInfoProto{}
				if err := proto.Unmarshal(v, vi); err != nil {
					return err
				}
				if num == graphInput {
					g.inputs = append(g.inputs, vi)
				} else {
					g.outputs = append(g.outputs, vi)
				}
			case graphInitializer:
				name, err := tensorNameOf(v)
				g.inits[name] = true
				return err
			case graphSparseInit:
				return scanFields(v, func(num protowire.Number, v []byte) error {
					if num != sparseTensorValue {
						return nil
					}
					name, err := tensorNameOf(v)
					g.inits[name] = true
					return err
				})
			}
			return nil
		})
	})
}

// tensorNameOf returns a serialized TensorProto's name.
func tensorNameOf(b []byte) (string, error) {
	var name string
	err := scanFields(b, func(num protowire.Number, v []byte) error {
		if num == tensorName {
			name = string(v)
		}
		return nil
	})
	return name, err
}

// scanFields calls f for each length-delimited field of the message in b
// and skips the others.
func scanFields(b []byte, f func(protowire.Number, []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			if err := f(num, v); err != nil {
				return err
			}
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
	}
	return nil
}

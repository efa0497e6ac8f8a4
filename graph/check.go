package graph

import (
	"fmt"

	"github.com/qatc/qatc/onnx"
)

// Every tensor a model holds is checked when it is read: its dims are
// non-negative and their product bounded, its type is one ONNX defines,
// and the data present is exactly what the type and dims declare. Code
// that sizes buffers from a tensor's dims (inspect's counts, per-channel
// statistics, folding) can then trust them: a weight that declares
// [1e9, 1e9] over 16 bytes is refused here, not allocated later.

// maxElements bounds a tensor's element count so that any byte count
// derived from it fits in an int64.
const maxElements = 1 << 56

// elemBits returns the size in bits of an element of dt (0 for strings)
// and false for a type ONNX does not define.
func elemBits(dt DataType) (int64, bool) {
	switch dt {
	case String:
		return 0, true
	case 14: // complex64
		return 64, true
	case 15: // complex128
		return 128, true
	case 17, 18, 19, 20, 24: // the float8 types, float8e8m0
		return 8, true
	case 23: // float4e2m1
		return 4, true
	case 25, 26: // uint2, int2
		return 2, true
	}
	if b := dt.Bits(); b > 0 {
		return int64(b), true
	}
	return 0, false
}

// tensorRef names t in a message.
func tensorRef(t *onnx.TensorProto) string {
	if t.Name == "" {
		return "a tensor attribute"
	}
	return fmt.Sprintf("tensor %q", printable(t.Name))
}

// elements returns the product of t's dims, checked.
func elements(t *onnx.TensorProto) (int64, error) {
	n := int64(1)
	for _, d := range t.Dims {
		if d < 0 {
			return 0, fmt.Errorf("%s has a negative dimension in %v; the model is malformed", tensorRef(t), t.Dims)
		}
		if d > 0 && n > maxElements/d {
			return 0, fmt.Errorf("%s declares dims %v, more elements than any file holds; the model is malformed", tensorRef(t), t.Dims)
		}
		n *= d
	}
	return n, nil
}

// dataBytes returns the number of bytes t's raw data must have: its
// element count times its element size (4-bit types packed two to a
// byte).
func dataBytes(t *onnx.TensorProto) (int64, error) {
	n, err := elements(t)
	if err != nil {
		return 0, err
	}
	bits, ok := elemBits(TensorType(t))
	if !ok {
		return 0, fmt.Errorf("%s has data type %d, which ONNX does not define; the model is malformed or newer than qatc", tensorRef(t), t.DataType)
	}
	return (n*bits + 7) / 8, nil
}

// checkTensor checks that t's data is exactly what its type and dims
// declare: raw bytes, or the typed field ONNX stores the type in.
func checkTensor(t *onnx.TensorProto) error {
	if HasExternalData(t) {
		return nil // checked by the external-data reader
	}
	want, err := dataBytes(t)
	if err != nil {
		return err
	}
	n, _ := elements(t)
	dt := TensorType(t)
	if len(t.RawData) > 0 {
		if dt == String {
			return fmt.Errorf("%s is a string tensor with raw data; ONNX stores strings in string_data, the model is malformed", tensorRef(t))
		}
		if int64(len(t.RawData)) != want {
			return fmt.Errorf("%s declares %s%v, %d bytes, but holds %d bytes of data; the model is malformed", tensorRef(t), dt, t.Dims, want, len(t.RawData))
		}
		return nil
	}
	field, have, need := "float_data", int64(len(t.FloatData)), n
	switch dt {
	case Float:
	case 14:
		need = 2 * n
	case Int64:
		field, have = "int64_data", int64(len(t.Int64Data))
	case String:
		field, have = "string_data", int64(len(t.StringData))
	case Double:
		field, have = "double_data", int64(len(t.DoubleData))
	case 15:
		field, have, need = "double_data", int64(len(t.DoubleData)), 2*n
	case Uint32, Uint64:
		field, have = "uint64_data", int64(len(t.Uint64Data))
	default: // the types ONNX stores in int32_data, packed below 8 bits
		field, have = "int32_data", int64(len(t.Int32Data))
		bits, _ := elemBits(dt)
		if bits < 8 {
			need = (n*bits + 7) / 8
		}
	}
	if have != need {
		return fmt.Errorf("%s declares %s%v, %d elements, but holds %d values in %s; the model is malformed", tensorRef(t), dt, t.Dims, n, have, field)
	}
	return nil
}

// checkTensors checks every tensor of p (see checkTensor), and the dense
// shape of sparse tensors.
func checkTensors(p *onnx.ModelProto) error {
	var err error
	walkTensors(p.Graph, func(t *onnx.TensorProto) {
		if err == nil {
			err = checkTensor(t)
		}
	})
	if err != nil {
		return err
	}
	return walkSparse(p.Graph, func(s *onnx.SparseTensorProto) error {
		if _, err := elements(&onnx.TensorProto{Name: s.GetValues().GetName(), Dims: s.Dims}); err != nil {
			return err
		}
		return nil
	})
}

// walkSparse calls f for every sparse tensor in g and its subgraphs.
func walkSparse(g *onnx.GraphProto, f func(*onnx.SparseTensorProto) error) error {
	if g == nil {
		return nil
	}
	for _, s := range g.SparseInitializer {
		if err := f(s); err != nil {
			return err
		}
	}
	for _, n := range g.Node {
		for _, a := range n.Attribute {
			if a.SparseTensor != nil {
				if err := f(a.SparseTensor); err != nil {
					return err
				}
			}
			for _, s := range a.SparseTensors {
				if err := f(s); err != nil {
					return err
				}
			}
			if err := walkSparse(a.G, f); err != nil {
				return err
			}
			for _, sg := range a.Graphs {
				if err := walkSparse(sg, f); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

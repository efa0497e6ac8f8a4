package graph

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/qatc/qatc/onnx"
)

// DataType is an ONNX TensorProto element type. The constants include the
// 4-bit types, which the vendored protobuf enum predates.
type DataType int32

// ONNX element types.
const (
	Undefined DataType = 0
	Float     DataType = 1
	Uint8     DataType = 2
	Int8      DataType = 3
	Uint16    DataType = 4
	Int16     DataType = 5
	Int32     DataType = 6
	Int64     DataType = 7
	String    DataType = 8
	Bool      DataType = 9
	Float16   DataType = 10
	Double    DataType = 11
	Uint32    DataType = 12
	Uint64    DataType = 13
	BFloat16  DataType = 16
	Uint4     DataType = 21
	Int4      DataType = 22
)

var dataTypeNames = map[DataType]string{
	Float: "float32", Uint8: "uint8", Int8: "int8", Uint16: "uint16", Int16: "int16",
	Int32: "int32", Int64: "int64", String: "string", Bool: "bool", Float16: "float16",
	Double: "float64", Uint32: "uint32", Uint64: "uint64", BFloat16: "bfloat16",
	Uint4: "uint4", Int4: "int4",
}

func (t DataType) String() string {
	if s, ok := dataTypeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("dtype(%d)", int32(t))
}

// Bits returns the element size in bits (0 for strings and unknown types).
func (t DataType) Bits() int {
	switch t {
	case Uint4, Int4:
		return 4
	case Uint8, Int8, Bool:
		return 8
	case Uint16, Int16, Float16, BFloat16:
		return 16
	case Float, Int32, Uint32:
		return 32
	case Int64, Double, Uint64:
		return 64
	}
	return 0
}

// NumElements returns the product of dims (1 for a scalar).
func NumElements(dims []int64) int64 {
	n := int64(1)
	for _, d := range dims {
		n *= d
	}
	return n
}

// TensorType returns t's element type.
func TensorType(t *onnx.TensorProto) DataType { return DataType(t.DataType) }

// HasExternalData reports whether t's bytes live outside the protobuf.
func HasExternalData(t *onnx.TensorProto) bool {
	return t.DataLocation == onnx.TensorProto_EXTERNAL
}

// Floats returns t's elements as float32 (float, float16 is not converted).
// Raw data is decoded; float_data is returned as is (not copied).
func Floats(t *onnx.TensorProto) ([]float32, error) {
	if TensorType(t) != Float {
		return nil, fmt.Errorf("tensor %q is %s, not float32", t.Name, TensorType(t))
	}
	if HasExternalData(t) {
		return nil, fmt.Errorf("tensor %q: external data not loaded", t.Name)
	}
	n := NumElements(t.Dims)
	if t.RawData != nil || len(t.FloatData) == 0 {
		if int64(len(t.RawData)) != 4*n {
			return nil, fmt.Errorf("tensor %q: %d raw bytes for %d float32 elements", t.Name, len(t.RawData), n)
		}
		out := make([]float32, n)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.RawData[4*i:]))
		}
		return out, nil
	}
	if int64(len(t.FloatData)) != n {
		return nil, fmt.Errorf("tensor %q: %d float_data values for %d elements", t.Name, len(t.FloatData), n)
	}
	return t.FloatData, nil
}

// Int64s returns t's elements as int64 (from int64, int32, int8, uint8,
// bool, and the 4-bit types, which ONNX packs two to a byte, low nibble
// first).
func Int64s(t *onnx.TensorProto) ([]int64, error) {
	if HasExternalData(t) {
		return nil, fmt.Errorf("tensor %q: external data not loaded", t.Name)
	}
	n := NumElements(t.Dims)
	dt := TensorType(t)
	if dt == Int4 || dt == Uint4 {
		return nibbles(t, n)
	}
	out := make([]int64, n)
	if len(t.RawData) > 0 || n == 0 {
		size := int64(dt.Bits() / 8)
		if size == 0 || int64(len(t.RawData)) != size*n {
			return nil, fmt.Errorf("tensor %q: %d raw bytes for %d %s elements", t.Name, len(t.RawData), n, dt)
		}
		for i := range out {
			b := t.RawData[int64(i)*size:]
			switch dt {
			case Int64:
				out[i] = int64(binary.LittleEndian.Uint64(b))
			case Int32:
				out[i] = int64(int32(binary.LittleEndian.Uint32(b)))
			case Int8:
				out[i] = int64(int8(b[0]))
			case Uint8, Bool:
				out[i] = int64(b[0])
			default:
				return nil, fmt.Errorf("tensor %q is %s, not an integer tensor", t.Name, dt)
			}
		}
		return out, nil
	}
	switch dt {
	case Int64:
		copy(out, t.Int64Data)
		if len(t.Int64Data) != int(n) {
			return nil, fmt.Errorf("tensor %q: %d int64_data values for %d elements", t.Name, len(t.Int64Data), n)
		}
	case Int32, Int8, Uint8, Bool, Int16, Uint16:
		if len(t.Int32Data) != int(n) {
			return nil, fmt.Errorf("tensor %q: %d int32_data values for %d elements", t.Name, len(t.Int32Data), n)
		}
		for i, v := range t.Int32Data {
			out[i] = int64(v)
		}
	default:
		return nil, fmt.Errorf("tensor %q is %s, not an integer tensor", t.Name, dt)
	}
	return out, nil
}

// FloatTensor returns a float32 initializer holding data (as raw bytes).
func FloatTensor(name string, dims []int64, data []float32) *onnx.TensorProto {
	raw := make([]byte, 4*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	return &onnx.TensorProto{Name: name, Dims: append([]int64(nil), dims...), DataType: int32(Float), RawData: raw}
}

// Int64Tensor returns an int64 initializer holding data (as raw bytes).
func Int64Tensor(name string, dims []int64, data []int64) *onnx.TensorProto {
	raw := make([]byte, 8*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint64(raw[8*i:], uint64(v))
	}
	return &onnx.TensorProto{Name: name, Dims: append([]int64(nil), dims...), DataType: int32(Int64), RawData: raw}
}

// Int8Tensor returns an int8 initializer holding data.
func Int8Tensor(name string, dims []int64, data []int8) *onnx.TensorProto {
	raw := make([]byte, len(data))
	for i, v := range data {
		raw[i] = byte(v)
	}
	return &onnx.TensorProto{Name: name, Dims: append([]int64(nil), dims...), DataType: int32(Int8), RawData: raw}
}

// Uint8Tensor returns a uint8 initializer holding data.
func Uint8Tensor(name string, dims []int64, data []uint8) *onnx.TensorProto {
	return &onnx.TensorProto{Name: name, Dims: append([]int64(nil), dims...), DataType: int32(Uint8), RawData: append([]byte(nil), data...)}
}

// SetFloats replaces t's contents with data (as raw bytes), keeping its
// name and dims; len(data) must match the dims.
func SetFloats(t *onnx.TensorProto, data []float32) error {
	if int64(len(data)) != NumElements(t.Dims) {
		return fmt.Errorf("tensor %q has %d elements, got %d values", t.Name, NumElements(t.Dims), len(data))
	}
	raw := t.RawData
	if len(raw) != 4*len(data) {
		raw = make([]byte, 4*len(data))
	}
	for i, v := range data {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	t.DataType = int32(Float)
	t.FloatData = nil
	t.RawData = raw
	return nil
}

// Transpose permutes the axes of a dense row-major tensor (ONNX
// Transpose: output axis i is input axis perm[i]), returning the data and
// its dims.
func Transpose[T any](data []T, dims, perm []int64) ([]T, []int64) {
	rank := len(dims)
	odims := make([]int64, rank)
	for i, p := range perm {
		odims[i] = dims[p]
	}
	strides := make([]int64, rank)
	s := int64(1)
	for i := rank - 1; i >= 0; i-- {
		strides[i] = s
		s *= dims[i]
	}
	out := make([]T, len(data))
	idx := make([]int64, rank)
	for o := range out {
		var src int64
		for i := range rank {
			src += idx[i] * strides[perm[i]]
		}
		out[o] = data[src]
		for i := rank - 1; i >= 0; i-- {
			idx[i]++
			if idx[i] < odims[i] {
				break
			}
			idx[i] = 0
		}
	}
	return out, odims
}

// nibbles unpacks a 4-bit tensor of n elements.
func nibbles(t *onnx.TensorProto, n int64) ([]int64, error) {
	dt := TensorType(t)
	out := make([]int64, n)
	for i := range out {
		var b byte
		switch {
		case int64(len(t.RawData)) > int64(i)/2:
			b = t.RawData[i/2]
		case int64(len(t.Int32Data)) > int64(i)/2:
			b = byte(t.Int32Data[i/2])
		default:
			return nil, fmt.Errorf("tensor %q: too little data for %d %s elements", t.Name, n, dt)
		}
		v := int64(b>>(4*(i%2))) & 0xF
		if dt == Int4 && v >= 8 {
			v -= 16
		}
		out[i] = v
	}
	return out, nil
}

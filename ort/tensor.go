package ort

import (
	"fmt"

	"github.com/qatc/qatc/graph"
)

// Tensor is a dense, row-major tensor over a Go slice. Data is one of
// []float32, []float64, []int64, []int32, []int8, []uint8 or []bool, with
// exactly NumElements(Shape) elements; an empty Shape is a scalar.
//
// Run hands Data to onnxruntime without copying it, so the slice must not be
// changed while a Run that reads it is in progress.
type Tensor struct {
	Shape []int64
	Data  any
}

// Float32 returns a float32 tensor over data.
func Float32(shape []int64, data []float32) *Tensor { return &Tensor{Shape: shape, Data: data} }

// Float64 returns a float64 tensor over data.
func Float64(shape []int64, data []float64) *Tensor { return &Tensor{Shape: shape, Data: data} }

// Int64 returns an int64 tensor over data.
func Int64(shape []int64, data []int64) *Tensor { return &Tensor{Shape: shape, Data: data} }

// Int32 returns an int32 tensor over data.
func Int32(shape []int64, data []int32) *Tensor { return &Tensor{Shape: shape, Data: data} }

// Int8 returns an int8 tensor over data.
func Int8(shape []int64, data []int8) *Tensor { return &Tensor{Shape: shape, Data: data} }

// Uint8 returns a uint8 tensor over data.
func Uint8(shape []int64, data []uint8) *Tensor { return &Tensor{Shape: shape, Data: data} }

// Bool returns a bool tensor over data.
func Bool(shape []int64, data []bool) *Tensor { return &Tensor{Shape: shape, Data: data} }

// DType returns the tensor's ONNX element type (graph.Undefined when Data
// is not one of the supported slice types).
func (t *Tensor) DType() graph.DataType {
	switch t.Data.(type) {
	case []float32:
		return graph.Float
	case []float64:
		return graph.Double
	case []int64:
		return graph.Int64
	case []int32:
		return graph.Int32
	case []int8:
		return graph.Int8
	case []uint8:
		return graph.Uint8
	case []bool:
		return graph.Bool
	}
	return graph.Undefined
}

// Float32s returns Data as []float32; it panics if the tensor is not float32.
func (t *Tensor) Float32s() []float32 { return t.Data.([]float32) }

// Float64s returns Data as []float64; it panics if the tensor is not float64.
func (t *Tensor) Float64s() []float64 { return t.Data.([]float64) }

// Int64s returns Data as []int64; it panics if the tensor is not int64.
func (t *Tensor) Int64s() []int64 { return t.Data.([]int64) }

// Int32s returns Data as []int32; it panics if the tensor is not int32.
func (t *Tensor) Int32s() []int32 { return t.Data.([]int32) }

// Len returns the number of elements in Data (0 for an unsupported type).
func (t *Tensor) Len() int {
	switch d := t.Data.(type) {
	case []float32:
		return len(d)
	case []float64:
		return len(d)
	case []int64:
		return len(d)
	case []int32:
		return len(d)
	case []int8:
		return len(d)
	case []uint8:
		return len(d)
	case []bool:
		return len(d)
	}
	return 0
}

// String describes the tensor's type and shape, as in "float32[2,7,1000]".
func (t *Tensor) String() string { return shapeString(t.DType(), t.Shape) }

// check reports whether Data is a supported slice whose length matches
// Shape.
func (t *Tensor) check() error {
	if t.DType() == graph.Undefined {
		return fmt.Errorf("unsupported Go data type %T (want []float32, []float64, []int64, []int32, []int8, []uint8 or []bool)", t.Data)
	}
	n := int64(1)
	for _, d := range t.Shape {
		if d < 0 {
			return fmt.Errorf("negative dimension in shape %v", t.Shape)
		}
		n *= d
	}
	if int64(t.Len()) != n {
		return fmt.Errorf("shape %v needs %d elements but Data has %d", t.Shape, n, t.Len())
	}
	return nil
}

// shapeString formats a type and dims; a negative dim prints as "?".
func shapeString(dt graph.DataType, dims []int64) string {
	s := dt.String() + "["
	for i, d := range dims {
		if i > 0 {
			s += ","
		}
		if d < 0 {
			s += "?"
		} else {
			s += fmt.Sprint(d)
		}
	}
	return s + "]"
}

package ort

import (
	"fmt"

	"github.com/qatc/qatc/graph"
	onnxrt "github.com/yalue/onnxruntime_go"
)

// newValue wraps t's Go slice as an onnxruntime tensor, without copying.
// t has been checked.
func newValue(t *Tensor) (onnxrt.Value, error) {
	switch d := t.Data.(type) {
	case []float32:
		return wrap(t.Shape, d)
	case []float64:
		return wrap(t.Shape, d)
	case []int64:
		return wrap(t.Shape, d)
	case []int32:
		return wrap(t.Shape, d)
	case []int8:
		return wrap(t.Shape, d)
	case []uint8:
		return wrap(t.Shape, d)
	case []bool:
		return wrap(t.Shape, d)
	}
	return nil, fmt.Errorf("unsupported Go data type %T", t.Data)
}

// wrap makes the onnxruntime value over d. The binding's tensors need at
// least one dim, so a scalar goes through its Scalar type (one element is
// copied).
func wrap[T onnxrt.TensorData](shape []int64, d []T) (onnxrt.Value, error) {
	if len(shape) == 0 {
		return onnxrt.NewScalar(d[0])
	}
	return onnxrt.NewTensor(onnxrt.NewShape(shape...), d)
}

// newScalar allocates a rank-0 output buffer of element type dt.
func newScalar(dt graph.DataType) (onnxrt.Value, error) {
	switch dt {
	case graph.Float:
		return onnxrt.NewEmptyScalar[float32]()
	case graph.Double:
		return onnxrt.NewEmptyScalar[float64]()
	case graph.Int64:
		return onnxrt.NewEmptyScalar[int64]()
	case graph.Int32:
		return onnxrt.NewEmptyScalar[int32]()
	case graph.Int8:
		return onnxrt.NewEmptyScalar[int8]()
	case graph.Uint8:
		return onnxrt.NewEmptyScalar[uint8]()
	case graph.Bool:
		return onnxrt.NewEmptyScalar[bool]()
	}
	return nil, fmt.Errorf("scalar of type %s is not supported", dt)
}

// fromValue turns an onnxruntime result into a Tensor. The binding has
// already copied the result into a Go slice, which the Tensor takes over.
func fromValue(v onnxrt.Value) (*Tensor, error) {
	switch x := v.(type) {
	case *onnxrt.Tensor[float32]:
		return &Tensor{Shape: x.GetShape(), Data: x.GetData()}, nil
	case *onnxrt.Tensor[float64]:
		return &Tensor{Shape: x.GetShape(), Data: x.GetData()}, nil
	case *onnxrt.Tensor[int64]:
		return &Tensor{Shape: x.GetShape(), Data: x.GetData()}, nil
	case *onnxrt.Tensor[int32]:
		return &Tensor{Shape: x.GetShape(), Data: x.GetData()}, nil
	case *onnxrt.Tensor[int8]:
		return &Tensor{Shape: x.GetShape(), Data: x.GetData()}, nil
	case *onnxrt.Tensor[uint8]:
		return &Tensor{Shape: x.GetShape(), Data: x.GetData()}, nil
	case *onnxrt.Tensor[bool]:
		return &Tensor{Shape: x.GetShape(), Data: x.GetData()}, nil
	case *onnxrt.Scalar[float32]:
		return &Tensor{Shape: []int64{}, Data: []float32{x.GetData()}}, nil
	case *onnxrt.Scalar[float64]:
		return &Tensor{Shape: []int64{}, Data: []float64{x.GetData()}}, nil
	case *onnxrt.Scalar[int64]:
		return &Tensor{Shape: []int64{}, Data: []int64{x.GetData()}}, nil
	case *onnxrt.Scalar[int32]:
		return &Tensor{Shape: []int64{}, Data: []int32{x.GetData()}}, nil
	case *onnxrt.Scalar[int8]:
		return &Tensor{Shape: []int64{}, Data: []int8{x.GetData()}}, nil
	case *onnxrt.Scalar[uint8]:
		return &Tensor{Shape: []int64{}, Data: []uint8{x.GetData()}}, nil
	case *onnxrt.Scalar[bool]:
		return &Tensor{Shape: []int64{}, Data: []bool{x.GetData()}}, nil
	case nil:
		return nil, fmt.Errorf("onnxruntime returned no value")
	}
	return nil, fmt.Errorf("element type %s is not supported (want float32, float64, int64, int32, int8, uint8 or bool)", ortTypeName(v))
}

func ortTypeName(v onnxrt.Value) string {
	return onnxrt.TensorElementDataType(v.DataType()).String()
}

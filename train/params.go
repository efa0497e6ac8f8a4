package train

import (
	"encoding/binary"
	"unsafe"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// paramView returns t's float32 values as a slice over t's own memory, and
// whether it is one: the parameters are then updated in the model's
// initializers in place, and training keeps no second copy of the weights
// (for transformer-big, 837 MB). Raw data is viewed where it is 4-byte
// aligned on a little-endian machine (otherwise it is moved into an
// aligned buffer that becomes the raw data); float_data is the slice
// itself. On a big-endian machine the values are a copy, written back by
// WriteBack.
func paramView(t *onnx.TensorProto) ([]float32, bool, error) {
	raw := t.RawData
	if graph.TensorType(t) != graph.Float || graph.HasExternalData(t) || len(raw) == 0 || int64(len(raw)) != 4*graph.NumElements(t.Dims) {
		// float_data (returned as it is), or graph.Floats's error.
		vals, err := graph.Floats(t)
		return vals, err == nil && len(t.FloatData) > 0, err
	}
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		vals, err := graph.Floats(t)
		return vals, false, err
	}
	if uintptr(unsafe.Pointer(&raw[0]))%unsafe.Alignof(float32(0)) != 0 {
		vals, err := graph.Floats(t)
		if err != nil {
			return nil, false, err
		}
		t.RawData = unsafe.Slice((*byte)(unsafe.Pointer(&vals[0])), len(raw))
		return vals, true, nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&raw[0])), len(raw)/4), true, nil
}

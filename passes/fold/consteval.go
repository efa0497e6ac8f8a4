package fold

import (
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// constFloats evaluates a float constant: an initializer, a Constant, or a
// Transpose of one (exporters store some weights transposed). The values
// may be the tensor's own memory: callers only read them.
func constFloats(m *graph.Model, name string) ([]float32, []int64, error) {
	if t := m.Const(name); t != nil {
		v, err := floatsView(t)
		return v, t.Dims, err
	}
	n := m.Producer(name)
	if n != nil && n.OpType == "Transpose" {
		v, dims, err := constFloats(m, n.Input[0])
		if err != nil {
			return nil, nil, err
		}
		perm := transposePerm(n, len(dims))
		out, odims := graph.Transpose(v, dims, perm)
		return out, odims, nil
	}
	return nil, nil, fmt.Errorf("value %q is not a constant", name)
}

// floatsView is graph.Floats without the copy where the raw data can be
// read in place (4-byte aligned, on a little-endian machine): folding
// transformer-big reads 837 MB of weights.
func floatsView(t *onnx.TensorProto) ([]float32, error) {
	raw := t.RawData
	if graph.TensorType(t) != graph.Float || graph.HasExternalData(t) || len(raw) == 0 || int64(len(raw)) != 4*graph.NumElements(t.Dims) ||
		binary.NativeEndian.Uint16([]byte{1, 0}) != 1 || uintptr(unsafe.Pointer(&raw[0]))%4 != 0 {
		return graph.Floats(t)
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&raw[0])), len(raw)/4), nil
}

// transposePerm returns n's perm attribute, defaulting to reversed axes.
func transposePerm(n *onnx.NodeProto, rank int) []int64 {
	if p := graph.IntsAttr(n, "perm"); p != nil {
		return p
	}
	p := make([]int64, rank)
	for i := range p {
		p[i] = int64(rank - 1 - i)
	}
	return p
}

// ScaleIndex maps each element of a tensor with dims to its entry in the
// scale: per-tensor (one scale), per-channel along axis, or per-block of
// blockSize along axis (a scale of the tensor's rank).
func ScaleIndex(dims []int64, nScale int, axis, blockSize int64) (func(i int) int, error) {
	if nScale == 1 && blockSize == 0 {
		return func(int) int { return 0 }, nil
	}
	rank := int64(len(dims))
	if axis < 0 {
		axis += rank
	}
	if axis < 0 || axis >= rank {
		return nil, fmt.Errorf("axis %d out of range for rank %d", axis, rank)
	}
	inner := graph.NumElements(dims[axis+1:])
	c := dims[axis]
	if blockSize == 0 {
		if int64(nScale) != c {
			return nil, fmt.Errorf("%d scales for %d channels along axis %d", nScale, c, axis)
		}
		return func(i int) int { return int(int64(i) / inner % c) }, nil
	}
	nb := (c + blockSize - 1) / blockSize
	if int64(nScale) != graph.NumElements(dims)/c*nb {
		return nil, fmt.Errorf("%d scales for blocks of %d along axis %d of %v", nScale, blockSize, axis, dims)
	}
	return func(i int) int {
		outer := int64(i) / (inner * c)
		k := int64(i) / inner % c
		in := int64(i) % inner
		return int((outer*nb+k/blockSize)*inner + in)
	}, nil
}

// quantizeBytes computes QuantizeLinear's integers for x: round(x / scale)
// with ties to even, plus the (zero) zero point, saturated to [lo, hi],
// stored as int8 (signed) or uint8 bytes. The division is float32, as
// onnxruntime's kernel does it. Chunks run on every core.
func quantizeBytes(x []float32, dims []int64, scale []float32, axis, blockSize, lo, hi int64) ([]byte, error) {
	idx, err := ScaleIndex(dims, len(scale), axis, blockSize)
	if err != nil {
		return nil, err
	}
	out := make([]byte, len(x))
	const chunk = 1 << 16
	n := (len(x) + chunk - 1) / chunk
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := int(next.Add(1)) - 1; c < n; c = int(next.Add(1)) - 1 {
				for i := c * chunk; i < min((c+1)*chunk, len(x)); i++ {
					r := math.RoundToEven(float64(x[i] / scale[idx(i)]))
					switch {
					case math.IsNaN(r):
						r = 0
					case r < float64(lo):
						r = float64(lo)
					case r > float64(hi):
						r = float64(hi)
					}
					out[i] = byte(int64(r))
				}
			}
		}()
	}
	wg.Wait()
	return out, nil
}

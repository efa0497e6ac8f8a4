package autodiff

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
)

// choosePar returns the trainable initializers, in initializer order:
// opts.Trainable checked, or the default set.
func choosePar(b *builder, nodes []*onnx.NodeProto, logits string, opts Options) ([]string, error) {
	m := b.m
	if len(opts.Trainable) > 0 {
		seen := map[string]bool{}
		for _, name := range opts.Trainable {
			t := m.Initializer(name)
			if t == nil {
				return nil, fmt.Errorf("trainable %q: no initializer of that name in the model", name)
			}
			if !isFloat(graph.TensorType(t)) {
				return nil, fmt.Errorf("trainable %q is %s; only float initializers can be trained", name, graph.TensorType(t))
			}
			if graph.HasExternalData(t) {
				return nil, fmt.Errorf("trainable %q: external data not loaded", name)
			}
			seen[name] = true
		}
		var out []string
		for _, t := range m.Graph().Initializer {
			if seen[t.Name] {
				out = append(out, t.Name)
				delete(seen, t.Name)
			}
		}
		return out, nil
	}
	// Float initializers from which a float path reaches the logits.
	b.active = map[string]bool{}
	for _, t := range m.Graph().Initializer {
		if isFloat(graph.TensorType(t)) {
			b.active[t.Name] = true
		}
	}
	propagate(b, nodes)
	reach := map[string]bool{logits: true}
	for i := len(nodes) - 1; i >= 0; i-- {
		n := nodes[i]
		hit := false
		for _, o := range n.Output {
			if reach[o] && b.active[o] {
				hit = true
			}
		}
		if !hit {
			continue
		}
		ins := n.Input
		if u := b.quant[n]; u != nil {
			ins = []string{u.x, u.Scale, in(n, 1)}
		}
		for _, x := range ins {
			if b.active[x] {
				reach[x] = true
			}
		}
	}
	// A quantizer's clip (or an initializer named as insert names clips)
	// is learned, scalar or not.
	clips := map[string]bool{}
	for _, u := range b.quant {
		if u.Resolve(m) == nil && u.Clip != "" {
			clips[u.Clip] = true
		}
	}
	var out []string
	for _, t := range m.Graph().Initializer {
		if !reach[t.Name] || !clips[t.Name] && !strings.HasSuffix(t.Name, quantize.ClipSuffix) && !isParameter(t) {
			continue
		}
		out = append(out, t.Name)
	}
	b.active = nil
	return out, nil
}

// isParameter tells learned tensors from constants that merely happen to
// be float initializers: scalars (a quantizer's tiny and qmax, softmax
// fixed scales, eps), tables holding infinities (additive masks), and
// sinusoidal position tables, which are computed, not learned.
func isParameter(t *onnx.TensorProto) bool {
	if graph.NumElements(t.Dims) <= 1 {
		return false
	}
	if v, ok := floatValues(t); ok {
		for _, x := range v {
			if math.IsInf(x, 0) || math.IsNaN(x) {
				return false // an additive mask, never a learned value
			}
		}
	}
	return !isSinusoidTable(t)
}

// isSinusoidTable recognises a [positions, d] table whose first row is
// sin(0)/cos(0), i.e. exactly half zeros and half ones, with every value in
// [-1, 1]: the fixed position encoding of the Transformer paper. A learned
// table does not have that row.
func isSinusoidTable(t *onnx.TensorProto) bool {
	if len(t.Dims) != 2 || t.Dims[0] < 2 || t.Dims[1] < 2 || t.Dims[1]%2 != 0 {
		return false
	}
	v, ok := floatValues(t)
	if !ok {
		return false
	}
	d := int(t.Dims[1])
	zeros, ones := 0, 0
	for _, x := range v[:d] {
		switch x {
		case 0:
			zeros++
		case 1:
			ones++
		}
	}
	if zeros != d/2 || ones != d/2 {
		return false
	}
	for _, x := range v {
		if math.Abs(x) > 1 {
			return false
		}
	}
	return true
}

// findTies finds parameters that are exact or transposed (2-D) copies of
// an earlier parameter, as exporters write a tied embedding table twice.
// Tensors whose elements are all equal (zero biases, unit LayerNorm
// scales of a fresh model) are never tied: their equality is a
// coincidence of initialisation. Only tensors of equal type and size are
// compared, on their raw bytes.
func findTies(m *graph.Model, params []string) []Tie {
	type cand struct {
		name string
		dims []int64
		raw  []byte
		size int // bytes per element
	}
	groups := map[[2]int64][]cand{}
	var keys [][2]int64
	for _, p := range params {
		t := m.Initializer(p)
		raw, size := rawBytes(t)
		if raw == nil || len(raw) < 2*size {
			continue
		}
		k := [2]int64{int64(t.DataType), int64(len(raw))}
		if groups[k] == nil {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], cand{p, t.Dims, raw, size})
	}
	var ties []Tie
	tied := map[string]bool{}
	for _, k := range keys {
		cs := groups[k]
		for i, a := range cs {
			if tied[a.name] || constantFill(a.raw, a.size) {
				continue
			}
			for _, c := range cs[i+1:] {
				if tied[c.name] {
					continue
				}
				if slices.Equal(a.dims, c.dims) && bytes.Equal(a.raw, c.raw) {
					ties = append(ties, Tie{Param: a.name, Copy: c.name})
					tied[c.name] = true
				} else if len(a.dims) == 2 && len(c.dims) == 2 && a.dims[0] == c.dims[1] && a.dims[1] == c.dims[0] &&
					isTranspose(a.raw, c.raw, int(a.dims[0]), int(a.dims[1]), a.size) {
					ties = append(ties, Tie{Param: a.name, Copy: c.name, Transposed: true})
					tied[c.name] = true
				}
			}
		}
	}
	return ties
}

// rawBytes returns a float initializer's little-endian bytes and element
// size (nil when its data is elsewhere).
func rawBytes(t *onnx.TensorProto) ([]byte, int) {
	size := graph.TensorType(t).Bits() / 8
	n := int(graph.NumElements(t.Dims))
	switch {
	case graph.HasExternalData(t) || size == 0:
		return nil, 0
	case len(t.RawData) == n*size:
		return t.RawData, size
	case graph.TensorType(t) == graph.Float && len(t.FloatData) == n:
		raw := make([]byte, 4*n)
		for i, x := range t.FloatData {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(x))
		}
		return raw, 4
	case graph.TensorType(t) == graph.Double && len(t.DoubleData) == n:
		raw := make([]byte, 8*n)
		for i, x := range t.DoubleData {
			binary.LittleEndian.PutUint64(raw[8*i:], math.Float64bits(x))
		}
		return raw, 8
	}
	return nil, 0
}

func constantFill(raw []byte, size int) bool {
	for i := size; i < len(raw); i += size {
		if !bytes.Equal(raw[i:i+size], raw[:size]) {
			return false
		}
	}
	return true
}

// isTranspose reports whether c ([cols, rows]) is the transpose of a
// ([rows, cols]), elements of size bytes.
func isTranspose(a, c []byte, rows, cols, size int) bool {
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			x := a[(i*cols+j)*size:][:size]
			y := c[(j*rows+i)*size:][:size]
			if !bytes.Equal(x, y) {
				return false
			}
		}
	}
	return true
}

// floatValues returns the elements of a float32 or float64 initializer.
func floatValues(t *onnx.TensorProto) ([]float64, bool) {
	n := int(graph.NumElements(t.Dims))
	if graph.HasExternalData(t) {
		return nil, false
	}
	switch graph.TensorType(t) {
	case graph.Float:
		v, err := graph.Floats(t)
		if err != nil {
			return nil, false
		}
		out := make([]float64, len(v))
		for i, x := range v {
			out[i] = float64(x)
		}
		return out, true
	case graph.Double:
		if len(t.RawData) == 8*n {
			out := make([]float64, n)
			for i := range out {
				out[i] = math.Float64frombits(binary.LittleEndian.Uint64(t.RawData[8*i:]))
			}
			return out, true
		}
		if len(t.DoubleData) == n {
			return t.DoubleData, true
		}
	}
	return nil, false
}

package fold

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
)

// Reading an exported model's integer weights back, the inverse of the
// format writers: inspect and the export's check read every format
// through Stored.

// isIntType reports whether dt is one of the integer types quantized
// weights are stored in.
func isIntType(dt graph.DataType) bool {
	return dt == graph.Int8 || dt == graph.Uint8 || dt == graph.Int4 || dt == graph.Uint4
}

// StoredWeight is an integer weight of an exported model: an integer
// initializer that a DequantizeLinear reads, or the packed weight of a
// com.microsoft MatMulNBits.
type StoredWeight struct {
	Name    string
	Dims    []int64 // the integers' shape as shown
	Storage string  // how the file stores them
	Bits    int     // of the storage
	Scale   []float32
	Node    *onnx.NodeProto // the DequantizeLinear or integer kernel reading it
	// decode returns the signed (or unsigned) integers in dims' layout.
	decode func() ([]int64, error)
}

// Quantizer describes st as the graph does, for a model without a
// quantization record: the storage type gives the kind and bits, the
// scales and node the granularity.
func (st *StoredWeight) Quantizer() quantize.Quantizer {
	q := quantize.Quantizer{Tensor: st.Name, Kind: quantize.KindWeight, Bits: st.Bits}
	if strings.HasPrefix(st.Storage, "uint") && isDequantize(st.Node) {
		q.Kind = quantize.KindReLU
	}
	if len(st.Scale) > 1 {
		ax := 0 // MatMulNBits: blocks along K, the first axis shown
		if isDequantize(st.Node) {
			ax = int(graph.IntAttr(st.Node, "axis", 1))
		}
		q.Axis, q.BlockSize = &ax, int(graph.IntAttr(st.Node, "block_size", 0))
	}
	return q
}

// StoredSet indexes an exported model's integer weights.
type StoredSet struct {
	ByName map[string]*StoredWeight
	Names  []string // sorted
}

// Stored finds every integer initializer that a DequantizeLinear
// reads, directly or through data movement, and every MatMulNBits weight,
// with their scales.
func Stored(m *graph.Model) *StoredSet {
	s := &StoredSet{ByName: map[string]*StoredWeight{}}
	fused, _ := FusedWeights(m) // a damaged entry only hides the parts
	add := func(w *StoredWeight) {
		if s.ByName[w.Name] == nil {
			s.ByName[w.Name] = w
			s.Names = append(s.Names, w.Name)
		}
	}
	for _, n := range m.Graph().Node {
		switch {
		case isDequantize(n) && len(n.Input) >= 2:
			v := throughMovement(m, n.Input[0])
			t := m.Initializer(v)
			if t == nil || !isIntType(graph.TensorType(t)) {
				continue
			}
			add(&StoredWeight{Name: v, Dims: t.Dims, Storage: graph.TensorType(t).String(), Bits: graph.TensorType(t).Bits(), Scale: constFloats32(m, n.Input[1]), Node: n,
				decode: func() ([]int64, error) { return graph.Int64s(t) }})
		case n.OpType == "MatMulNBits" && n.Domain == "com.microsoft" && len(n.Input) >= 3:
			if w := storedNBits(m, n); w != nil {
				add(w)
			}
		case n.OpType == "MatMulIntegerToFloat" && len(n.Input) >= 4: // qoperator: B, b_scale
			w := intOperand(m, n, constFloats32(m, n.Input[3]))
			if w == nil {
				continue
			}
			if parts := fused[w.Name]; len(parts) > 0 {
				for _, p := range fusedParts(w, parts) {
					add(p)
				}
				continue
			}
			add(w)
		case n.OpType == "MatMulInteger" && len(n.Input) >= 2: // dynamic: B's scale multiplies the result
			if w := intOperand(m, n, integerScale(m, n)); w != nil {
				add(w)
			}
		}
	}
	sort.Strings(s.Names)
	return s
}

// intOperand returns the integer weight initializer n reads as its B
// input (directly or through data movement), with scale; nil when B is
// computed otherwise.
func intOperand(m *graph.Model, n *onnx.NodeProto, scale []float32) *StoredWeight {
	t := m.Initializer(throughMovement(m, n.Input[1]))
	if t == nil || !isIntType(graph.TensorType(t)) || scale == nil {
		return nil
	}
	return &StoredWeight{Name: t.Name, Dims: t.Dims, Storage: graph.TensorType(t).String(), Bits: graph.TensorType(t).Bits(), Scale: scale, Node: n,
		decode: func() ([]int64, error) { return graph.Int64s(t) }}
}

// fusedParts splits a weight that qoperator stored side by side with
// others (fold.FusedKey) into the integer weights it holds, each with its
// columns of the per-column scale (one value when they are all equal, as
// for a weight quantized per tensor).
func fusedParts(w *StoredWeight, parts []FusedPart) []*StoredWeight {
	if len(w.Dims) != 2 {
		return nil
	}
	rows, total := int(w.Dims[0]), int(w.Dims[1])
	var out []*StoredWeight
	first := 0
	for _, p := range parts {
		lo, cols := first, int(p.Columns)
		first += cols
		if first > total || len(w.Scale) != total && len(w.Scale) != 1 {
			return nil
		}
		scale := w.Scale
		if len(scale) == total {
			scale = scale[lo : lo+cols]
			if slices.Min(scale) == slices.Max(scale) {
				scale = scale[:1]
			}
		}
		decode := w.decode
		out = append(out, &StoredWeight{Name: p.Weight, Dims: []int64{int64(rows), int64(cols)}, Storage: w.Storage + fmt.Sprintf(", columns %d..%d of %s", lo, lo+cols-1, w.Name), Bits: w.Bits, Scale: scale, Node: w.Node,
			decode: func() ([]int64, error) {
				all, err := decode()
				if err != nil {
					return nil, err
				}
				v := make([]int64, 0, rows*cols)
				for r := range rows {
					v = append(v, all[r*total+lo:r*total+lo+cols]...)
				}
				return v, nil
			}})
	}
	return out
}

// integerScale finds the weight scale of a MatMulInteger, which the
// dynamic format applies after it: MatMulInteger ─▶ Cast ─▶
// Mul(·, Mul(activation scale, weight scale)) or Mul(·, weight scale).
func integerScale(m *graph.Model, n *onnx.NodeProto) []float32 {
	for _, c := range m.Consumers(n.Output[0]) {
		if c.OpType != "Cast" {
			continue
		}
		for _, mul := range m.Consumers(c.Output[0]) {
			if mul.OpType != "Mul" || len(mul.Input) != 2 {
				continue
			}
			other := mul.Input[0]
			if other == c.Output[0] {
				other = mul.Input[1]
			}
			if s := constFloats32(m, other); s != nil {
				return s
			}
			if p := m.Producer(other); p != nil && p.OpType == "Mul" {
				for _, in := range p.Input {
					if s := constFloats32(m, in); s != nil {
						return s
					}
				}
			}
		}
	}
	return nil
}

// throughMovement follows v back through data movement to the value it
// moves: an initializer, or the first computed value.
func throughMovement(m *graph.Model, v string) string {
	for m.Initializer(v) == nil {
		p := m.Producer(v)
		if p == nil || !movable(p.OpType) {
			break
		}
		v = p.Input[0]
	}
	return v
}

// storedNBits reads a MatMulNBits weight: B [N, blocks, blob] holds, for
// each output n and block of the input axis, block_size unsigned integers
// of bits each, low bits first; the weight is (B − zero point)·scale with
// the zero point 2^(bits−1) unless a uint8 zero-point input (packed alike)
// gives it. The integers are shown signed, in the product's layout [K, N]
// (Y = A·W).
func storedNBits(m *graph.Model, n *onnx.NodeProto) *StoredWeight {
	t := m.Initializer(n.Input[1])
	if t == nil || graph.TensorType(t) != graph.Uint8 || len(t.Dims) != 3 {
		return nil
	}
	k, cols := graph.IntAttr(n, "K", 0), graph.IntAttr(n, "N", 0)
	bits, block := graph.IntAttr(n, "bits", 4), graph.IntAttr(n, "block_size", 0)
	if k <= 0 || cols <= 0 || block <= 0 || (bits != 2 && bits != 4 && bits != 8) {
		return nil
	}
	nb := (k + block - 1) / block
	blob := block * bits / 8
	var zp *onnx.TensorProto
	if len(n.Input) > 3 && n.Input[3] != "" {
		if zp = m.Initializer(n.Input[3]); zp == nil || graph.TensorType(zp) != graph.Uint8 {
			return nil // float or computed zero points: not a form qatc writes
		}
	}
	w := &StoredWeight{Name: t.Name, Dims: []int64{k, cols}, Storage: fmt.Sprintf("uint8 MatMulNBits blocks %v of %d-bit values, shown as the K×N weight of the product", t.Dims, bits), Bits: int(bits), Scale: constFloats32(m, n.Input[2]), Node: n}
	w.decode = func() ([]int64, error) {
		if !slices.Equal(t.Dims, []int64{cols, nb, blob}) || len(t.RawData) != int(cols*nb*blob) {
			return nil, fmt.Errorf("MatMulNBits %s: weight %q has shape %v (%d bytes), want [%d %d %d] for K=%d, N=%d, %d bits, blocks of %d", graph.NodeName(n), t.Name, t.Dims, len(t.RawData), cols, nb, blob, k, cols, bits, block)
		}
		per := 8 / bits
		mask := byte(1)<<bits - 1
		if bits == 8 {
			mask = 0xFF
		}
		unpack := func(data []byte, i int64) int64 { return int64(data[i/per]>>(bits*(i%per))) & int64(mask) }
		var zps []byte
		if zp != nil {
			zps = zp.RawData
			if want := cols * ((nb*bits + 7) / 8); int64(len(zps)) != want {
				return nil, fmt.Errorf("MatMulNBits %s: zero points %q hold %d bytes, want %d", graph.NodeName(n), zp.Name, len(zps), want)
			}
		}
		out := make([]int64, k*cols)
		for j := int64(0); j < cols; j++ {
			for b := int64(0); b < nb; b++ {
				z := int64(1) << (bits - 1)
				if zps != nil {
					row := (nb*bits + 7) / 8
					z = unpack(zps[j*row:], b)
				}
				for i := int64(0); i < block && b*block+i < k; i++ {
					out[(b*block+i)*cols+j] = unpack(t.RawData[(j*nb+b)*blob:], i) - z
				}
			}
		}
		return out, nil
	}
	return w
}

// ForTensor returns the stored integers of the QAT tensor name: fold
// names them <name>_quantized (made unique, or _transposed when stored
// transposed), MatMulNBits <name>_nbits; the shortest such name wins.
func (s *StoredSet) ForTensor(name string) *StoredWeight {
	var best *StoredWeight
	for _, n := range s.Names {
		if n == name+"_quantized" || n == name+"_nbits" {
			return s.ByName[n]
		}
		if (strings.HasPrefix(n, name+"_quantized_") || strings.HasPrefix(n, name+"_nbits_")) && (best == nil || len(n) < len(best.Name)) {
			best = s.ByName[n]
		}
	}
	return best
}

// ActivationScale returns the constant scale of the QuantizeLinear that
// reads the activation v in an exported model, or nil (dynamic
// quantization has none).
func ActivationScale(m *graph.Model, v string) []float32 {
	for _, n := range m.Consumers(v) {
		if n.OpType != "QuantizeLinear" || len(n.Input) < 2 {
			continue
		}
		if s := constFloats32(m, n.Input[1]); s != nil {
			return s
		}
	}
	return nil
}

// Ints returns the weight's integers, signed (or unsigned) as the
// quantizer's grid holds them, in Dims' layout.
func (st *StoredWeight) Ints() ([]int64, error) { return st.decode() }

// constFloats32 returns the values of a float constant, or nil.
func constFloats32(m *graph.Model, name string) []float32 {
	v, _ := m.ConstFloats(name)
	return v
}

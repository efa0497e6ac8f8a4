package ort

import (
	"fmt"
	"math/rand/v2"

	"github.com/qatc/qatc/graph"
)

// RandomInputs makes valid inputs from the declared shapes: token ids in
// [4, vocab) other than pad for integer inputs, standard normals for float
// ones; dynamic dimensions take batch (axis 0) or length (other axes).
func RandomInputs(ins []graph.IOInfo, batch, length, vocab int, pad int64, seed uint64) (map[string]*Tensor, error) {
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	out := map[string]*Tensor{}
	for _, in := range ins {
		shape := make([]int64, len(in.Dims))
		factors := make([]Factor, len(in.Dims))
		for i, d := range in.Dims {
			switch {
			case d >= 0:
				shape[i] = d
				factors[i] = Factor{Name: fmt.Sprintf("dim %d of %q (fixed by the model)", i, in.Name), Value: d}
			case i == 0:
				shape[i] = int64(batch)
				factors[i] = Factor{Name: "--batch", Value: shape[i]}
			default:
				shape[i] = int64(length)
				factors[i] = Factor{Name: "--len", Value: shape[i]}
			}
		}
		if err := CheckSize(fmt.Sprintf("input %q", in.Name), 8, factors...); err != nil {
			return nil, err
		}
		n := int(graph.NumElements(shape))
		switch in.Elem {
		case graph.Int64, graph.Int32:
			if vocab <= 4 {
				return nil, fmt.Errorf("cannot generate token ids for input %q: vocabulary unknown; give --vocab or --input", in.Name)
			}
			ids := make([]int64, n)
			for i := range ids {
				for ids[i] = pad; ids[i] == pad; {
					ids[i] = 4 + rng.Int64N(int64(vocab-4))
				}
			}
			if in.Elem == graph.Int64 {
				out[in.Name] = Int64(shape, ids)
			} else {
				v := make([]int32, n)
				for i, x := range ids {
					v[i] = int32(x)
				}
				out[in.Name] = &Tensor{Shape: shape, Data: v}
			}
		case graph.Float:
			v := make([]float32, n)
			for i := range v {
				v[i] = float32(rng.NormFloat64())
			}
			out[in.Name] = Float32(shape, v)
		default:
			return nil, fmt.Errorf("cannot generate values for input %q of type %s; give it with --input", in.Name, in.Elem)
		}
	}
	return out, nil
}

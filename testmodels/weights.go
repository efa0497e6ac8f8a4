package testmodels

import (
	"encoding/binary"
	"hash/fnv"
	"math"
	"math/rand/v2"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// A distribution draws one weight.
type distribution func(r *rand.Rand) float64

// normal is N(0, std²), as NeurST initializes embeddings (std = d^-0.5).
func normal(std float64) distribution {
	return func(r *rand.Rand) float64 { return r.NormFloat64() * std }
}

// xavier is Glorot's uniform distribution for a [in, out] kernel.
func xavier(in, out int) distribution {
	limit := math.Sqrt(6 / float64(in+out))
	return func(r *rand.Rand) float64 { return (2*r.Float64() - 1) * limit }
}

// around is uniform on [center-spread, center+spread]: LayerNorm scales
// near 1 and offsets and biases near 0, but not exactly, so that a graph
// which drops or swaps one of them computes visibly different values.
func around(center, spread float64) distribution {
	return func(r *rand.Rand) float64 { return center + (2*r.Float64()-1)*spread }
}

// draw returns n weights from dist, from a PCG stream determined by seed
// and the tensor's name alone: a tensor's values do not depend on which
// other tensors the options add, so variants of a model share what they
// have in common.
func draw(seed int64, name string, n int, dist distribution) []float32 {
	r := stream(seed, name)
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(dist(r))
	}
	return out
}

func stream(seed int64, name string) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(name))
	return rand.New(rand.NewPCG(uint64(seed), h.Sum64()))
}

// param adds the float32 initializer name with weights from dist, drawn
// as draw does but straight into the tensor's raw bytes, so that building
// transformer-big holds its 840 MB once.
func (b *builder) param(name string, dims []int64, dist distribution) string {
	r := stream(b.cfg.Seed, name)
	raw := make([]byte, 4*graph.NumElements(dims))
	for i := 0; i < len(raw); i += 4 {
		binary.LittleEndian.PutUint32(raw[i:], math.Float32bits(float32(dist(r))))
	}
	return b.m.AddInitializer(&onnx.TensorProto{Name: name, Dims: dims, DataType: int32(graph.Float), RawData: raw})
}

// sinusoids returns the tensor2tensor timing signal [maxLen, d]: row p is
// sin(p·τ_i) for i < d/2 followed by cos(p·τ_i), with timescales τ_i
// geometric from 1 to 1/10000.
func sinusoids(maxLen, d int) []float32 {
	n := d / 2
	inc := math.Log(10000) / float64(max(n-1, 1))
	out := make([]float32, maxLen*d)
	for p := range maxLen {
		for i := range n {
			a := float64(p) * math.Exp(-float64(i)*inc)
			out[p*d+i] = float32(math.Sin(a))
			out[p*d+n+i] = float32(math.Cos(a))
		}
	}
	return out
}

package testmodels

import (
	"fmt"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// Rescale rewrites a model Build made with ReLU and unfused Q/K/V
// projections into one that computes the same function through the
// constant scalings other exporters write, each compensated in the
// weights:
//
//   - q and k each multiplied by Pow(head size, −¼), the head size read
//     from their runtime shapes (Shape, Gather, Cast), k after its
//     transpose, as PyTorch's scaled-dot-product attention exports them,
//     instead of q by the literal 1/√head size;
//   - V's operand doubled, its kernel and bias halved;
//   - the merged context halved, the output kernel doubled;
//   - the ReLU output times 4, dense2's kernel divided by 4.
//
// Every compensating factor is a power of two, so weights folded back
// recover the original ones bit for bit.
func Rescale(m *graph.Model) error {
	var attns, ffns []string
	for _, n := range m.Graph().Node {
		switch {
		case n.OpType == "Mul" && strings.HasSuffix(n.Name, "/q_scaled"):
			attns = append(attns, strings.TrimSuffix(n.Name, "/q_scaled"))
		case n.OpType == "Relu":
			ffns = append(ffns, strings.TrimSuffix(n.Name, "/relu"))
		}
	}
	if len(attns) == 0 || len(ffns) == 0 {
		return fmt.Errorf("testmodels.Rescale: no attention or ReLU feed-forward block; build with Activation relu")
	}
	scaleWeights := func(name string, k float32) error {
		t := m.Initializer(name)
		if t == nil {
			return fmt.Errorf("testmodels.Rescale: no initializer %s; build with FusedQKV false", name)
		}
		v, err := graph.Floats(t)
		if err != nil {
			return err
		}
		for i := range v {
			v[i] *= k
		}
		return graph.SetFloats(t, v)
	}
	// mul inserts out = x·by between x and its consumers named in uses.
	mul := func(x, by, out string, uses ...*onnx.NodeProto) {
		m.Op("Mul", out, []string{x, by}, []string{out})
		for _, u := range uses {
			for i, in := range u.Input {
				if in == x {
					m.ReplaceInput(u, i, out)
				}
			}
		}
	}
	scalar := func(name string, v float32) string {
		return m.AddInitializer(graph.FloatTensor(m.UniqueName(name), nil, []float32{v}))
	}
	// quarterRoot returns Pow(Cast(Shape(x)[axis]), −¼) as a subgraph.
	quarterRoot := func(scope, x string, axis int64) string {
		shape, dim, f, p := scope+"/shape", scope+"/head_size", scope+"/head_size_float", scope+"/quarter_root"
		m.Op("Shape", shape, []string{x}, []string{shape})
		idx := m.AddInitializer(graph.Int64Tensor(m.UniqueName(scope+"/axis"), nil, []int64{axis}))
		m.Op("Gather", dim, []string{shape, idx}, []string{dim}, graph.AttrInt("axis", 0))
		m.Op("Cast", f, []string{dim}, []string{f}, graph.AttrInt("to", int64(graph.Float)))
		m.Op("Pow", p, []string{f, scalar(scope+"/minus_quarter", -0.25)}, []string{p})
		return p
	}
	for _, s := range attns {
		// q: drop the literal 1/√dh, scale by dh^−¼ instead.
		qs := m.Producer(s + "/q_scaled")
		q := qs.Input[0]
		m.ReplaceInput(qs, 1, quarterRoot(s+"/q", q, -1))
		// k [batch, heads, dh, len] after its transpose: scale by dh^−¼.
		k := s + "/k_transposed"
		uses := m.Consumers(k)
		mul(k, quarterRoot(s+"/k", k, -2), s+"/k_scaled", uses...)
		// V: operand ×2, projection ÷2.
		v := s + "/v_transposed"
		mul(v, scalar(s+"/two", 2), s+"/v_doubled", m.Consumers(v)...)
		if err := scaleWeights(s+"/v/kernel", 0.5); err != nil {
			return err
		}
		if err := scaleWeights(s+"/v/bias", 0.5); err != nil {
			return err
		}
		// Context ×½, output kernel ×2.
		c := s + "/context_merged"
		mul(c, scalar(s+"/half", 0.5), s+"/context_halved", m.Consumers(c)...)
		if err := scaleWeights(s+"/output/kernel", 2); err != nil {
			return err
		}
	}
	for _, f := range ffns {
		r := f + "/relu"
		mul(r, scalar(f+"/four", 4), f+"/relu_times_four", m.Consumers(r)...)
		if err := scaleWeights(f+"/dense2/kernel", 0.25); err != nil {
			return err
		}
	}
	m.RemoveDead()
	return m.TopoSort()
}

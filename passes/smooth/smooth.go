// Package smooth moves the activations' per-channel range into the weights
// before quantization (SmoothQuant, Xiao et al. 2023): for a LayerNorm
// whose output feeds only projections, it divides the LayerNorm's scale
// and bias by s and multiplies the projections' weight rows by s, per
// input channel j,
//
//	s_j = max|X_j|^α / max|W_j|^(1−α),
//
// which leaves the model's function unchanged (LN(x)/s · diag(s)·W =
// LN(x)·W) but flattens the activation channels that a few outliers
// dominate, so a per-tensor activation quantizer of few bits loses less.
// α balances the difficulty between activations (α → 1 moves all of it
// into the weights) and weights.
//
// The pass runs nothing: the caller measures max|X_j| (a driver runs the
// fp32 model over calibration batches) and passes it in.
package smooth

import (
	"fmt"
	"maps"
	"math"
	"slices"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/transformer"
)

// Group is a LayerNorm and the projections that read its output, which
// smoothing scales together.
type Group struct {
	Norm  transformer.LayerNorm
	Projs []transformer.Projection
}

// Report says what Apply did.
type Report struct {
	// Smoothed lists the LayerNorm outputs that were smoothed; Skipped
	// the others with the reason.
	Smoothed []string
	Skipped  []string
}

// Groups returns the LayerNorms of the transformer m whose output only
// projections read, each projection's weight read by no other node, and
// the LayerNorms it must leave alone with the reason (a post-norm
// residual, a weight tied to the embedding table).
func Groups(m *graph.Model) ([]Group, []string, error) {
	tm, err := transformer.Recognize(m, transformer.Options{})
	if err != nil {
		return nil, nil, fmt.Errorf("smoothing: %v", err)
	}
	var norms []*transformer.LayerNorm
	var projs []transformer.Projection
	attn := func(a transformer.Attention) {
		norms = append(norms, a.Norm)
		projs = append(projs, a.Q, a.K, a.V, a.Out)
	}
	ffn := func(f transformer.FFN) {
		norms = append(norms, f.Norm)
		projs = append(projs, f.Dense1, f.Dense2)
	}
	for _, l := range tm.Encoder {
		attn(l.SelfAttn)
		ffn(l.FFN)
	}
	for _, l := range tm.Decoder {
		attn(l.SelfAttn)
		attn(l.CrossAttn)
		ffn(l.FFN)
	}
	norms = append(norms, tm.EncoderNorm, tm.DecoderNorm)
	projs = append(projs, tm.Logits)

	byInput := map[string][]transformer.Projection{}
	for _, p := range projs {
		if p.Node != nil && p.Weight != "" {
			byInput[p.Input] = append(byInput[p.Input], p)
		}
	}
	var groups []Group
	var skipped []string
	seen := map[string]bool{}
	for _, n := range norms {
		if n == nil || seen[n.Output] {
			continue
		}
		seen[n.Output] = true
		g := Group{Norm: *n, Projs: byInput[n.Output]}
		if why := check(m, g); why != "" {
			skipped = append(skipped, n.Output+": "+why)
			continue
		}
		groups = append(groups, g)
	}
	return groups, skipped, nil
}

// check returns why g cannot be smoothed, or "".
func check(m *graph.Model, g Group) string {
	if len(g.Projs) == 0 {
		return "no projection reads it"
	}
	if g.Norm.Scale == "" || g.Norm.Bias == "" || m.Initializer(g.Norm.Scale) == nil || m.Initializer(g.Norm.Bias) == nil {
		return "its scale and bias are not both initializers"
	}
	for _, p := range []string{g.Norm.Scale, g.Norm.Bias} {
		if len(m.Consumers(p)) != 1 {
			return fmt.Sprintf("its parameter %s is read elsewhere too", p)
		}
	}
	nodes := map[*onnx.NodeProto]bool{}
	for _, p := range g.Projs {
		nodes[p.Node] = true
	}
	for _, c := range m.Consumers(g.Norm.Output) {
		if !nodes[c] {
			return fmt.Sprintf("%s (%s) reads it too (a residual of a post-norm layer?)", graph.NodeName(c), c.OpType)
		}
	}
	for _, p := range g.Projs {
		w := m.Initializer(p.Weight)
		if w == nil || len(w.Dims) != 2 || graph.TensorType(w) != graph.Float {
			return fmt.Sprintf("weight %s is not a float matrix initializer", p.Weight)
		}
		if !private(m, p.Weight, nodes, 0) {
			return fmt.Sprintf("weight %s is read outside these projections (tied to the embedding table?)", p.Weight)
		}
	}
	return ""
}

// private reports whether every use of v, seen through views of the
// weight (Transpose, Cast, Identity, Slice), is one of the nodes.
func private(m *graph.Model, v string, nodes map[*onnx.NodeProto]bool, depth int) bool {
	if m.IsGraphOutput(v) || depth > 4 {
		return false
	}
	for _, c := range m.Consumers(v) {
		if nodes[c] {
			continue
		}
		switch c.OpType {
		case "Transpose", "Cast", "Identity", "Slice":
			if c.Input[0] == v && private(m, c.Output[0], nodes, depth+1) {
				continue
			}
		}
		return false
	}
	return true
}

// Apply smooths every group with the per-channel maxima of |x| that
// actMax holds for its LayerNorm's output (length: the hidden size) and
// strength alpha in [0, 1]. A channel that never saw a non-zero value
// keeps s = 1.
func Apply(m *graph.Model, groups []Group, actMax map[string][]float32, alpha float64) (Report, error) {
	var r Report
	if alpha < 0 || alpha > 1 || math.IsNaN(alpha) {
		return r, fmt.Errorf("smoothing strength %v: want 0 ≤ α ≤ 1", alpha)
	}
	type update struct {
		t    *onnx.TensorProto
		vals []float32
	}
	for _, g := range groups {
		a, ok := actMax[g.Norm.Output]
		if !ok {
			return r, fmt.Errorf("smoothing: no activation statistics for %s", g.Norm.Output)
		}
		gamma, err := graph.Floats(m.Initializer(g.Norm.Scale))
		if err != nil {
			return r, fmt.Errorf("smoothing %s: %v", g.Norm.Scale, err)
		}
		beta, err := graph.Floats(m.Initializer(g.Norm.Bias))
		if err != nil {
			return r, fmt.Errorf("smoothing %s: %v", g.Norm.Bias, err)
		}
		d := len(a)
		if len(gamma) != d || len(beta) != d {
			return r, fmt.Errorf("smoothing %s: %d channel statistics for a LayerNorm of %d", g.Norm.Output, d, len(gamma))
		}
		// max |W_j| over all the group's weights, per input channel.
		wmax := make([]float64, d)
		weights := map[string]update{}
		transposed := map[string]bool{}
		for _, p := range g.Projs {
			if _, done := weights[p.Weight]; done {
				continue
			}
			t := m.Initializer(p.Weight)
			in := t.Dims[0]
			if p.Transposed {
				in = t.Dims[1]
			}
			if int(in) != d {
				return r, fmt.Errorf("smoothing %s: weight %s has %d input features, the LayerNorm %d", g.Norm.Output, p.Weight, in, d)
			}
			w, err := graph.Floats(t)
			if err != nil {
				return r, fmt.Errorf("smoothing %s: %v", p.Weight, err)
			}
			w = slices.Clone(w)
			weights[p.Weight], transposed[p.Weight] = update{t, w}, p.Transposed
			for i, x := range w {
				j := channel(i, t.Dims, p.Transposed)
				wmax[j] = max(wmax[j], math.Abs(float64(x)))
			}
		}
		s := make([]float64, d)
		for j := range s {
			s[j] = 1
			if a[j] > 0 && wmax[j] > 0 {
				s[j] = math.Pow(float64(a[j]), alpha) / math.Pow(wmax[j], 1-alpha)
				s[j] = min(max(s[j], 1e-5), 1e5)
			}
		}
		ups := []update{{m.Initializer(g.Norm.Scale), slices.Clone(gamma)}, {m.Initializer(g.Norm.Bias), slices.Clone(beta)}}
		for j := range d {
			ups[0].vals[j] = float32(float64(gamma[j]) / s[j])
			ups[1].vals[j] = float32(float64(beta[j]) / s[j])
		}
		for _, name := range slices.Sorted(maps.Keys(weights)) {
			u := weights[name]
			for i := range u.vals {
				u.vals[i] = float32(float64(u.vals[i]) * s[channel(i, u.t.Dims, transposed[name])])
			}
			ups = append(ups, u)
		}
		for _, u := range ups {
			if err := graph.SetFloats(u.t, u.vals); err != nil {
				return r, err
			}
		}
		r.Smoothed = append(r.Smoothed, g.Norm.Output)
	}
	return r, nil
}

// channel returns the input channel of flat index i of a weight stored
// [in, out], or [out, in] when transposed.
func channel(i int, dims []int64, transposed bool) int {
	if transposed {
		return i % int(dims[1])
	}
	return i / int(dims[1])
}

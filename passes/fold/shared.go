package fold

import (
	"fmt"
	"strings"

	"encoding/json"
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// fuseShared gives the MatMulIntegerToFloat nodes that read one quantized
// activation (an attention's Q, K and V projections) one kernel: their
// int8 weights side by side, each one's scale repeated over its columns
// (a per-column scale) and their biases concatenated, then a Split back
// into the former outputs. Every output column is computed as before,
// the same integer sum times the same scale product plus the same bias;
// one larger product replaces several small ones.
func fuseShared(m *graph.Model) {
	type key struct{ a, scale, zp string }
	groups := map[key][]*onnx.NodeProto{}
	var order []key
	for _, n := range m.Graph().Node {
		if n.OpType != "MatMulIntegerToFloat" || !fusible(m, n) {
			continue
		}
		k := key{n.Input[0], n.Input[2], input(n, 4)}
		if groups[k] == nil {
			order = append(order, k)
		}
		groups[k] = append(groups[k], n)
	}
	for _, k := range order {
		g := groups[k]
		if len(g) < 2 {
			continue
		}
		// One weight type, one input width, one weight zero point.
		w0 := m.Initializer(g[0].Input[1])
		z0 := zeroPoint(m, input(g[0], 5))
		var same []*onnx.NodeProto
		for _, n := range g {
			w := m.Initializer(n.Input[1])
			if w.DataType == w0.DataType && w.Dims[0] == w0.Dims[0] && zeroPoint(m, input(n, 5)) == z0 {
				same = append(same, n)
			}
		}
		if len(same) >= 2 {
			fuseGroup(m, same)
		}
	}
}

// FusedKey is the metadata key listing, for each weight qoperator stored
// side by side with others (fuseShared), the integer weights it holds:
// JSON {fused initializer: [FusedPart, ...]}, in column order.
const FusedKey = "qatc.fused_weights"

// A FusedPart is one integer weight inside a fused one: Columns columns
// of it, after those of the parts before.
type FusedPart struct {
	Weight  string `json:"weight"`
	Columns int64  `json:"columns"`
}

// recordFused adds fused's parts to m's FusedKey entry.
func recordFused(m *graph.Model, fused string, parts []FusedPart) {
	all := map[string][]FusedPart{}
	if v, ok := m.Metadata(FusedKey); ok {
		json.Unmarshal([]byte(v), &all)
	}
	all[fused] = parts
	b, _ := json.Marshal(all)
	m.SetMetadata(FusedKey, string(b))
}

// FusedWeights returns m's FusedKey entry (nil when it has none).
func FusedWeights(m *graph.Model) (map[string][]FusedPart, error) {
	v, ok := m.Metadata(FusedKey)
	if !ok {
		return nil, nil
	}
	all := map[string][]FusedPart{}
	if err := json.Unmarshal([]byte(v), &all); err != nil {
		return nil, fmt.Errorf("metadata %s: %v", FusedKey, err)
	}
	return all, nil
}

// zeroPoint describes a weight zero point for grouping: "" for none,
// "type:0" for zeros (symmetric weights, per tensor or per channel), else
// its own name.
func zeroPoint(m *graph.Model, name string) string {
	t := m.Initializer(name)
	if name == "" || t == nil {
		return ""
	}
	v, err := graph.Int64s(t)
	if err != nil {
		return name
	}
	for _, x := range v {
		if x != 0 {
			return name
		}
	}
	return fmt.Sprintf("%d:0", t.DataType)
}

// input returns n's input i, or "" when it has none.
func input(n *onnx.NodeProto, i int) string {
	if i < len(n.Input) {
		return n.Input[i]
	}
	return ""
}

// fusible reports whether n reads a stored 2-D weight with a per-tensor
// or per-column scale, zero weight zero points (or none) and a 1-D bias
// (or none).
func fusible(m *graph.Model, n *onnx.NodeProto) bool {
	w := m.Initializer(n.Input[1])
	if w == nil || len(w.Dims) != 2 || len(w.RawData) == 0 {
		return false
	}
	s := m.Initializer(n.Input[3])
	if s == nil || graph.TensorType(s) != graph.Float || !(graph.NumElements(s.Dims) == 1 || len(s.Dims) == 1 && s.Dims[0] == w.Dims[1]) {
		return false
	}
	if zp := input(n, 5); zp != "" && !strings.HasSuffix(zeroPoint(m, zp), ":0") {
		return false
	}
	if b := input(n, 6); b != "" {
		if t := m.Initializer(b); t == nil || len(t.Dims) != 1 || t.Dims[0] != w.Dims[1] || graph.TensorType(t) != graph.Float {
			return false
		}
	}
	return len(n.Input) <= 7
}

// fuseGroup replaces the nodes ns (fusible, one activation, one weight
// type) by one product and a Split.
func fuseGroup(m *graph.Model, ns []*onnx.NodeProto) {
	k := int(m.Initializer(ns[0].Input[1]).Dims[0])
	var widths []int64
	var scales, biases []float32
	total := 0
	hasBias := false
	for _, n := range ns {
		w := m.Initializer(n.Input[1])
		cols := int(w.Dims[1])
		widths = append(widths, int64(cols))
		total += cols
		s, _ := graph.Floats(m.Initializer(n.Input[3]))
		for j := range cols {
			scales = append(scales, s[min(j, len(s)-1)])
		}
		b := make([]float32, cols)
		if name := input(n, 6); name != "" {
			b, _ = graph.Floats(m.Initializer(name))
			hasBias = true
		}
		biases = append(biases, b...)
	}
	// The weights side by side: row i is every weight's row i.
	data := make([]byte, 0, k*total)
	for i := range k {
		for _, n := range ns {
			w := m.Initializer(n.Input[1])
			cols := int(w.Dims[1])
			data = append(data, w.RawData[i*cols:(i+1)*cols]...)
		}
	}
	first := ns[0]
	base := first.Output[0]
	w := m.AddInitializer(&onnx.TensorProto{Name: m.UniqueName(base + "_fused_weight"), Dims: []int64{int64(k), int64(total)},
		DataType: m.Initializer(first.Input[1]).DataType, RawData: data})
	var parts []FusedPart
	for i, n := range ns {
		parts = append(parts, FusedPart{Weight: n.Input[1], Columns: widths[i]})
	}
	recordFused(m, w, parts)
	s := m.AddInitializer(graph.FloatTensor(m.UniqueName(base+"_fused_scale"), []int64{int64(total)}, scales))
	zp := ""
	if z := input(first, 5); z != "" {
		t := m.Initializer(z)
		zp = m.AddInitializer(&onnx.TensorProto{Name: m.UniqueName(base + "_fused_zero_point"), DataType: t.DataType, RawData: []byte{0}})
	}
	ins := []string{first.Input[0], w, first.Input[2], s, input(first, 4), zp}
	if hasBias {
		ins = append(ins, m.AddInitializer(graph.FloatTensor(m.UniqueName(base+"_fused_bias"), []int64{int64(total)}, biases)))
	}
	for len(ins) > 4 && ins[len(ins)-1] == "" {
		ins = ins[:len(ins)-1]
	}
	var outs []string
	for _, n := range ns {
		outs = append(outs, n.Output[0])
	}
	m.RemoveNodes(ns...)
	y := m.UniqueName(base + "_fused")
	mm := m.Op("MatMulIntegerToFloat", m.UniqueName(base+"/fused/MatMulIntegerToFloat"), ins, []string{y})
	mm.Domain = msDomain
	if m.Opset("") < 13 {
		m.Op("Split", m.UniqueName(base+"/fused/Split"), []string{y}, outs, graph.AttrInt("axis", -1), graph.AttrInts("split", widths...))
		return
	}
	sizes := m.AddInitializer(graph.Int64Tensor(m.UniqueName(base+"_fused_split"), []int64{int64(len(widths))}, widths))
	m.Op("Split", m.UniqueName(base+"/fused/Split"), []string{y, sizes}, outs, graph.AttrInt("axis", -1))
}

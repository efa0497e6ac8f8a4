package quantize

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// Find returns the quantizers of m found from the graph's structure, in
// graph order: every DequantizeLinear fed by a QuantizeLinear (through a
// Clip below 8 bits) whose scale is Max(clip, tiny)/qmax of a clip tensor
// (an initializer, or a graph input in a training graph), or a constant
// (softmax). When m has a qatc.quantization record, the two must agree;
// its kinds are then authoritative. A clip tensor that is missing is an
// error naming it.
func Find(m *graph.Model) ([]Quantizer, error) {
	rec, err := ReadRecord(m)
	if err != nil && !errors.Is(err, ErrNoRecord) {
		return nil, err
	}
	var qs []Quantizer
	for _, dq := range m.Graph().Node {
		if dq.OpType != "DequantizeLinear" || len(dq.Input) < 2 {
			continue
		}
		q, ok, err := findOne(m, dq)
		if err != nil {
			return nil, err
		}
		if ok {
			qs = append(qs, q)
		}
	}
	if rec == nil {
		return qs, nil
	}
	return qs, checkAgainst(qs, rec)
}

// findOne reads the quantizer ending in dq; ok is false for a DQ that is
// not a fake quantizer (an exported int8 initializer, say).
func findOne(m *graph.Model, dq *onnx.NodeProto) (Quantizer, bool, error) {
	var q Quantizer
	p := m.Producer(dq.Input[0])
	var clipNode *onnx.NodeProto
	if p != nil && p.OpType == "Clip" {
		clipNode = p
		p = m.Producer(p.Input[0])
	}
	if p == nil || p.OpType != "QuantizeLinear" || len(p.Input) < 2 {
		return q, false, nil
	}
	q.Tensor = p.Input[0]
	q.Quantize, q.Dequantize, q.Output = p.Name, dq.Name, dq.Output[0]
	view := FindBlockView(m, p, dq)
	if view != nil {
		q.Tensor, q.Output = view.Weight, view.Out.Output[0]
	}
	where := fmt.Sprintf("quantizer on %s (node %s)", q.Tensor, graph.NodeName(dq))
	if dq.Input[1] != p.Input[1] {
		return q, false, fmt.Errorf("%s: QuantizeLinear and DequantizeLinear use different scales (%s, %s): the graph was edited by hand; re-run insert on the fp32 model", where, p.Input[1], dq.Input[1])
	}
	signed := false
	if len(p.Input) > 2 && p.Input[2] != "" {
		zp := m.Initializer(p.Input[2])
		if zp == nil {
			return q, false, fmt.Errorf("%s: zero point %s is not an initializer", where, p.Input[2])
		}
		signed = graph.TensorType(zp) == graph.Int8
	}
	scale := p.Input[1]
	// The scale of a tied transposed copy is its twin's, transposed; a
	// blocked view reshapes it.
	sp := m.Producer(scale)
	for sp != nil && (sp.OpType == "Transpose" || sp.OpType == "Reshape") {
		sp = m.Producer(sp.Input[0])
	}
	var qmax float64
	switch {
	case sp == nil:
		t := m.Initializer(scale)
		if t == nil {
			return q, false, fmt.Errorf("%s: scale %s is neither computed from a clip nor an initializer", where, scale)
		}
		v, err := graph.Floats(t)
		if err != nil || len(v) != 1 || !(v[0] > 0) {
			return q, false, fmt.Errorf("%s: fixed scale %s is not one positive float", where, scale)
		}
		q.Kind = KindSoftmax
		q.Bits = int(math.Round(-math.Log2(float64(v[0]))))
	case sp.OpType == "Div":
		kv, ok := m.ConstFloats(sp.Input[1])
		if !ok || len(kv) != 1 {
			return q, false, fmt.Errorf("%s: scale divisor %s is not a constant qmax", where, sp.Input[1])
		}
		qmax = float64(kv[0])
		q.Clip = sp.Input[0]
		if mp := m.Producer(q.Clip); mp != nil && mp.OpType == "Max" {
			q.Clip = mp.Input[0]
		}
		if m.Initializer(q.Clip) == nil && m.Input(q.Clip) == nil && m.Producer(q.Clip) == nil {
			return q, false, fmt.Errorf("%s: its clip tensor %s is missing (no initializer, input or node makes it): restore it or re-run insert on the fp32 model", where, q.Clip)
		}
		if signed {
			q.Bits = int(math.Round(math.Log2(qmax+1))) + 1
		} else {
			q.Bits = int(math.Round(math.Log2(qmax + 1)))
		}
		switch {
		case !signed:
			q.Kind = KindReLU
		case m.Initializer(q.Tensor) != nil:
			q.Kind = KindWeight
		default:
			q.Kind = KindAct
		}
	default:
		return q, false, fmt.Errorf("%s: scale %s is made by %s, not Max(clip, tiny)/qmax", where, scale, sp.OpType)
	}
	if clipNode != nil && len(clipNode.Input) == 3 {
		lo, _ := m.ConstInts(clipNode.Input[1])
		hi, _ := m.ConstInts(clipNode.Input[2])
		if len(lo) == 1 && len(hi) == 1 && q.Kind == KindSoftmax {
			q.Bits = int(math.Round(math.Log2(float64(hi[0] + 1))))
		}
	}
	switch {
	case view != nil:
		q.Axis, q.BlockSize = &view.Axis, view.Block
	case !isScalarValue(m, scale):
		ax := int(graph.IntAttr(dq, "axis", 1))
		if t := m.Initializer(q.Tensor); t != nil && ax < 0 {
			ax += len(t.Dims)
		}
		q.Axis = &ax
		q.BlockSize = int(graph.IntAttr(dq, "block_size", 0))
	}
	for _, c := range m.Consumers(q.Output) {
		q.Consumers = append(q.Consumers, graph.NodeName(c))
	}
	return q, true, nil
}

// isScalarValue reports whether the scale is a scalar: a scalar initializer
// or computed from a scalar clip.
func isScalarValue(m *graph.Model, scale string) bool {
	for {
		if t := m.Initializer(scale); t != nil {
			return graph.NumElements(t.Dims) == 1
		}
		if in := m.Input(scale); in != nil {
			tt := in.GetType().GetTensorType()
			return tt != nil && tt.Shape != nil && len(tt.Shape.Dim) == 0
		}
		p := m.Producer(scale)
		if p == nil || len(p.Input) == 0 {
			return true
		}
		scale = p.Input[0]
	}
}

// checkAgainst checks that the graph's quantizers are the record's, and
// takes the record's kinds (a weight and an activation look alike once a
// training graph turns weights into inputs).
func checkAgainst(qs []Quantizer, rec *Record) error {
	found := map[string]*Quantizer{}
	for i := range qs {
		found[qs[i].Tensor] = &qs[i]
	}
	var missing []string
	for _, r := range rec.Quantizers {
		q := found[r.Tensor]
		if q == nil {
			missing = append(missing, r.Tensor)
			continue
		}
		if r.Kind == KindWeight && q.Kind == KindAct {
			q.Kind = KindWeight
		}
		if q.Kind != r.Kind || q.Bits != r.Bits || q.Clip != r.Clip {
			return fmt.Errorf("quantizer on %s: the graph has kind %s, %d bits, clip %q but the %s record says kind %s, %d bits, clip %q: the graph was edited; re-run insert on the fp32 model", r.Tensor, q.Kind, q.Bits, q.Clip, MetadataKey, r.Kind, r.Bits, r.Clip)
		}
		q.TiedTo, q.Transposed = r.TiedTo, r.Transposed
		delete(found, r.Tensor)
	}
	if len(missing) > 0 {
		return fmt.Errorf("the %s record lists %d quantizers the graph does not have (%s): the graph was edited; re-run insert on the fp32 model", MetadataKey, len(missing), strings.Join(first(missing, 3), ", "))
	}
	if len(found) > 0 {
		var extra []string
		for t := range found {
			extra = append(extra, t)
		}
		sort.Strings(extra)
		return fmt.Errorf("the graph has %d quantizers the %s record does not list (%s): re-run insert on the fp32 model", len(extra), MetadataKey, strings.Join(first(extra, 3), ", "))
	}
	return nil
}

func first(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], "…")
	}
	return s
}

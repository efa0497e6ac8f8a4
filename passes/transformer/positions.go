package transformer

import (
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// Positions returns how many tokens the model can read through its ids
// input (a graph input of token ids): the rows of the stored position
// table that the input's embedding adds, less the row the positions start
// at. It returns 0 when the positions are computed (sinusoids) or not
// found, and the caller then knows no limit. Data readers check sentence
// lengths against it, so that a sentence too long for the model is named
// by file and line instead of failing inside onnxruntime.
//
// It needs only the graph and small tensors, so it works on a model read
// with graph.LoadStructure.
func Positions(m *graph.Model, ids string) int {
	w := &walker{m: m}
	for _, c := range idsConsumers(m, ids) {
		if c.OpType != "Gather" || graph.IntAttr(c, "axis", 0) != 0 || len(c.Input) < 2 {
			continue
		}
		if t := m.Initializer(w.skipQ(c.Input[0])); t == nil || len(t.Dims) != 2 {
			continue
		}
		// Through the scaling of the looked-up rows to the Add of the
		// positions.
		x := c.Output[0]
		for range 8 {
			cs := m.Consumers(x)
			if len(cs) != 1 || len(cs[0].Output) == 0 {
				break
			}
			n := cs[0]
			if n.OpType == "Add" && len(n.Input) == 2 {
				other := n.Input[0]
				if other == x {
					other = n.Input[1]
				}
				if p := w.positionRows(other); p > 0 {
					return p
				}
				break
			}
			if n.OpType != "Mul" && n.OpType != "Div" && n.OpType != "Cast" {
				break
			}
			x = n.Output[0]
		}
	}
	return 0
}

// idsConsumers returns the nodes reading ids, seen through Casts.
func idsConsumers(m *graph.Model, ids string) []*onnx.NodeProto {
	var out []*onnx.NodeProto
	for _, c := range m.Consumers(ids) {
		if c.OpType == "Cast" && len(c.Output) > 0 {
			out = append(out, idsConsumers(m, c.Output[0])...)
			continue
		}
		out = append(out, c)
	}
	return out
}

// positionRows follows v back through slices, lookups and views to a
// stored table [P, hidden] (or [1, P, hidden]) and returns how many rows
// are left from where the slice starts; 0 when v is not such a table's
// rows.
func (w *walker) positionRows(v string) int {
	var start int64
	for range 16 {
		v = w.skipQ(v)
		if t := w.m.Initializer(v); t != nil {
			rows := int64(-1)
			switch {
			case len(t.Dims) == 2:
				rows = t.Dims[0]
			case len(t.Dims) == 3 && t.Dims[0] == 1:
				rows = t.Dims[1]
			}
			if rows > start {
				return int(rows - start)
			}
			return 0
		}
		p := w.m.Producer(v)
		if p == nil || len(p.Input) == 0 {
			return 0
		}
		switch p.OpType {
		case "Slice":
			// The end is the sequence length; a constant start skips rows
			// (fairseq's positions start after the padding id).
			if len(p.Input) >= 2 {
				if s, ok := w.m.ConstInts(p.Input[1]); ok && len(s) == 1 && s[0] > 0 {
					start += s[0]
				}
			}
		case "Gather", "Unsqueeze", "Reshape", "Identity", "Cast", "Expand", "Squeeze":
		default:
			return 0
		}
		v = p.Input[0]
	}
	return 0
}

package train

import (
	"fmt"

	"github.com/qatc/qatc/onnx"
	"google.golang.org/protobuf/proto"

	"github.com/qatc/qatc/graph"
)

// cloneModel returns a deep copy of m.
func cloneModel(m *graph.Model) *graph.Model {
	return graph.FromProto(proto.Clone(m.Proto).(*onnx.ModelProto), m.Dir)
}

// StripQuantizers returns a copy of m with every QuantizeLinear →
// DequantizeLinear pair removed: the pair's consumers read the quantizer's
// input again, and the nodes and initializers only the quantizers used
// (scale computations, clip ranges, zero points) are deleted. Applied to a
// QAT graph it gives the fp32 model the quantizers were inserted into, the
// teacher of distillation. A Clip on the integer tensor between the two
// nodes (quantizers below 8 bits) is skipped too.
func StripQuantizers(m *graph.Model) (*graph.Model, error) {
	c := cloneModel(m)
	var dqs []*onnx.NodeProto
	for _, n := range c.Graph().Node {
		if n.OpType == "DequantizeLinear" && n.Domain == "" {
			dqs = append(dqs, n)
		}
	}
	removed := 0
	for _, dq := range dqs {
		if len(dq.Input) == 0 || len(dq.Output) == 0 {
			continue
		}
		src := c.Producer(dq.Input[0])
		if src != nil && src.OpType == "Clip" && len(src.Input) > 0 {
			src = c.Producer(src.Input[0])
		}
		if src == nil || src.OpType != "QuantizeLinear" || len(src.Input) == 0 {
			continue
		}
		x, y := src.Input[0], dq.Output[0]
		if c.IsGraphOutput(y) {
			// The output keeps its name: an Identity now writes it.
			c.Op("Identity", c.UniqueName(y+"/unquantized"), []string{x}, []string{y})
			dq.Output[0] = c.UniqueName(y + "/dead")
			c.Reindex()
		} else {
			c.ReplaceUses(y, x)
		}
		removed++
	}
	if removed == 0 {
		return c, nil
	}
	c.RemoveDead()
	if err := c.TopoSort(); err != nil {
		return nil, fmt.Errorf("removing quantizers: %v", err)
	}
	return c, nil
}

// withParamsAsInputs returns a copy of m in which the named float
// initializers are graph inputs of the same name and shape, so that a
// session over it reads the training loop's parameter buffers; the copies
// tied to a parameter are computed from it, as in the training graph.
func withParamsAsInputs(m *graph.Model, names []string, tied map[string][]tiedCopy) (*graph.Model, error) {
	c := cloneModel(m)
	for param, copies := range tied {
		for _, tc := range copies {
			if c.Initializer(tc.Name) == nil {
				return nil, fmt.Errorf("model has no initializer %q tied to %q", tc.Name, param)
			}
			c.RemoveInitializer(tc.Name)
			if tc.Transpose {
				c.Op("Transpose", "", []string{param}, []string{tc.Name}, graph.AttrInts("perm", 1, 0))
			} else {
				c.Op("Identity", "", []string{param}, []string{tc.Name})
			}
		}
	}
	for _, name := range names {
		t := c.Initializer(name)
		if t == nil {
			return nil, fmt.Errorf("model has no initializer %q to train", name)
		}
		dims := append([]int64(nil), t.Dims...)
		c.RemoveInitializer(name)
		c.AddInput(name, graph.Float, dims)
	}
	if err := c.TopoSort(); err != nil {
		return nil, err
	}
	return c, nil
}

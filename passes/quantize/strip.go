package quantize

import (
	"fmt"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"google.golang.org/protobuf/proto"
)

// Strip returns a copy of m with every QuantizeLinear →
// DequantizeLinear pair removed: the pair's consumers read the quantizer's
// input again, and the nodes and initializers only the quantizers used
// (scale computations, clip ranges, zero points) are deleted. Applied to a
// QAT graph it gives the fp32 model the quantizers were inserted into, the
// teacher of distillation. A Clip on the integer tensor between the two
// nodes (quantizers below 8 bits) is skipped too, and so are the Reshapes
// of a blocked weight's view (see BlockView).
func Strip(m *graph.Model) (*graph.Model, error) { return strip(m, true) }

// StripActivations is Strip for the quantizers of activations only: the
// weights (initializers) stay fake-quantized.
func StripActivations(m *graph.Model) (*graph.Model, error) { return strip(m, false) }

func strip(m *graph.Model, weights bool) (*graph.Model, error) {
	c := graph.FromProto(proto.Clone(m.Proto).(*onnx.ModelProto), m.Dir)
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
		if v := FindBlockView(c, src, dq); v != nil {
			x, y = v.Weight, v.Out.Output[0]
		}
		if !weights && c.Initializer(x) != nil {
			continue
		}
		if c.IsGraphOutput(y) {
			// The output keeps its name: an Identity now writes it.
			last := c.Producer(y)
			last.Output[0] = c.UniqueName(y + "/dead")
			c.Reindex()
			c.Op("Identity", c.UniqueName(y+"/unquantized"), []string{x}, []string{y})
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

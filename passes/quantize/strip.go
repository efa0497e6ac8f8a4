package quantize

import (
	"fmt"

	"github.com/qatc/qatc/graph"
)

// Strip returns a copy of m (its tensors' bytes shared with m's, see
// graph.Model.CloneShared) with every QuantizeLinear →
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
	c := m.CloneShared()
	var units []*Unit
	for _, n := range c.Graph().Node {
		// The structure is enough to strip a quantizer, whatever its
		// integers.
		if u, _ := Match(c, n); u != nil {
			units = append(units, u)
		}
	}
	removed := 0
	for _, u := range units {
		x, y := u.Tensor, u.Output
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

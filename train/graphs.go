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

// withParamsAsInputs returns a copy of m in which the named float
// initializers are graph inputs of the same name and shape, so that a
// session over it reads the training loop's parameter buffers; the copies
// tied to a parameter are computed from it, as in the training graph.
func withParamsAsInputs(m *graph.Model, names []string, tied map[string][]tiedCopy) (*graph.Model, error) {
	c := m.CloneShared()
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

package graph

import (
	"github.com/qatc/qatc/onnx"
	"google.golang.org/protobuf/proto"
)

// CloneShared returns a deep copy of m whose initializers share their raw
// data bytes with m's. A copy for a rewrite (a training graph, a
// teacher, an export) then costs the graph's structure, not its weights
// (837 MB for transformer-big). Passes replace tensors rather than
// writing their bytes in place; a caller that writes a tensor's raw data
// in place (SetFloats, a training loop over an initializer's memory)
// writes it in both models.
func (m *Model) CloneShared() *Model {
	inits := m.Proto.GetGraph().GetInitializer()
	raw := make([][]byte, len(inits))
	for i, t := range inits {
		raw[i], t.RawData = t.RawData, nil
	}
	c := proto.Clone(m.Proto).(*onnx.ModelProto)
	for i, t := range inits {
		t.RawData = raw[i]
		c.Graph.Initializer[i].RawData = raw[i]
	}
	clone := FromProto(c, m.Dir)
	clone.External = m.External
	return clone
}

package graph

import (
	"testing"

	"google.golang.org/protobuf/proto"
)

// TestCloneShared checks that a shared clone equals the model, shares the
// initializers' bytes and nothing else: renaming a node or removing an
// initializer in the clone leaves the model as it was.
func TestCloneShared(t *testing.T) {
	m := New("g", 17)
	m.AddInput("x", Float, []int64{2})
	m.AddInitializer(FloatTensor("w", []int64{2}, []float32{1, 2}))
	m.Op("Add", "add", []string{"x", "w"}, []string{"y"})
	m.AddOutput("y", Float, []int64{2})
	before := proto.Clone(m.Proto)

	c := m.CloneShared()
	if !proto.Equal(c.Proto, m.Proto) || !proto.Equal(m.Proto, before) {
		t.Fatal("the clone differs from the model, or the model changed")
	}
	if &c.Initializer("w").RawData[0] != &m.Initializer("w").RawData[0] {
		t.Error("the clone's initializer has its own bytes")
	}
	c.Graph().Node[0].Name = "renamed"
	c.RemoveInitializer("w")
	if !proto.Equal(m.Proto, before) {
		t.Error("changing the clone's structure changed the model")
	}
}

package graph

import (
	"strings"
	"testing"

	"github.com/qatc/qatc/onnx"
)

func TestValidate(t *testing.T) {
	base := func() *Model {
		m := New("v", 17)
		m.AddInput("x", Float, []int64{2, 3})
		return m
	}
	tests := []struct {
		name  string
		build func() *Model
		want  []string // each must appear in one problem, in order
	}{
		{"valid", func() *Model {
			m := base()
			m.Op("Relu", "relu", []string{"x"}, []string{"y"})
			m.AddOutput("y", Float, []int64{2, 3})
			return m
		}, nil},
		{"dangling", func() *Model {
			m := base()
			m.Op("Add", "add", []string{"x", "nowhere"}, []string{"y"})
			m.AddOutput("y", Float, nil)
			return m
		}, []string{`dangling input: node add reads "nowhere", which no node, initializer or graph input defines`}},
		{"duplicate-producer", func() *Model {
			m := base()
			m.Op("Relu", "a", []string{"x"}, []string{"y"})
			m.Op("Neg", "b", []string{"x"}, []string{"y"})
			m.AddOutput("y", Float, nil)
			return m
		}, []string{`duplicate producer: value "y" is written by node a and node b`}},
		{"writes-input", func() *Model {
			m := base()
			m.AddInitializer(FloatTensor("w", []int64{1}, []float32{1}))
			m.Op("Relu", "a", []string{"x"}, []string{"w"})
			m.AddOutput("w", Float, nil)
			return m
		}, []string{`duplicate producer: node a writes "w", which is also an initializer`}},
		{"cycle", func() *Model {
			m := base()
			m.Op("Relu", "pre", []string{"x"}, []string{"p"})
			m.Op("Add", "a", []string{"p", "c"}, []string{"b"})
			m.Op("Relu", "b", []string{"b"}, []string{"c"})
			m.AddOutput("c", Float, nil)
			return m
		}, []string{`graph has a cycle through node `}},
		{"self-loop", func() *Model {
			m := base()
			m.Op("Add", "loop", []string{"x", "y"}, []string{"y"})
			m.AddOutput("y", Float, nil)
			return m
		}, []string{`graph has a cycle through node loop`}},
		{"missing-opset", func() *Model {
			m := base()
			m.AddNode(&onnx.NodeProto{Name: "gelu", OpType: "Gelu", Domain: "com.microsoft", Input: []string{"x"}, Output: []string{"y"}})
			m.AddOutput("y", Float, nil)
			return m
		}, []string{`node gelu (Gelu) uses domain com.microsoft, which the model's opset_import does not list`}},
		{"missing-default-opset", func() *Model {
			m := base()
			m.Proto.OpsetImport = nil
			m.Op("Relu", "relu", []string{"x"}, []string{"y"})
			m.AddOutput("y", Float, nil)
			return m
		}, []string{`node relu (Relu) uses domain ai.onnx (default)`}},
		{"output-never-produced", func() *Model {
			m := base()
			m.Op("Relu", "relu", []string{"x"}, []string{"y"})
			m.AddOutput("y", Float, nil)
			m.AddOutput("z", Float, nil)
			return m
		}, []string{`graph output "z" is never produced`}},
		{"out-of-order", func() *Model {
			m := base()
			m.Op("Neg", "second", []string{"r"}, []string{"y"})
			m.Op("Relu", "first", []string{"x"}, []string{"r"})
			m.AddOutput("y", Float, nil)
			return m
		}, []string{`nodes out of topological order: node second reads "r" before node first writes it; call TopoSort`}},
		{"several", func() *Model {
			m := base()
			m.Op("Add", "add", []string{"x", "nowhere"}, []string{"y"})
			m.AddOutput("z", Float, nil)
			return m
		}, []string{`dangling input: node add reads "nowhere"`, `graph output "z" is never produced`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.build()
			ps := m.Problems()
			if len(ps) != len(tt.want) {
				t.Fatalf("problems %v, want %d", ps, len(tt.want))
			}
			for i, p := range ps {
				if !strings.Contains(p.Error(), tt.want[i]) || strings.Contains(p.Error(), "\n") {
					t.Errorf("problem %q, want %q", p, tt.want[i])
				}
			}
			err := m.Validate()
			switch {
			case len(tt.want) == 0 && err != nil:
				t.Fatalf("Validate: %v", err)
			case len(tt.want) > 0 && (err == nil || !strings.Contains(err.Error(), tt.want[0])):
				t.Fatalf("Validate: %v, want %q", err, tt.want[0])
			case len(tt.want) > 1 && !strings.HasSuffix(err.Error(), "(and 1 more problems)"):
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

func TestValidateTopoSortFixesOrder(t *testing.T) {
	m := New("v", 17)
	m.AddInput("x", Float, []int64{2})
	m.Op("Neg", "c", []string{"b"}, []string{"y"})
	m.Op("Neg", "b", []string{"a"}, []string{"b"})
	m.Op("Neg", "a", []string{"x"}, []string{"a"})
	m.AddOutput("y", Float, nil)
	if m.Validate() == nil {
		t.Fatal("unordered graph validated")
	}
	if err := m.TopoSort(); err != nil {
		t.Fatal(err)
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, n := range m.Proto.Graph.Node {
		order = append(order, n.Name)
	}
	if strings.Join(order, ",") != "a,b,c" {
		t.Fatalf("order %v", order)
	}
}

func TestValidateTorch(t *testing.T) {
	for _, path := range torchModelPaths(t) {
		m, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Validate(); err != nil {
			t.Errorf("%s: %v", path, err)
		}
	}
}

func TestTopoSortRepeatedInputsAndSubgraphs(t *testing.T) {
	m := New("t", 17)
	m.AddInput("x", Float, []int64{2})
	m.AddInput("cond", Bool, nil)
	// "add" reads "sq" twice and "late" once: it must wait for both.
	m.Op("Add", "add", []string{"sq", "sq", "late"}, []string{"y"})
	m.Op("Mul", "sq", []string{"x", "x"}, []string{"sq"})
	// "if" reads "y" only inside its branch.
	branch := &onnx.GraphProto{Name: "then", Node: []*onnx.NodeProto{{OpType: "Identity", Input: []string{"y"}, Output: []string{"yy"}}},
		Output: []*onnx.ValueInfoProto{ValueInfo("yy", Float, nil)}}
	m.AddNode(&onnx.NodeProto{Name: "if", OpType: "If", Input: []string{"cond"}, Output: []string{"z"},
		Attribute: []*onnx.AttributeProto{{Name: "then_branch", Type: onnx.AttributeProto_GRAPH, G: branch},
			{Name: "else_branch", Type: onnx.AttributeProto_GRAPH, G: branch}}})
	m.Op("Neg", "late", []string{"x"}, []string{"late"})
	m.AddOutput("z", Float, nil)
	if err := m.TopoSort(); err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, n := range m.Proto.Graph.Node {
		order = append(order, n.Name)
	}
	if got := strings.Join(order, ","); got != "sq,late,add,if" {
		t.Fatalf("order %s, want sq,late,add,if", got)
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
}

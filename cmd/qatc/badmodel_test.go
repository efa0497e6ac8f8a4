package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/onnx"
	"google.golang.org/protobuf/proto"
)

// Broken models: external data missing or outside the model's directory,
// a graph with a cycle. Each is one line on stderr and exit 1.
func TestBrokenModels(t *testing.T) {
	dir := t.TempDir()
	m, err := graph.Load(fixture.Torch(t, fixture.Transformer17))
	if err != nil {
		t.Fatal(err)
	}
	ext := filepath.Join(dir, "ext.onnx")
	if err := m.SaveWith(ext, &graph.SaveOptions{ExternalData: true}); err != nil {
		t.Fatal(err)
	}
	// The same model without its data file.
	missingDir := filepath.Join(dir, "missing")
	if err := os.Mkdir(missingDir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(ext)
	if err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(missingDir, "ext.onnx")
	if err := os.WriteFile(missing, data, 0o644); err != nil {
		t.Fatal(err)
	}
	// The same model pointing its data at ../ext.onnx.data.
	escape := filepath.Join(missingDir, "escape.onnx")
	p := &onnx.ModelProto{}
	if err := proto.Unmarshal(data, p); err != nil {
		t.Fatal(err)
	}
	for _, init := range p.Graph.Initializer {
		for _, kv := range init.ExternalData {
			if kv.Key == "location" {
				kv.Value = "../ext.onnx.data"
			}
		}
	}
	b, err := proto.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(escape, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// A two-node cycle.
	cyc := graph.New("cycle", 17)
	cyc.AddInput("x", graph.Float, []int64{2})
	cyc.Op("Add", "a", []string{"x", "b_out"}, []string{"a_out"})
	cyc.Op("Relu", "b", []string{"a_out"}, []string{"b_out"})
	cyc.AddOutput("b_out", graph.Float, []int64{2})
	cycle := filepath.Join(dir, "cycle.onnx")
	data, err = cyc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cycle, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := qatc(t, "inspect", ext); code != 0 {
		t.Fatalf("the model with external data: %s", errOut)
	}
	for _, tc := range []struct {
		name, model, want string
	}{
		{"missing external data", missing, "ext.onnx.data"},
		{"external data outside the model's directory", escape, "../ext.onnx.data"},
		{"cycle", cycle, "cycle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, cmd := range [][]string{{"inspect", tc.model}, {"insert", tc.model, "-o", filepath.Join(dir, "out.onnx")}} {
				code, _, errOut := qatc(t, cmd...)
				if code != 1 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, tc.want) {
					t.Errorf("%s: exit %d, stderr %q (want one line mentioning %q)", cmd[0], code, errOut, tc.want)
				}
			}
		})
	}
}

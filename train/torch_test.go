package train

import (
	"slices"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
)

// TestTorchExportTied trains a few steps of the PyTorch-exported reference
// model, whose embedding table is written twice (the lookup and, transposed,
// the output projection): the two stay exact transposes of each other in
// the trained model, and validation (which rebuilds the copy from the
// parameter as the training graph does) runs.
func TestTorchExportTied(t *testing.T) {
	m, err := graph.Load(fixture.Torch(t, fixture.Transformer17))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := NewTrainer(m, Config{
		Train: reverseTask(t, 40, 50, 11), Valid: reverseTask(t, 8, 50, 12),
		BatchTokens: 200, Seed: 1, Threads: 2, LR: 1e-3,
		Loss: Loss{Kind: "ce", LabelSmoothing: 0.1},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if len(tr.tg.Tied) == 0 {
		t.Fatal("no tied copy found in the exporter's graph")
	}
	v0, err := tr.Validate()
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, _, err := tr.Step(); err != nil {
			t.Fatal(err)
		}
	}
	v1, err := tr.Validate()
	if err != nil {
		t.Fatal(err)
	}
	if v1 == v0 {
		t.Error("validation loss unchanged by training")
	}
	if err := tr.WriteBack(); err != nil {
		t.Fatal(err)
	}
	for param, copies := range tr.tg.Tied {
		p, _ := graph.Floats(m.Initializer(param))
		dims := m.Initializer(param).Dims
		for _, c := range copies {
			v, _ := graph.Floats(m.Initializer(c.Name))
			if !c.Transpose {
				if !slices.Equal(v, p) {
					t.Errorf("copy %s differs from %s", c.Name, param)
				}
				continue
			}
			r, k := int(dims[0]), int(dims[1])
			for i := range r {
				for j := range k {
					if want, got := p[i*k+j], v[j*r+i]; got != want {
						t.Fatalf("%s[%d,%d] = %g, its transposed copy %s has %g", param, i, j, want, c.Name, got)
					}
				}
			}
		}
	}
}

// TestTorchExportUntie checks that --untie makes both copies parameters.
func TestTorchExportUntie(t *testing.T) {
	m, err := graph.Load(fixture.Torch(t, fixture.Transformer17))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Train: reverseTask(t, 10, 50, 13), BatchTokens: 200, LR: 1e-3, Loss: Loss{Kind: "ce"}}
	tied, err := TrainingGraph(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Untie = true
	untied, err := TrainingGraph(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(untied.Graph().Input) != len(tied.Graph().Input)+1 {
		t.Errorf("untied graph has %d inputs, tied %d; want one more parameter", len(untied.Graph().Input), len(tied.Graph().Input))
	}
	if untied.Input("labels") == nil || untied.Output("loss") == nil {
		t.Error("training graph lacks labels or loss")
	}
}

package train

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/passes/autodiff"
	"github.com/qatc/qatc/passes/quantize"
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
	// Each parameter the backward pass recomputes from has an alias input
	// too (autodiff.AliasSuffix).
	params := func(m *graph.Model) int {
		n := 0
		for _, in := range m.Graph().Input {
			if !strings.HasSuffix(in.Name, autodiff.AliasSuffix) {
				n++
			}
		}
		return n
	}
	if params(untied) != params(tied)+1 {
		t.Errorf("untied graph has %d inputs besides aliases, tied %d; want one more parameter", params(untied), params(tied))
	}
	if untied.Input("labels") == nil || untied.Output("loss") == nil {
		t.Error("training graph lacks labels or loss")
	}
}

// TestTorchBlockedTied fine-tunes blocked 4-bit quantizers on the PyTorch
// export, whose tied table's transposed copy (an onnx::MatMul_N
// initializer) the training graph rebuilds with a Transpose of the
// parameter: onnxruntime's transpose optimizer would push that Transpose
// through a blocked QuantizeLinear without transposing its scale, so the
// quantizer reads the blocked view (quantize.BlockView), and the steps
// run at the default optimization level.
func TestTorchBlockedTied(t *testing.T) {
	m, err := graph.Load(fixture.Torch(t, fixture.Transformer17))
	if err != nil {
		t.Fatal(err)
	}
	p := quantize.DefaultParams()
	p.WeightBits, p.ActBits, p.Granularity, p.BlockSize, p.WeightInit = 4, 8, quantize.Block, 32, quantize.InitMSE
	if _, err := quantize.Insert(m, p); err != nil {
		t.Fatal(err)
	}
	tr, err := NewTrainer(m, Config{
		Train: reverseTask(t, 20, 50, 11), BatchTokens: 200, Seed: 1, Threads: 2, LR: 1e-4,
		Loss: Loss{Kind: "ce"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if len(tr.tg.Tied) == 0 {
		t.Fatal("no tied copy found in the exporter's graph")
	}
	for i := range 2 {
		loss, _, err := tr.Step()
		if err != nil {
			t.Fatalf("step %d: %v", i+1, err)
		}
		if math.IsNaN(loss) || math.IsInf(loss, 0) {
			t.Fatalf("step %d: loss %v", i+1, loss)
		}
	}
	if err := tr.WriteBack(); err != nil {
		t.Fatal(err)
	}
	if _, err := quantize.Find(m); err != nil {
		t.Fatalf("the trained QAT model: %v", err)
	}
}

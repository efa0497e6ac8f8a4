package train

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/qatc/qatc/graph"
)

func TestCheckpointRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ckpt")
	if c, err := LatestCheckpoint(dir); c != nil || err != nil {
		t.Fatalf("LatestCheckpoint of a missing directory = %v, %v; want nothing", c, err)
	}
	m := graph.New("m", 17)
	m.AddInitializer(graph.FloatTensor("w", []int64{2}, []float32{1, 2}))
	p := &Param{Name: "w", Dims: []int64{2}, Data: []float32{1, 2}, Grad: []float32{0.5, -0.5}, Group: &Group{LR: 0.1}}
	opt, _ := NewOptimizer(DefaultOptimizer(), []*Param{p})
	for step := int64(1); step <= 3; step++ {
		opt.Step(1)
		graph.SetFloats(m.Initializer("w"), p.Data)
		st := State{Step: step, Epoch: 1, Batch: int(step) + 4, Seed: 9, Data: "d", Tokens: 100 * step, Loss: 2.5}
		got, err := WriteCheckpoint(dir, m, opt, st, 2)
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(dir, fmt.Sprintf("step-%08d", step)); got != want {
			t.Errorf("checkpoint written to %s, want %s", got, want)
		}
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !reflect.DeepEqual(names, []string{"step-00000002", "step-00000003"}) {
		t.Errorf("directory holds %v; want the newest two checkpoints only", names)
	}
	c, err := LatestCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := State{Format: 1, Step: 3, Epoch: 1, Batch: 7, Seed: 9, Data: "d", Tokens: 300, Loss: 2.5}
	if c.State != want {
		t.Errorf("state %+v, want %+v", c.State, want)
	}
	cm, err := graph.Load(c.ModelPath())
	if err != nil {
		t.Fatal(err)
	}
	vals, _ := graph.Floats(cm.Initializer("w"))
	if !reflect.DeepEqual(vals, p.Data) {
		t.Errorf("checkpoint weights %v, want %v", vals, p.Data)
	}
	p2 := &Param{Name: "w", Data: make([]float32, 2), Grad: make([]float32, 2), Group: &Group{}}
	opt2, _ := NewOptimizer(DefaultOptimizer(), []*Param{p2})
	if err := opt2.LoadState(c.OptimizerPath()); err != nil {
		t.Fatal(err)
	}
	if opt2.Steps != 3 || !reflect.DeepEqual(opt2.m, opt.m) || !reflect.DeepEqual(opt2.v, opt.v) {
		t.Error("optimizer state differs after the round trip")
	}

	// Rewriting a step replaces it; an incomplete directory (no state
	// file, as a crash mid-write would leave under a final name) is
	// ignored.
	if _, err := WriteCheckpoint(dir, m, opt, State{Step: 3, Loss: 1}, 0); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "step-00000009"), 0o755)
	c, _ = LatestCheckpoint(dir)
	if c.State.Step != 3 || c.State.Loss != 1 {
		t.Errorf("latest checkpoint %+v; want step 3 rewritten with loss 1", c.State)
	}
	ents, _ = os.ReadDir(dir)
	for _, e := range ents {
		if e.Name()[0] == '.' {
			t.Errorf("temporary %s left behind", e.Name())
		}
	}
	os.WriteFile(filepath.Join(dir, "step-00000003", "state.json"), []byte("{"), 0o644)
	if _, err := LatestCheckpoint(dir); err == nil {
		t.Error("a broken state file was accepted")
	}
}

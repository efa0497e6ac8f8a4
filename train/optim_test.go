package train

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdamSteps checks two updates against values computed by hand (in
// float64, with PyTorch's formulas: bias-corrected moments, ε outside the
// square root, L2 decay added to the gradient for Adam, decoupled
// p ← p − lr·wd·p for AdamW, clip factor max/(norm + 1e-6)).
func TestAdamSteps(t *testing.T) {
	grads := [][]float32{{0.5, -1}, {0.1, 0.3}}
	for _, tc := range []struct {
		name  string
		adamW bool
		wd    float64
		clip  float64
		want  [2][2]float64 // after step 1 and step 2
	}{
		{"adam", false, 0, 0, [2][2]float64{{0.900000002, -1.900000001}, {0.819695906, -1.857215142}}},
		{"adam+l2", false, 0.01, 0, [2][2]float64{{0.900000002, -1.900000001}, {0.818915174, -1.855176161}}},
		{"adamw", true, 0.01, 0, [2][2]float64{{0.899000002, -1.898000001}, {0.817796906, -1.853317142}}},
		{"adam+clip", false, 0, 0.5, [2][2]float64{{0.900000004, -1.900000002}, {0.808445503, -1.885832500}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &Param{Name: "w", Data: []float32{1, -2}, Grad: make([]float32, 2), Group: &Group{LR: 0.2, WeightDecay: tc.wd}}
			o, err := NewOptimizer(OptimizerConfig{AdamW: tc.adamW, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, ClipNorm: tc.clip}, []*Param{p})
			if err != nil {
				t.Fatal(err)
			}
			for s, g := range grads {
				copy(p.Grad, g)
				// LR 0.2 × factor 0.5: the schedule's factor scales the
				// group's rate.
				norm, err := o.Step(0.5)
				if err != nil {
					t.Fatal(err)
				}
				if want := math.Hypot(float64(g[0]), float64(g[1])); math.Abs(norm-want) > 1e-7 {
					t.Errorf("step %d: norm %g, want %g", s+1, norm, want)
				}
				for i, w := range tc.want[s] {
					if math.Abs(float64(p.Data[i])-w) > 2e-7 {
						t.Errorf("step %d: w[%d] = %.9f, want %.9f", s+1, i, p.Data[i], w)
					}
				}
			}
		})
	}
}

func TestGroups(t *testing.T) {
	w := &Param{Name: "w", Data: []float32{1}, Grad: []float32{1}, Group: &Group{Name: "weights", LR: 0.01}}
	c := &Param{Name: "w_clip_max", Data: []float32{1}, Grad: []float32{1}, Group: &Group{Name: "clips", LR: 0.1}}
	o, err := NewOptimizer(OptimizerConfig{Beta1: 0.9, Beta2: 0.98, Eps: 1e-9}, []*Param{w, c})
	if err != nil {
		t.Fatal(err)
	}
	o.Step(1)
	// Adam's first step moves each parameter by its rate.
	if math.Abs(float64(w.Data[0])-0.99) > 1e-6 || math.Abs(float64(c.Data[0])-0.9) > 1e-6 {
		t.Errorf("after one step w = %g (want 0.99), clip = %g (want 0.9)", w.Data[0], c.Data[0])
	}
}

func TestGradNormClipping(t *testing.T) {
	a := &Param{Name: "a", Data: make([]float32, 2), Grad: []float32{3, 0}, Group: &Group{LR: 1}}
	b := &Param{Name: "b", Data: make([]float32, 1), Grad: []float32{4}, Group: &Group{LR: 1}}
	// Adam's first step is lr·sign(g) whatever the scale, so the clipped
	// gradient shows in the first moments.
	o, _ := NewOptimizer(OptimizerConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, ClipNorm: 1}, []*Param{a, b})
	if n := o.GradNorm(); n != 5 {
		t.Fatalf("GradNorm = %g, want 5", n)
	}
	norm, err := o.Step(1)
	if err != nil || norm != 5 {
		t.Fatalf("Step = %g, %v; want the unclipped norm 5", norm, err)
	}
	// The first moments hold (1-β1)·g·scale with scale = 1/(5+1e-6).
	scale := 1 / (5 + 1e-6)
	for i, want := range []float64{0.1 * 3 * scale, 0} {
		if math.Abs(float64(o.m[0][i])-want) > 1e-8 {
			t.Errorf("m[a][%d] = %g, want %g", i, o.m[0][i], want)
		}
	}
	if want := 0.1 * 4 * scale; math.Abs(float64(o.m[1][0])-want) > 1e-8 {
		t.Errorf("m[b] = %g, want %g", o.m[1][0], want)
	}
	// A non-finite gradient is refused and changes nothing.
	a.Grad[1] = float32(math.Inf(1))
	before := append([]float32(nil), a.Data...)
	if _, err := o.Step(1); err == nil || !strings.Contains(err.Error(), "+Inf") {
		t.Errorf("infinite gradient: error %v", err)
	}
	if a.Data[0] != before[0] || o.Steps != 1 {
		t.Error("a refused step changed the parameters")
	}
}

func TestOptimizerStateRoundTrip(t *testing.T) {
	mk := func() (*Optimizer, []*Param) {
		g := &Group{LR: 0.1}
		ps := []*Param{
			{Name: "a", Data: []float32{1, 2, 3}, Grad: []float32{0.1, -0.2, 0.3}, Group: g},
			{Name: "b", Data: []float32{4}, Grad: []float32{1}, Group: g},
		}
		o, err := NewOptimizer(DefaultOptimizer(), ps)
		if err != nil {
			t.Fatal(err)
		}
		return o, ps
	}
	o1, p1 := mk()
	o1.Step(1)
	o1.Step(1)
	path := filepath.Join(t.TempDir(), "opt.bin")
	if err := o1.SaveState(path); err != nil {
		t.Fatal(err)
	}
	if saved, _ := os.ReadFile(path); !bytes.Equal(saved, o1.MarshalState()) {
		t.Errorf("the state file differs from MarshalState's bytes")
	}
	o2, p2 := mk()
	// Same parameters in another order load by name.
	o2.Params[0], o2.Params[1] = o2.Params[1], o2.Params[0]
	o2.m[0], o2.m[1] = o2.m[1], o2.m[0]
	o2.v[0], o2.v[1] = o2.v[1], o2.v[0]
	if err := o2.LoadState(path); err != nil {
		t.Fatal(err)
	}
	copy(p2[0].Data, p1[0].Data)
	copy(p2[1].Data, p1[1].Data)
	o1.Step(1)
	o2.Step(1)
	for i := range p1 {
		for j := range p1[i].Data {
			if p1[i].Data[j] != p2[i].Data[j] {
				t.Errorf("after resuming, %s[%d] = %g, want %g", p1[i].Name, j, p2[i].Data[j], p1[i].Data[j])
			}
		}
	}

	data, _ := os.ReadFile(path)
	for _, tc := range []struct {
		name string
		edit func([]byte) []byte
		want string
	}{
		{"corrupt", func(b []byte) []byte { b[30] ^= 1; return b }, "checksum mismatch"},
		{"not a state file", func(b []byte) []byte { return []byte("hello, world, this is not it at all") }, "not a qatc optimizer state file"},
		{"truncated", func(b []byte) []byte { return b[:len(b)-9] }, "checksum mismatch"},
	} {
		o, _ := mk()
		edited := tc.edit(append([]byte(nil), data...))
		err := o.UnmarshalState(edited)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
		bad := filepath.Join(t.TempDir(), "bad.bin")
		os.WriteFile(bad, edited, 0o644)
		if err := o.LoadState(bad); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), bad) {
			t.Errorf("%s: LoadState error %v, want %q naming the file", tc.name, err, tc.want)
		}
	}

	other, _ := NewOptimizer(DefaultOptimizer(), []*Param{{Name: "a", Data: make([]float32, 3), Grad: make([]float32, 3), Group: &Group{}}})
	if err := other.UnmarshalState(data); err == nil || !strings.Contains(err.Error(), "2 parameters, the model trains 1") {
		t.Errorf("other parameters: error %v", err)
	}
	other, _ = NewOptimizer(DefaultOptimizer(), []*Param{
		{Name: "a", Data: make([]float32, 2), Grad: make([]float32, 2), Group: &Group{}},
		{Name: "b", Data: make([]float32, 1), Grad: make([]float32, 1), Group: &Group{}},
	})
	if err := other.UnmarshalState(data); err == nil || !strings.Contains(err.Error(), `3 values for parameter "a", the model 2`) {
		t.Errorf("other sizes: error %v", err)
	}
}

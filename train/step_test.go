package train

import (
	"math"
	"testing"

	"github.com/qatc/qatc/ort"
)

// TestStepUsesSessionGradients checks the step's plumbing: the gradients
// the session writes into the optimizer's buffers (weights and scalar
// clips alike) are those a plain run of the training graph returns, and
// the first Adam update moves every parameter by lr·g/(|g|+ε).
func TestStepUsesSessionGradients(t *testing.T) {
	_, qat := qatTiny(t)
	cfg := baseConfig(reverseTask(t, 40, 8, 9))
	tr, err := NewTrainer(qat, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	before := map[string][]float32{}
	in := tr.paramInputs()
	for _, p := range tr.params {
		before[p.Name] = append([]float32(nil), p.Data...)
		in[p.Name] = ort.Float32(p.Dims, before[p.Name])
	}
	tr.bindAliases(in)
	b := tr.cfg.Train.MakeBatch(tr.batcher.Epoch(0)[0])
	tr.batchInputs(in, b)
	in[tr.tg.Labels] = ort.Int64([]int64{int64(b.Size), int64(b.TgtLen)}, b.Labels)
	want, err := tr.sess.Run(in)
	if err != nil {
		t.Fatal(err)
	}
	loss, _, err := tr.Step()
	if err != nil {
		t.Fatal(err)
	}
	if w := float64(want[tr.tg.Loss].Float32s()[0]); loss != w {
		t.Errorf("step loss %g, plain run %g", loss, w)
	}
	clips := 0
	for _, p := range tr.params {
		g := want[tr.tg.Grads[p.Name]].Float32s()
		if len(p.Dims) == 0 {
			clips++
		}
		for i := range g {
			if math.Float32bits(p.Grad[i]) != math.Float32bits(g[i]) {
				t.Fatalf("%s: gradient[%d] %g in the optimizer's buffer, %g from a plain run", p.Name, i, p.Grad[i], g[i])
			}
			step := cfg.LR * float64(g[i]) / (math.Abs(float64(g[i])) + DefaultOptimizer().Eps)
			if got := float64(before[p.Name][i] - p.Data[i]); math.Abs(got-step) > 1e-6 {
				t.Fatalf("%s[%d] moved by %g, want %g (gradient %g)", p.Name, i, got, step, g[i])
			}
		}
	}
	if clips == 0 {
		t.Error("no scalar clip among the parameters")
	}
}

package train

import (
	"github.com/qatc/qatc/seq2seq"
	"math"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/testmodels/demo"
)

// demoTask returns the demo model with NeurST's quantizers and n pairs of
// its task (demo.Generate), tokenized with its SentencePiece model.
func demoTask(t *testing.T, n int, seed uint64) (*graph.Model, *seq2seq.Dataset) {
	t.Helper()
	m, err := graph.Load("../testmodels/demo/data/model.onnx")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := quantize.Insert(m, quantize.DefaultParams()); err != nil {
		t.Fatal(err)
	}
	sp, err := seq2seq.LoadSentencePiece("../testmodels/demo/data/spm.model")
	if err != nil {
		t.Fatal(err)
	}
	var src, tgt strings.Builder
	for _, p := range demo.Generate(seed, n) {
		src.WriteString(p.Src + "\n")
		tgt.WriteString(p.Tgt + "\n")
	}
	return m, readPairs(t, src.String(), tgt.String(), seq2seq.DataOptions{Tokenizer: sp, Special: seq2seq.DefaultSpecial()})
}

// TestAccumulate checks gradient accumulation on the demo model: two
// updates of 4096-token batches, each run as four micro-batches of about
// 1024 tokens, give the gradients, losses and weights of the same batches
// run whole (distillation and the clips' L2 included, whose weight must
// not be counted once per micro-batch) within 1e-5 relative; after the
// first update the weights agree within 1e-6 (measured: 2e-8; Adam's
// later steps amplify the rounding differences of small gradients).
//
// The attention key biases get a gradient that is zero in exact
// arithmetic (a softmax does not see a constant added to its row), so
// theirs is rounding noise of about 1e-10 that differs between any two
// summation orders; Adam at ε = 1e-9 would turn that noise into steps of
// ±lr. The test runs Adam at ε = 1e-6, which leaves those steps at 1e-4·lr
// and every real gradient's step as it is, and checks those biases'
// gradients for being near zero rather than equal.
func TestAccumulate(t *testing.T) {
	qat, ds := demoTask(t, 600, 11)
	opt := DefaultOptimizer()
	opt.Eps = 1e-6
	run := func(accumulate int) (*Trainer, []float64, [][]float32, [][]float32) {
		m := cloneModel(qat)
		tr, err := NewTrainer(m, Config{
			Train: ds, BatchTokens: 4096, Accumulate: accumulate, Seed: 3, Steps: 2, Threads: 2, LR: 1e-3, Optimizer: opt,
			Loss: Loss{Kind: "ce+kd", LabelSmoothing: 0.1, KDWeight: 1, Temperature: 2, WeightClipL2: 0.001, ActClipL2: 0.01},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		var losses []float64
		var first, w1 [][]float32
		for range 2 {
			loss, _, err := tr.Step()
			if err != nil {
				t.Fatal(err)
			}
			losses = append(losses, loss)
			if first == nil {
				for _, p := range tr.Params() {
					first = append(first, append([]float32(nil), p.Grad...))
					w1 = append(w1, append([]float32(nil), p.Data...))
				}
			}
		}
		return tr, losses, first, w1
	}
	whole, wantLoss, wantGrad, wantW1 := run(1)
	split, gotLoss, gotGrad, gotW1 := run(4)

	plan := split.batcher.Epoch(0)
	b := ds.MakeBatch(plan[0])
	parts := split.microBatches(b)
	if len(parts) != 4 {
		t.Fatalf("a batch of %d rows ran as %d micro-batches, want 4", b.Size, len(parts))
	}
	for _, p := range parts {
		if padded := p.Size * max(p.SrcLen, p.TgtLen); padded > 1100 {
			t.Errorf("micro-batch of %d padded tokens, want about 1024", padded)
		}
	}
	if padded := b.Size * max(b.SrcLen, b.TgtLen); padded < 3500 {
		t.Errorf("the batch holds %d padded tokens, want close to 4096", padded)
	}

	for i := range wantLoss {
		if rel := math.Abs(gotLoss[i]-wantLoss[i]) / wantLoss[i]; rel > 1e-5 {
			t.Errorf("step %d: loss %.7f accumulated, %.7f whole (rel %.2g)", i+1, gotLoss[i], wantLoss[i], rel)
		}
	}
	// relDiff returns |a-b| / |b| over two vectors (and |b|).
	relDiff := func(a, b []float32) (float64, float64) {
		var diff, norm float64
		for i := range a {
			d := float64(a[i]) - float64(b[i])
			diff += d * d
			norm += float64(b[i]) * float64(b[i])
		}
		return math.Sqrt(diff / max(norm, 1e-300)), math.Sqrt(norm)
	}
	var diff, norm, diff1 float64
	for k, p := range whole.Params() {
		if rel, n := relDiff(gotGrad[k], wantGrad[k]); n > 1e-6 && rel > 1e-5 {
			t.Errorf("first update's gradient of %s differs by %.2g relative", p.Name, rel)
		} else if n <= 1e-6 && rel*n > 1e-8 {
			t.Errorf("first update's gradient of %s (norm %.2g, zero in exact arithmetic) differs by %.2g", p.Name, n, rel*n)
		}
		rel, n := relDiff(split.Params()[k].Data, p.Data)
		diff += rel * rel * n * n
		norm += n * n
		rel, n = relDiff(gotW1[k], wantW1[k])
		diff1 += rel * rel * n * n
	}
	if rel := math.Sqrt(diff1 / norm); rel > 1e-6 {
		t.Errorf("weights after one update differ by %.2g relative, want ≤ 1e-6", rel)
	}
	if rel := math.Sqrt(diff / norm); rel > 1e-5 {
		t.Errorf("weights after two updates differ by %.2g relative, want ≤ 1e-5", rel)
	}
	t.Logf("weights differ by %.2g relative after one update, %.2g after two", math.Sqrt(diff1/norm), math.Sqrt(diff/norm))
}

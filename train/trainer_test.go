package train

import (
	"context"
	"errors"
	"fmt"
	"github.com/qatc/qatc/seq2seq"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/testmodels"
)

// reverseTask writes n pairs of the reversal task over the ids [4, 4+k)
// and returns the dataset.
func reverseTask(t *testing.T, n, k int, seed uint64) *seq2seq.Dataset {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	var src, tgt strings.Builder
	for range n {
		l := 2 + r.IntN(7)
		ids := make([]int, l)
		for i := range ids {
			ids[i] = 4 + r.IntN(k)
		}
		for i, id := range ids {
			if i > 0 {
				src.WriteByte(' ')
			}
			fmt.Fprint(&src, id)
		}
		for i := range ids {
			if i > 0 {
				tgt.WriteByte(' ')
			}
			fmt.Fprint(&tgt, ids[len(ids)-1-i])
		}
		src.WriteByte('\n')
		tgt.WriteByte('\n')
	}
	return readPairs(t, src.String(), tgt.String(), seq2seq.DataOptions{Vocab: 64, Special: seq2seq.DefaultSpecial()})
}

// readPairs writes the parallel text src and tgt as train.src and
// train.tgt in a temporary directory and reads them with opts.
func readPairs(t *testing.T, src, tgt string, opts seq2seq.DataOptions) *seq2seq.Dataset {
	t.Helper()
	dir := t.TempDir()
	s, g := filepath.Join(dir, "train.src"), filepath.Join(dir, "train.tgt")
	for path, text := range map[string]string{s: src, g: tgt} {
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ds, err := seq2seq.ReadParallel(s, g, opts)
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

func tinyModel(t *testing.T) *graph.Model {
	t.Helper()
	m, err := testmodels.Build(testmodels.Tiny())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func baseConfig(ds *seq2seq.Dataset) Config {
	return Config{
		Train: ds, BatchTokens: 128, Seed: 5, Steps: 40, Threads: 1,
		LR: 3e-3, Loss: Loss{Kind: "ce", LabelSmoothing: 0.1},
	}
}

// TestTrainLossDecreases trains the tiny transformer on a reversal task
// over 8 symbols: within 40 steps the model must at least learn which
// symbols and lengths occur, taking the loss from about ln 64 + noise to
// well below it.
func TestTrainLossDecreases(t *testing.T) {
	ds := reverseTask(t, 300, 8, 1)
	valid := reverseTask(t, 40, 8, 2)
	m := tinyModel(t)
	before, _ := graph.Floats(m.Initializer("shared_embedding"))
	before = append([]float32(nil), before...)
	cfg := baseConfig(ds)
	cfg.Valid = valid
	cfg.ValidEvery = 20
	var losses, valids []float64
	cfg.Progress = func(p Progress) {
		losses = append(losses, p.Loss)
		if !math.IsNaN(p.ValidLoss) {
			valids = append(valids, p.ValidLoss)
		}
		if p.LR != 3e-3 || p.TokensPerSec <= 0 || p.Steps != 40 {
			t.Errorf("step %d: progress %+v", p.Step, p)
		}
	}
	res, err := Run(context.Background(), m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Steps != 40 || len(losses) != 40 || len(valids) != 2 {
		t.Fatalf("%d steps, %d progress reports, %d validations; want 40, 40, 2", res.Steps, len(losses), len(valids))
	}
	first, last := mean(losses[:5]), mean(losses[35:])
	t.Logf("loss %.3f → %.3f, validation %.3f → %.3f, %.0f tokens/s", first, last, valids[0], valids[1], float64(res.Tokens)/res.Elapsed.Seconds())
	if last > 0.6*first {
		t.Errorf("training loss %.3f → %.3f: not decreasing markedly", first, last)
	}
	if valids[1] >= valids[0] || valids[1] > 2.6 {
		t.Errorf("validation loss %.3f → %.3f; want it to fall below 2.6 (ln 8 ≈ 2.08 is a unigram model)", valids[0], valids[1])
	}
	if res.ValidLoss != valids[1] {
		t.Errorf("result's validation loss %g, want %g", res.ValidLoss, valids[1])
	}
	// The trained weights are back in the model.
	after, _ := graph.Floats(m.Initializer("shared_embedding"))
	diff := 0.0
	for i := range after {
		diff = math.Max(diff, math.Abs(float64(after[i]-before[i])))
	}
	if diff == 0 {
		t.Error("the model's embedding did not change")
	}
}

func mean(x []float64) float64 {
	s := 0.0
	for _, v := range x {
		s += v
	}
	return s / float64(len(x))
}

// paramsOf returns every float initializer's values.
func paramsOf(t *testing.T, m *graph.Model) map[string][]float32 {
	out := map[string][]float32{}
	for _, name := range m.InitializerNames() {
		init := m.Initializer(name)
		if graph.TensorType(init) != graph.Float {
			continue
		}
		v, err := graph.Floats(init)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = append([]float32(nil), v...)
	}
	return out
}

// TestResumeEquivalence interrupts a run after 10 steps (as Ctrl-C does,
// by cancelling the context), resumes it to 20 steps, and compares with 20
// uninterrupted steps: the weights must be bit-identical.
func TestResumeEquivalence(t *testing.T) {
	ds := reverseTask(t, 120, 8, 3)
	// An epoch has 6 batches, so both runs cross epoch boundaries and the
	// interruption falls inside an epoch.
	straight := tinyModel(t)
	cfg := baseConfig(ds)
	cfg.Steps = 20
	cfg.Threads = 2
	cfg.Schedule = InverseSqrt{Warmup: 8}
	cfg.Optimizer = OptimizerConfig{AdamW: true, Beta1: 0.9, Beta2: 0.98, Eps: 1e-9, ClipNorm: 1}
	cfg.WeightDecay = 0.01
	if _, err := Run(context.Background(), straight, cfg); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	cfg.CheckpointDir = filepath.Join(dir, "ckpt")
	cfg.CheckpointEvery = 4
	ctx, cancel := context.WithCancel(context.Background())
	cfg.Progress = func(p Progress) {
		if p.Step == 10 {
			cancel()
		}
	}
	interrupted := tinyModel(t)
	res, err := Run(ctx, interrupted, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Interrupted || res.Steps != 10 || filepath.Base(res.Checkpoint) != "step-00000010" {
		t.Fatalf("interrupted run: %+v; want 10 steps and a checkpoint at step 10", res)
	}
	cfg.Progress = nil
	cfg.Resume = true
	resumed := tinyModel(t) // the original model, as the command line passes it
	res, err = Run(context.Background(), resumed, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.ResumedFrom != 10 || res.Steps != 20 || res.Epoch == 0 {
		t.Fatalf("resumed run: %+v; want steps 10 → 20 into a second epoch", res)
	}
	want, got := paramsOf(t, straight), paramsOf(t, resumed)
	for name, w := range want {
		g := got[name]
		for i := range w {
			if math.Float32bits(w[i]) != math.Float32bits(g[i]) {
				t.Fatalf("%s[%d] = %g after resuming, %g uninterrupted", name, i, g[i], w[i])
			}
		}
	}
	// Resuming with another seed is refused.
	cfg.Seed = 6
	if _, err := Run(context.Background(), tinyModel(t), cfg); err == nil || !strings.Contains(err.Error(), "seed") {
		t.Errorf("resume with another seed: error %v", err)
	}
}

// TestNaNGuard poisons a parameter after a checkpoint: the next step must
// fail naming the step, the batch's lines and the last good checkpoint,
// and leave that checkpoint in place.
func TestNaNGuard(t *testing.T) {
	ds := reverseTask(t, 60, 8, 4)
	cfg := baseConfig(ds)
	cfg.CheckpointDir = filepath.Join(t.TempDir(), "ckpt")
	tr, err := NewTrainer(tinyModel(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for range 3 {
		if _, _, err := tr.Step(); err != nil {
			t.Fatal(err)
		}
	}
	good, err := tr.Checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range tr.Params() {
		if p.Name == "shared_embedding" {
			p.Data[5*32] = float32(math.NaN())
		}
	}
	_, _, err = tr.Step()
	var nan *NaNError
	if !errors.As(err, &nan) {
		t.Fatalf("error %v, want a NaNError", err)
	}
	if nan.Step != 4 || len(nan.Lines) == 0 || nan.Checkpoint != good {
		t.Errorf("NaNError %+v", nan)
	}
	msg := err.Error()
	for _, want := range []string{"step 4:", "loss is NaN", "data lines [", "last good checkpoint is " + good} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	if _, err := os.Stat(filepath.Join(good, "model.onnx")); err != nil {
		t.Errorf("the good checkpoint is gone: %v", err)
	}
	if tr.State().Step != 3 {
		t.Errorf("the failed step counted: state %+v", tr.State())
	}
}

func TestCrossEntropy(t *testing.T) {
	// Two rows of 3 classes; the second label is padding.
	logits := ort.Float32([]int64{1, 2, 3}, []float32{1, 2, 3, 0, 0, 0})
	sum, n, err := crossEntropy(logits, []int64{0, 9}, 9)
	if err != nil {
		t.Fatal(err)
	}
	want := math.Log(math.Exp(1)+math.Exp(2)+math.Exp(3)) - 1
	if n != 1 || math.Abs(sum-want) > 1e-12 {
		t.Errorf("crossEntropy = %g over %d tokens, want %g over 1", sum, n, want)
	}
	if _, _, err := crossEntropy(logits, []int64{5, 9}, 9); err == nil {
		t.Error("a label beyond the classes was accepted")
	}
}

// TestValidateMatchesTrainingLoss checks the evaluation path (parameters
// fed to the model's own graph, cross-entropy in Go) against the training
// graph's loss on the same single batch before any update.
func TestValidateMatchesTrainingLoss(t *testing.T) {
	ds := reverseTask(t, 12, 8, 9)
	cfg := baseConfig(ds)
	cfg.Valid = ds
	cfg.BatchTokens = 1000
	cfg.Loss.LabelSmoothing = 0
	tr, err := NewTrainer(tinyModel(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	v, err := tr.Validate()
	if err != nil {
		t.Fatal(err)
	}
	loss, _, err := tr.Step()
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(v-loss) > 1e-5*loss {
		t.Errorf("validation loss %.7f, training loss %.7f", v, loss)
	}
	v2, _ := tr.Validate()
	if v2 == v {
		t.Error("validation does not see the updated parameters")
	}
}

package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qatc/qatc/eval"
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/testmodels"
)

// tinySetup writes the tiny testmodel and a copy task (target = source)
// as id files, returning their paths.
func tinySetup(t *testing.T, dir string) (model, src, tgt string) {
	t.Helper()
	m, err := testmodels.Build(testmodels.Tiny())
	if err != nil {
		t.Fatal(err)
	}
	model = filepath.Join(dir, "tiny.onnx")
	if err := m.Save(model); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	var lines []string
	for range 200 {
		n := 3 + rng.IntN(6)
		ids := make([]string, n)
		for i := range ids {
			ids[i] = fmt.Sprint(4 + rng.IntN(60))
		}
		lines = append(lines, strings.Join(ids, " "))
	}
	text := strings.Join(lines, "\n") + "\n"
	src, tgt = filepath.Join(dir, "train.src"), filepath.Join(dir, "train.tgt")
	for _, p := range []string{src, tgt} {
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return model, src, tgt
}

// The whole pipeline on the tiny model: train, insert, finetune, every
// export format, eval and bench.
func TestPipeline(t *testing.T) {
	dir := t.TempDir()
	model, src, tgt := tinySetup(t, dir)
	fp32 := filepath.Join(dir, "fp32.onnx")
	metrics := filepath.Join(dir, "metrics.jsonl")
	out := mustQatc(t, "train", model, "-o", fp32, "--src", src, "--tgt", tgt, "--valid-src", src, "--valid-tgt", tgt,
		"--steps", "30", "--batch-tokens", "512", "--lr", "3e-3", "--threads", "1", "--json", "--metrics", metrics)
	var res struct {
		Steps           int64   `json:"steps"`
		Loss            float64 `json:"loss"`
		ValidLoss       float64 `json:"valid_loss"`
		ValidLossBefore float64 `json:"valid_loss_before"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err, out)
	}
	// --metrics: one line per step, the last with the run's last loss and
	// the final validation.
	lines := strings.Split(strings.TrimSpace(readFile(t, metrics)), "\n")
	var last struct {
		Step      int64    `json:"step"`
		Loss      float64  `json:"loss"`
		ValidLoss *float64 `json:"valid_loss"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || len(lines) != 30 ||
		last.Step != 30 || last.Loss != res.Loss || last.ValidLoss == nil || *last.ValidLoss != res.ValidLoss {
		t.Errorf("--metrics: %d lines, last %s (%v); want 30, the last at step 30 with loss %g and validation loss %g", len(lines), lines[len(lines)-1], err, res.Loss, res.ValidLoss)
	}
	if res.Steps != 30 || !(res.ValidLoss > 0 && res.ValidLoss < 4.0 && res.ValidLoss < res.ValidLossBefore-0.1) {
		t.Errorf("train: %+v (an untrained tiny model's loss is about ln 64 ≈ 4.2)", res)
	}
	qat := filepath.Join(dir, "qat.onnx")
	mustQatc(t, "insert", fp32, "-o", qat, "--calib-src", src, "--calib-tgt", tgt)
	tuned := filepath.Join(dir, "tuned.onnx")
	trainGraph := filepath.Join(dir, "training.onnx")
	mustQatc(t, "finetune", qat, "-o", tuned, "--src", src, "--tgt", tgt, "--steps", "10", "--batch-tokens", "512",
		"--lr", "1e-4", "--threads", "1", "--loss", "ce+kd", "--save-training-graph", trainGraph)
	tg, err := graph.Load(trainGraph)
	if err != nil {
		t.Fatal(err)
	}
	if tg.Input("labels") == nil || tg.Output("loss") == nil || tg.Output("shared_embedding_grad") == nil {
		t.Errorf("training graph lacks labels, loss or shared_embedding_grad")
	}
	m, err := graph.Load(tuned)
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := quantize.ReadRecord(m); err != nil || len(rec.Quantizers) == 0 {
		t.Fatalf("fine-tuned model lost its quantizers: %v", err)
	}
	for _, format := range []string{"qdq", "qoperator", "dynamic"} {
		out := mustQatc(t, "export", tuned, "-o", filepath.Join(dir, format+".onnx"), "--format", format, "--src", src)
		if !strings.Contains(out, "top-1 agreement") {
			t.Errorf("%s: %s", format, out)
		}
	}
	out = mustQatc(t, "export", tuned, "-o", filepath.Join(dir, "model.pb"), "--format", "lightseq", "--src", src)
	if !strings.Contains(out, "hidden 32, heads 4, FFN 64, vocabulary 64, 2+2 layers") || !strings.Contains(out, "(min 90%)") || !strings.Contains(out, "(max 15%)") {
		t.Errorf("lightseq: %s", out)
	}
	out = mustQatc(t, "eval", fp32, tuned, filepath.Join(dir, "qoperator.onnx"), filepath.Join(dir, "model.pb"), "--src", src, "--ref", tgt, "--json", "--threads", "1",
		"--hyp-dir", filepath.Join(dir, "hyp"))
	var rows []struct {
		Model     string
		BLEU      struct{ Score float64 }
		Agreement float64 `json:"token_agreement"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 4 {
		t.Fatalf("eval: %v\n%s", err, out)
	}
	// The int8 export and the LightSeq file translate mostly like the fp32
	// model (it is barely trained, so near-ties are common).
	for _, r := range rows[2:] {
		if r.Agreement < 0.5 {
			t.Errorf("%s agrees with %s on %.1f%% of tokens", r.Model, rows[0].Model, 100*r.Agreement)
		}
	}
	if hyp, err := eval.ReadLines(filepath.Join(dir, "hyp", "qoperator.hyp")); err != nil || len(hyp) != 200 {
		t.Errorf("hypotheses: %d lines, %v", len(hyp), err)
	}
	out = mustQatc(t, "bench", fp32, filepath.Join(dir, "qoperator.onnx"), "--iters", "3", "--warmup", "1", "--batch", "2", "--src-len", "8", "--tgt-len", "8", "--threads", "1")
	if !strings.Contains(out, "speed-up") || !strings.Contains(out, "qoperator.onnx") {
		t.Errorf("bench: %s", out)
	}
}

// Bad training inputs are refused before training starts.
func TestTrainBadInputs(t *testing.T) {
	dir := t.TempDir()
	model, src, tgt := tinySetup(t, dir)
	beyond := writeFile(t, dir, "beyond.src", "5 6 700\n")
	one := writeFile(t, dir, "one.tgt", "5 6\n")
	empty := writeFile(t, dir, "empty.src", "")
	qat := filepath.Join(dir, "qat.onnx")
	// A QAT model whose clip initializer has been removed.
	m, rec := insertRecord(t, model, qat)
	m.RemoveInitializer(rec.Quantizers[0].Clip)
	noClip := filepath.Join(dir, "noclip.onnx")
	if err := m.Save(noClip); err != nil {
		t.Fatal(err)
	}
	// A model that is not seq2seq: logits renamed to a rank-2 output.
	notSeq := writeClassifier(t, dir)
	out := filepath.Join(dir, "out.onnx")
	tests := []refusal{
		{"ids beyond the vocabulary", []string{"train", model, "--src", beyond, "--tgt", one}, 1, "700"},
		{"mismatched line counts", []string{"train", model, "--src", src, "--tgt", one}, 1, "lines"},
		{"empty source", []string{"train", model, "--src", empty, "--tgt", one}, 1, "empty"},
		{"not seq2seq", []string{"train", notSeq, "--src", src, "--tgt", tgt}, 1, "classifier.onnx"},
		{"missing clip", []string{"finetune", noClip, "--src", src, "--tgt", tgt}, 1, rec.Quantizers[0].Clip},
		{"finetune an fp32 model", []string{"finetune", model, "--src", src, "--tgt", tgt}, 1, "qatc insert"},
		{"train a QAT model", []string{"train", qat, "--src", src, "--tgt", tgt}, 1, "finetune"},
		{"unknown clip gradient", []string{"finetune", qat, "--src", src, "--tgt", tgt, "--clip-grad", "pact"}, 2, "pact"},
		{"unknown loss", []string{"finetune", qat, "--src", src, "--tgt", tgt, "--loss", "mse"}, 2, "mse"},
		{"cosine without steps", []string{"train", model, "--src", src, "--tgt", tgt, "--schedule", "cosine"}, 2, "give the number of steps"},
		{"negative hidden distillation", []string{"finetune", qat, "--src", src, "--tgt", tgt, "--kd-hidden", "-1"}, 2, "--kd-hidden -1"},
		{"unknown execution provider", []string{"train", model, "--src", src, "--tgt", tgt, "--ep", "rocm"}, 2, `--ep "rocm": want cpu or cuda`},
		// The install script's onnxruntime has no CUDA provider library.
		{"no CUDA in onnxruntime", []string{"train", model, "--src", src, "--tgt", tgt, "--ep", "cuda"}, 1, "execution provider cuda: onnxruntime 1."},
	}
	wantRefused(t, tests, nil, []string{"-o", out}, out)
}

// Ctrl-C writes a checkpoint and exits 0; --resume then ends with the
// same weights as an uninterrupted run.
func TestInterruptAndResume(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the qatc binary")
	}
	dir := t.TempDir()
	model, src, tgt := tinySetup(t, dir)
	bin := filepath.Join(dir, "qatc")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	args := func(out, ckpt string) []string {
		return []string{"train", model, "-o", out, "--src", src, "--tgt", tgt, "--steps", "300", "--batch-tokens", "256",
			"--lr", "2e-3", "--threads", "1", "--seed", "5", "--checkpoint-dir", ckpt, "--checkpoint-every", "10"}
	}
	straight := filepath.Join(dir, "straight.onnx")
	if out, err := exec.Command(bin, args(straight, filepath.Join(dir, "ckpt-straight"))...).CombinedOutput(); err != nil {
		t.Fatalf("uninterrupted run: %v\n%s", err, out)
	}
	resumed := filepath.Join(dir, "resumed.onnx")
	ckpt := filepath.Join(dir, "ckpt")
	cmd := exec.Command(bin, args(resumed, ckpt)...)
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Interrupt once the first checkpoint is on disk.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := os.Stat(filepath.Join(ckpt, "step-00000010")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no checkpoint appeared:\n%s", log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("interrupted run exited with %v, want 0:\n%s", err, log.String())
	}
	if !strings.Contains(log.String(), "--resume") {
		t.Errorf("interrupted run does not say how to resume:\n%s", log.String())
	}
	if _, err := os.Stat(resumed); err == nil {
		t.Fatalf("an interrupted run wrote the final model")
	}
	if out, err := exec.Command(bin, append(args(resumed, ckpt), "--resume")...).CombinedOutput(); err != nil {
		t.Fatalf("resumed run: %v\n%s", err, out)
	}
	a, err := graph.Load(straight)
	if err != nil {
		t.Fatal(err)
	}
	b, err := graph.Load(resumed)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range a.InitializerNames() {
		ta, tb := a.Initializer(name), b.Initializer(name)
		if tb == nil || string(ta.RawData) != string(tb.RawData) {
			t.Errorf("initializer %s differs between the uninterrupted and the resumed run", name)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

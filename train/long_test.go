package train

import (
	"context"
	"os"
	"testing"

	"github.com/qatc/qatc/passes/quantize"
)

// TestQATRecovers is issue 4's QAT experiment at test scale, run with
// QATC_LONG_TESTS=1: train the tiny model in fp32 on the reversal task,
// insert NeurST's default quantizers, fine-tune with ce+kd, and compare
// validation losses. The QAT model must end within 2% of fp32.
func TestQATRecovers(t *testing.T) {
	if os.Getenv("QATC_LONG_TESTS") == "" {
		t.Skip("set QATC_LONG_TESTS=1 to run the fp32 → QAT experiment (about two minutes)")
	}
	train, valid := reverseTask(t, 2000, 16, 21), reverseTask(t, 200, 16, 22)
	m := tinyModel(t)
	cfg := Config{
		Train: train, Valid: valid, BatchTokens: 512, Seed: 1, Threads: 2,
		Steps: 600, LR: 2e-3, Schedule: InverseSqrt{Warmup: 100},
		Loss: Loss{Kind: "ce", LabelSmoothing: 0.1},
	}
	res, err := Run(context.Background(), m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	fp32 := res.ValidLoss

	qat := cloneModel(m)
	if _, err := quantize.Insert(qat, quantize.DefaultParams()); err != nil {
		t.Fatal(err)
	}
	cfg.Steps = 300
	cfg.LR = 5e-4
	cfg.ClipLR = 1e-2
	cfg.Schedule = Constant{}
	cfg.Loss = Loss{Kind: "ce+kd", LabelSmoothing: 0.1, KDWeight: 1, Temperature: 1, WeightClipL2: 0.001, ActClipL2: 0.01}
	tr, err := NewTrainer(qat, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	before, err := tr.Validate()
	if err != nil {
		t.Fatal(err)
	}
	res, err = tr.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	after := res.ValidLoss
	t.Logf("validation loss: fp32 %.4f (600 steps), QAT before %.4f, after %.4f (%d steps, %.1fs, %.0f tokens/s)",
		fp32, before, after, res.Steps, res.Elapsed.Seconds(), float64(res.Tokens)/res.Elapsed.Seconds())
	if after > 1.02*fp32 {
		t.Errorf("QAT validation loss %.4f is not within 2%% of fp32's %.4f", after, fp32)
	}
}

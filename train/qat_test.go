package train

import (
	"context"
	"github.com/qatc/qatc/seq2seq"
	"math"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/testmodels"
)

// qatTiny returns the tiny model and a copy with NeurST's default
// quantizers inserted.
func qatTiny(t *testing.T) (fp32, qat *graph.Model) {
	t.Helper()
	fp32 = tinyModel(t)
	qat = cloneModel(fp32)
	if _, err := quantize.Insert(qat, quantize.DefaultParams()); err != nil {
		t.Fatal(err)
	}
	return fp32, qat
}

func logitsOf(t *testing.T, m *graph.Model, src, tgt []int64, batch, srcLen, tgtLen int) []float32 {
	t.Helper()
	s, err := ort.Open(m, &ort.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.Run(map[string]*ort.Tensor{
		"src_ids": ort.Int64([]int64{int64(batch), int64(srcLen)}, src),
		"tgt_ids": ort.Int64([]int64{int64(batch), int64(tgtLen)}, tgt),
	}, "logits")
	if err != nil {
		t.Fatal(err)
	}
	return out["logits"].Float32s()
}

// TestTeacherIsFP32 checks that removing the quantizers of a QAT model
// gives back the fp32 model it was made from: same initializers, same
// logits.
func TestTeacherIsFP32(t *testing.T) {
	fp32, qat := qatTiny(t)
	teacher, err := quantize.Strip(qat)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := strings.Join(fp32.InitializerNames(), ","), strings.Join(teacher.InitializerNames(), ","); a != b {
		t.Errorf("teacher initializers differ from the fp32 model's:\n%s\n%s", b, a)
	}
	src, tgt := testmodels.RandomBatch(testmodels.Tiny(), 3, 7, 6, 1)
	want := logitsOf(t, fp32, src, tgt, 3, 7, 6)
	got := logitsOf(t, teacher, src, tgt, 3, 7, 6)
	quant := logitsOf(t, qat, src, tgt, 3, 7, 6)
	maxDiff, qDiff := 0.0, 0.0
	for i := range want {
		maxDiff = math.Max(maxDiff, math.Abs(float64(got[i]-want[i])))
		qDiff = math.Max(qDiff, math.Abs(float64(quant[i]-want[i])))
	}
	if maxDiff > 1e-5 {
		t.Errorf("teacher logits differ from the fp32 model's by %g", maxDiff)
	}
	if qDiff < 1e-4 {
		t.Errorf("the QAT model's logits differ from fp32 by only %g: are the quantizers there?", qDiff)
	}
}

// TestFinetuneClipsOnly fine-tunes the clip ranges of a QAT model with
// distillation from its fp32 teacher and NeurST's L2 on the clips: the
// weights must stay bit-identical, the clips move, the loss stays finite.
func TestFinetuneClipsOnly(t *testing.T) {
	_, qat := qatTiny(t)
	before := paramsOf(t, qat)
	ds := reverseTask(t, 80, 8, 7)
	cfg := baseConfig(ds)
	cfg.Steps = 6
	cfg.FreezeWeights = true
	cfg.ClipLR = 0.05
	cfg.Loss = Loss{Kind: "ce+kd", LabelSmoothing: 0.1, KDWeight: 1, Temperature: 2, WeightClipL2: 0.001, ActClipL2: 0.01}
	var losses []float64
	cfg.Progress = func(p Progress) { losses = append(losses, p.Loss) }
	res, err := Run(context.Background(), qat, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Steps != 6 {
		t.Fatalf("%d steps", res.Steps)
	}
	for _, l := range losses {
		if math.IsNaN(l) || l <= 0 {
			t.Fatalf("losses %v", losses)
		}
	}
	after := paramsOf(t, qat)
	clips, moved := 0, 0
	for name, b := range before {
		a := after[name]
		same := true
		for i := range b {
			same = same && math.Float32bits(a[i]) == math.Float32bits(b[i])
		}
		if strings.HasSuffix(name, "_clip_max") {
			clips++
			if !same {
				moved++
			}
		} else if !same {
			t.Errorf("weight %s changed although the weights are frozen", name)
		}
	}
	if clips == 0 || moved < clips/2 {
		t.Errorf("%d of %d clips moved", moved, clips)
	}
	for _, name := range res.Params {
		if !strings.HasSuffix(name, "_clip_max") {
			t.Errorf("trained %s with the weights frozen", name)
		}
	}
}

func TestBadModels(t *testing.T) {
	ds := reverseTask(t, 20, 8, 8)
	_, qat := qatTiny(t)
	rec, err := quantize.ReadRecord(qat)
	if err != nil {
		t.Fatal(err)
	}
	var clip string
	for _, q := range rec.Quantizers {
		if q.Clip != "" {
			clip = q.Clip
			break
		}
	}
	qat.RemoveInitializer(clip)
	if _, err := NewTrainer(qat, baseConfig(ds)); err == nil || !strings.Contains(err.Error(), "no clip initializer \""+clip+"\"") {
		t.Errorf("missing clip: error %v", err)
	}

	cfg := baseConfig(ds)
	cfg.FreezeWeights = true
	if _, err := NewTrainer(tinyModel(t), cfg); err == nil || !strings.Contains(err.Error(), "no clip ranges") {
		t.Errorf("freezing the weights of an fp32 model: error %v", err)
	}

	// Data beyond the model's vocabulary (64) is refused before training.
	big := readPairs(t, "5 70\n", "6\n", seq2seq.DataOptions{Vocab: 100, Special: seq2seq.DefaultSpecial()})
	cfg = baseConfig(big)
	if _, err := NewTrainer(tinyModel(t), cfg); err == nil || !strings.Contains(err.Error(), "train.src:1: token id 70 is beyond the model's vocabulary of 64") {
		t.Errorf("ids beyond the vocabulary: error %v", err)
	}
	// A poisoned model fails at step 1, with no checkpoint to point to.
	m := tinyModel(t)
	w := m.Initializer("decoder/layer_0/ffn/dense1/kernel")
	v, _ := graph.Floats(w)
	v[0] = float32(math.Inf(1))
	graph.SetFloats(w, v)
	_, err = Run(context.Background(), m, baseConfig(ds))
	if err == nil || !strings.HasPrefix(err.Error(), "step 1: the loss is NaN on batch") || strings.Contains(err.Error(), "checkpoint") {
		t.Errorf("poisoned model: error %v", err)
	}
}

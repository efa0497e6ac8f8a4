package train

import (
	"math"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
)

// TestHiddenDistillation checks the hidden-state term end to end: on the
// same first batch, the loss with Loss.Hidden = w exceeds the plain
// cross-entropy by w·Σ‖x − teacher‖²/‖teacher‖² over the quantized
// activations, computed here from the QAT model's and the teacher's values
// of them; and training with it runs.
func TestHiddenDistillation(t *testing.T) {
	const w = 0.5
	ds := reverseTask(t, 80, 8, 7)
	firstLoss := func(l Loss) float64 {
		_, qat := qatTiny(t)
		cfg := baseConfig(ds)
		cfg.Loss = l
		tr, err := NewTrainer(qat, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		loss, _, err := tr.Step()
		if err != nil {
			t.Fatal(err)
		}
		return loss
	}
	ce := firstLoss(Loss{Kind: "ce", LabelSmoothing: 0.1})
	hidden := firstLoss(Loss{Kind: "ce", LabelSmoothing: 0.1, Hidden: w})

	_, qat := qatTiny(t)
	xs, err := quantizedActivations(qat)
	if err != nil {
		t.Fatal(err)
	}
	if len(xs) < 10 {
		t.Fatalf("only %d quantized activations: %v", len(xs), xs)
	}
	teacher, err := quantize.Strip(qat)
	if err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig(ds)
	batcher, err := NewBatcher(ds, cfg.BatchTokens, cfg.Seed)
	if err != nil {
		t.Fatal(err)
	}
	b := ds.MakeBatch(batcher.Epoch(0)[0]) // the first step's batch
	values := func(m *graph.Model) map[string]*ort.Tensor {
		m = cloneModel(m)
		for _, x := range xs {
			m.AddOutput(x, graph.Float, nil)
		}
		s, err := ort.Open(m, &ort.Options{Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		out, err := s.Run(map[string]*ort.Tensor{
			"src_ids": ort.Int64([]int64{int64(b.Size), int64(b.SrcLen)}, b.Src),
			"tgt_ids": ort.Int64([]int64{int64(b.Size), int64(b.TgtLen)}, b.Dec),
		}, xs...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	sv, tv := values(qat), values(teacher)
	want := 0.0
	for _, x := range xs {
		s, tt := sv[x].Float32s(), tv[x].Float32s()
		var d2, t2 float64
		for i := range s {
			d2 += float64(s[i]-tt[i]) * float64(s[i]-tt[i])
			t2 += float64(tt[i]) * float64(tt[i])
		}
		want += d2 / t2
	}
	if got := (hidden - ce) / w; math.Abs(got-want) > 1e-3*want || want <= 0 {
		t.Errorf("hidden term %.6f, want %.6f", got, want)
	}

	// A model without activation quantizers has nothing to distil.
	cfg.Loss.Hidden = w
	if _, err := NewTrainer(tinyModel(t), cfg); err == nil || !strings.Contains(err.Error(), "no activation quantizers") {
		t.Errorf("fp32 model: error %v", err)
	}
}

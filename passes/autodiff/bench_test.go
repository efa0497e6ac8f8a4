package autodiff_test

import (
	"math/rand/v2"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/autodiff"
	"github.com/qatc/qatc/testmodels"
)

// benchModel is a small transformer-base-like model (d 256, FFN 1024,
// 3+3 layers, vocabulary 8000) with a batch of 16 × 32 tokens.
func benchModel(b testing.TB) (*graph.Model, map[string]*ort.Tensor) {
	if err := ort.Init(); err != nil {
		b.Fatal(err)
	}
	cfg := testmodels.Base()
	cfg.Hidden, cfg.FFN, cfg.Heads, cfg.EncoderLayers, cfg.DecoderLayers = 256, 1024, 4, 3, 3
	m, err := testmodels.Build(cfg)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	ids := func() *ort.Tensor {
		v := make([]int64, 16*32)
		for i := range v {
			v[i] = 4 + rng.Int64N(int64(cfg.Vocab-4))
		}
		return ort.Int64([]int64{16, 32}, v)
	}
	return m, map[string]*ort.Tensor{"src_ids": ids(), "tgt_ids": ids(), "labels": ids()}
}

// BenchmarkForward runs the model alone, for comparison with
// BenchmarkTrainingStep (2 threads, sleeping between ops as train's
// sessions do).
func BenchmarkForward(b *testing.B) {
	m, batch := benchModel(b)
	s, err := ort.Open(m, &ort.Options{Threads: 2, NoSpinning: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	feeds := map[string]*ort.Tensor{"src_ids": batch["src_ids"], "tgt_ids": batch["tgt_ids"]}
	for b.Loop() {
		if _, err := s.Run(feeds); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(16*32*b.N)/b.Elapsed().Seconds(), "tokens/s")
}

// BenchmarkTrainingStep runs loss and all gradients (2 threads, with
// train's session options).
func BenchmarkTrainingStep(b *testing.B) {
	m, batch := benchModel(b)
	tm, info, err := autodiff.Build(m, autodiff.Options{Loss: autodiff.Loss{LabelSmoothing: 0.1}})
	if err != nil {
		b.Fatal(err)
	}
	s, err := ort.Open(tm, &ort.Options{Threads: 2, NoSpinning: true, NoMemPattern: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	feeds := map[string]*ort.Tensor{}
	for k, v := range batch {
		feeds[k] = v
	}
	for _, p := range info.Params {
		v, err := graph.Floats(m.Initializer(p.Name))
		if err != nil {
			b.Fatal(err)
		}
		feeds[p.Name] = ort.Float32(p.Shape, v)
	}
	for b.Loop() {
		if _, err := s.Run(feeds); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(16*32*b.N)/b.Elapsed().Seconds(), "tokens/s")
}

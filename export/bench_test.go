package export

import (
	"slices"
	"testing"
	"time"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/testmodels"
)

// BenchmarkFormats times the full forward pass of testmodels.Base() at
// batch 16, source and target length 32, on 2 threads: fp32 and each
// export of its 8-bit QAT model. The models run interleaved, one forward
// pass each per iteration, so that a drifting machine load affects them
// alike; each reports its median latency ("<format>_ms") and its speedup
// over fp32's median ("<format>_x").
func BenchmarkFormats(b *testing.B) {
	cfg := testmodels.Base()
	fp32, err := testmodels.Build(cfg)
	if err != nil {
		b.Fatal(err)
	}
	src, tgt := testmodels.RandomBatch(cfg, 16, 32, 32, 1)
	batch := map[string]*ort.Tensor{
		testmodels.SrcInput: ort.Int64([]int64{16, 32}, src),
		testmodels.TgtInput: ort.Int64([]int64{16, 32}, tgt),
	}
	qat := makeQAT(b, fp32, batch, qatConfig{bits: 8})
	names := append([]string{"fp32"}, Formats...)
	models := make([]*graph.Model, len(names))
	for i, name := range names {
		m := fp32
		if name != "fp32" {
			out, rep, err := Export(qat, name, nil)
			if err != nil {
				b.Fatal(err)
			}
			v, err := Verify(qat, out, batch, Padding{})
			b.Logf("%s: %d bytes (%.1f%% of the QAT file), max abs error %.4g (bound %.4g), top-1 %.4f, kernels %s; verify: %v",
				name, rep.Size, 100*float64(rep.Size)/float64(rep.SourceSize), v.MaxAbsErr, v.Bound, v.Top1, kernelList(v.Kernels), err)
			m = out
		}
		models[i] = m
	}
	medians := interleaved(b, models, batch)
	for i, name := range names {
		b.ReportMetric(float64(medians[i])/1e6, name+"_ms")
		if i > 0 {
			b.ReportMetric(float64(medians[0])/float64(medians[i]), name+"_x")
		}
	}
}

// interleaved opens a 2-thread session per model, warms each up, then runs
// b.N rounds of one forward pass per model on batch, so that a drifting
// machine load affects all models alike, and returns each model's median
// latency.
func interleaved(b *testing.B, models []*graph.Model, batch map[string]*ort.Tensor) []time.Duration {
	sessions := make([]*ort.Session, len(models))
	for i, m := range models {
		s, err := ort.Open(m, &ort.Options{Threads: 2})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		for range 2 { // warm-up: allocations, prepacking
			if _, err := s.Run(batch); err != nil {
				b.Fatal(err)
			}
		}
		sessions[i] = s
	}
	times := make([][]time.Duration, len(sessions))
	b.ResetTimer()
	for range b.N {
		for i, s := range sessions {
			start := time.Now()
			if _, err := s.Run(batch); err != nil {
				b.Fatal(err)
			}
			times[i] = append(times[i], time.Since(start))
		}
	}
	b.StopTimer()
	medians := make([]time.Duration, len(times))
	for i, d := range times {
		d = slices.Clone(d)
		slices.Sort(d)
		medians[i] = d[len(d)/2]
	}
	return medians
}

package train

import (
	"fmt"
	"github.com/qatc/qatc/seq2seq"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/testmodels"
)

// Issue 4's benchmark shape: 16 rows of 32 source and 32 target tokens
// (QATC_BENCH_ROWS changes the rows: 128 is `qatc finetune`'s default of
// 4096 tokens per batch).
const benchLen = 32

var benchRows = 16

func init() {
	if n, err := strconv.Atoi(os.Getenv("QATC_BENCH_ROWS")); err == nil && n > 0 {
		benchRows = n
	}
}

// benchSetup returns the QAT testmodel QATC_BENCH_PRESET names (tiny by
// default; issue 4's figure is base) with NeurST's default quantizers,
// a dataset of random sentences of benchLen tokens with EOS, and
// QATC_BENCH_THREADS (2).
func benchSetup(b *testing.B) (*graph.Model, testmodels.Config, *seq2seq.Dataset, int) {
	if err := ort.Init(); err != nil {
		b.Fatal(err)
	}
	preset := os.Getenv("QATC_BENCH_PRESET")
	if preset == "" {
		preset = "tiny"
	}
	threads := 2
	if s := os.Getenv("QATC_BENCH_THREADS"); s != "" {
		threads, _ = strconv.Atoi(s)
	}
	mc, err := testmodels.Preset(preset)
	if err != nil {
		b.Fatal(err)
	}
	m, err := testmodels.Build(mc)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := quantize.Insert(m, quantize.DefaultParams()); err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	var src, tgt strings.Builder
	for range 4 * benchRows {
		for _, w := range []*strings.Builder{&src, &tgt} {
			for i := range benchLen - 1 { // EOS makes benchLen
				if i > 0 {
					w.WriteByte(' ')
				}
				fmt.Fprint(w, 4+r.IntN(mc.Vocab-4))
			}
			w.WriteByte('\n')
		}
	}
	dir := b.TempDir()
	sp, tp := filepath.Join(dir, "s"), filepath.Join(dir, "t")
	os.WriteFile(sp, []byte(src.String()), 0o644)
	os.WriteFile(tp, []byte(tgt.String()), 0o644)
	ds, err := seq2seq.ReadParallel(sp, tp, seq2seq.DataOptions{Vocab: mc.Vocab, Special: seq2seq.DefaultSpecial()})
	if err != nil {
		b.Fatal(err)
	}
	return m, mc, ds, threads
}

// BenchmarkFinetune measures fine-tuning throughput, in target tokens per
// second, of a QAT testmodel (NeurST's default quantizers, cross-entropy
// with label smoothing) on batches of 16 × 32 source and 32 target
// tokens: forward, backward and the Adam update, the step `qatc finetune`
// runs. It also reports seconds per step, split into the session's run
// and the optimizer's update, and process CPU seconds per step (on a
// shared machine the CPU time varies less than the wall time).
// QATC_BENCH_PROFILE=prefix writes onnxruntime's per-node profile.
func BenchmarkFinetune(b *testing.B) {
	m, _, ds, threads := benchSetup(b)
	tr, err := NewTrainer(m, Config{Train: ds, BatchTokens: benchRows * benchLen, Seed: 1, Threads: threads, LR: 1e-4, Loss: Loss{Kind: "ce", LabelSmoothing: 0.1}})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	prof := os.Getenv("QATC_BENCH_PROFILE")
	if prof != "" {
		tr.sess.Close()
		tr.sess, err = ort.Open(tr.tg.Model, &ort.Options{Threads: threads, NoSpinning: true, NoMemPattern: true, ProfilePrefix: prof})
		if err != nil {
			b.Fatal(err)
		}
	}
	if _, _, err := tr.Step(); err != nil { // warm-up
		b.Fatal(err)
	}
	start, cpu := tr.State().Tokens, cpuSeconds()
	tr.runTime, tr.updateTime = 0, 0
	b.ResetTimer()
	for range b.N {
		if _, _, err := tr.Step(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(tr.State().Tokens-start)/b.Elapsed().Seconds(), "tokens/s")
	b.ReportMetric(b.Elapsed().Seconds()/n, "s/step")
	b.ReportMetric(tr.runTime.Seconds()/n, "run-s/step")
	b.ReportMetric(tr.updateTime.Seconds()/n, "update-s/step")
	b.ReportMetric((cpuSeconds()-cpu)/n, "cpu-s/step")
	if prof != "" {
		path, err := tr.sess.EndProfiling()
		tr.sess = nil
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("onnxruntime profile (warm-up step included): %s", path)
	}
}

// BenchmarkForward runs the same QAT model forward only, on the same
// batch shape, for reference.
func BenchmarkForward(b *testing.B) {
	m, mc, _, threads := benchSetup(b)
	s, err := ort.Open(m, &ort.Options{Threads: threads})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	roles, err := seq2seq.Describe(m, seq2seq.Roles{})
	if err != nil {
		b.Fatal(err)
	}
	src, tgt := testmodels.RandomBatch(mc, benchRows, benchLen, benchLen, 3)
	in := map[string]*ort.Tensor{
		roles.Src: ort.Int64([]int64{int64(benchRows), benchLen}, src),
		roles.Tgt: ort.Int64([]int64{int64(benchRows), benchLen}, tgt),
	}
	if _, err := s.Run(in); err != nil {
		b.Fatal(err)
	}
	cpu := cpuSeconds()
	b.ResetTimer()
	for range b.N {
		if _, err := s.Run(in); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(benchRows*benchLen*b.N)/b.Elapsed().Seconds(), "tokens/s")
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/step")
	b.ReportMetric((cpuSeconds()-cpu)/float64(b.N), "cpu-s/step")
}

// cpuSeconds returns the process's user and system CPU time.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

package train

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/testmodels"
)

// BenchmarkFinetune measures fine-tuning throughput, in target tokens per
// second, of a QAT testmodel (NeurST's default quantizers) on batches of
// about 2048 padded tokens of random sentences of 15 to 30 tokens:
// forward, backward and the Adam update. QATC_BENCH_PRESET picks the
// model (tiny by default; issue 4's figure is base) and
// QATC_BENCH_THREADS onnxruntime's threads (2).
func BenchmarkFinetune(b *testing.B) {
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
	for range 400 {
		for _, w := range []*strings.Builder{&src, &tgt} {
			n := 14 + r.IntN(16)
			for i := range n {
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
	ds, err := ReadParallel(sp, tp, DataOptions{Vocab: mc.Vocab, Special: DefaultSpecial()})
	if err != nil {
		b.Fatal(err)
	}
	tr, err := NewTrainer(m, Config{Train: ds, BatchTokens: 2048, Seed: 1, Threads: threads, LR: 1e-4, Loss: Loss{Kind: "ce", LabelSmoothing: 0.1}})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	if _, _, err := tr.Step(); err != nil { // warm-up
		b.Fatal(err)
	}
	start := tr.State().Tokens
	b.ResetTimer()
	for range b.N {
		if _, _, err := tr.Step(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(tr.State().Tokens-start)/b.Elapsed().Seconds(), "tokens/s")
}

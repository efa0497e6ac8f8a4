package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/testmodels"
)

// BenchmarkBig is issue 16's measurement on transformer-big (209M
// parameters, 841 MB of external data): it builds the model, then runs
// qatc insert (no calibration), finetune (2 steps of 512-token batches, 2
// threads) and export --format qoperator (with its check) as processes of
// their own, one after another, and reports each one's wall time
// ("<step>_s") and peak resident memory as a multiple of the model's
// size ("<step>_peak/model", VmHWM as the process exits). It takes
// minutes and about 6 GB:
//
//	go test ./cmd/qatc -run '^$' -bench Big -benchtime 1x
func BenchmarkBig(b *testing.B) {
	dir := b.TempDir()
	fp32 := filepath.Join(dir, "big.onnx")
	m, err := testmodels.Build(testmodels.Big())
	if err != nil {
		b.Fatal(err)
	}
	if err := m.SaveWith(fp32, &graph.SaveOptions{ExternalData: true}); err != nil {
		b.Fatal(err)
	}
	// The builder's memory and dirty pages are not the measured
	// processes' to carry.
	m = nil
	debug.FreeOSMemory()
	syscall.Sync()
	size := fileSize(b, fp32) + fileSize(b, fp32+".data")
	src, tgt := filepath.Join(dir, "train.src"), filepath.Join(dir, "train.tgt")
	writeIDs(b, src, testmodels.Big().Vocab, 1)
	writeIDs(b, tgt, testmodels.Big().Vocab, 2)
	qat, ft, out := filepath.Join(dir, "qat.onnx"), filepath.Join(dir, "ft.onnx"), filepath.Join(dir, "int8.onnx")
	steps := []struct {
		name string
		args []string
	}{
		{"insert", []string{"insert", fp32, "-o", qat}},
		{"finetune", []string{"finetune", qat, "-o", ft, "--src", src, "--tgt", tgt, "--steps", "2", "--batch-tokens", "512", "--threads", "2"}},
		{"export", []string{"export", ft, "--format", "qoperator", "-o", out}},
	}
	secs := make([]float64, len(steps))
	peaks := make([]int64, len(steps))
	b.ResetTimer()
	for range b.N {
		for i, s := range steps {
			peak := filepath.Join(dir, s.name+".peak")
			cmd := qatcProcess(s.args...)
			cmd.Env = append(cmd.Env, peakEnv+"="+peak)
			start := time.Now()
			if text, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("qatc %s: %v\n%s", strings.Join(s.args, " "), err, text)
			}
			secs[i] += time.Since(start).Seconds()
			peaks[i] = max(peaks[i], processPeak(b, peak)<<10)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(size)/1e6, "model_MB")
	for i, s := range steps {
		b.ReportMetric(secs[i]/float64(b.N), s.name+"_s")
		b.ReportMetric(float64(peaks[i])/float64(size), s.name+"_peak/model")
	}
}

func fileSize(b *testing.B, path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return st.Size()
}

// writeIDs writes 256 lines of 20 to 31 random token ids below vocab.
func writeIDs(b *testing.B, path string, vocab int, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 16))
	var sb strings.Builder
	for range 256 {
		n := 20 + r.IntN(12)
		for j := range n {
			if j > 0 {
				sb.WriteByte(' ')
			}
			fmt.Fprint(&sb, testmodels.EOS+1+r.IntN(vocab-testmodels.EOS-1))
		}
		sb.WriteByte('\n')
	}
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
}

package eval

import (
	"bufio"
	"fmt"
	"github.com/qatc/qatc/decode"
	"github.com/qatc/qatc/seq2seq"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// BenchOptions configure a synthetic benchmark: decoding TgtLen tokens
// for Batch sources of SrcLen tokens, Warmup untimed rounds, then Iters
// timed ones.
type BenchOptions struct {
	Batch, SrcLen, TgtLen int
	// Threads is the number of parts the batch is split into and decoded
	// at once (see Threads; 0: one per CPU).
	Threads       int
	Warmup, Iters int
	Special       seq2seq.Special // zero value: DefaultSpecial
}

// BenchResult is the latency of one model.
type BenchResult struct {
	Model   string `json:"model"`
	Cached  bool   `json:"cached"`
	Batch   int    `json:"batch"`
	SrcLen  int    `json:"src_len"`
	TgtLen  int    `json:"tgt_len"`
	Threads int    `json:"threads"`
	Iters   int    `json:"iters"`
	// MedianMs, P90Ms (nearest rank) and MeanMs time producing TgtLen
	// tokens for the batch: the encoder then TgtLen decoder steps with the
	// cache, or, for a model without one, TgtLen forward passes over the
	// growing target prefixes.
	MedianMs float64 `json:"median_ms"`
	P90Ms    float64 `json:"p90_ms"`
	MeanMs   float64 `json:"mean_ms"`
	// EncoderMs is the median time until every part's encoder has run
	// (0 without a cache: the encoder runs in every step), StepMs the
	// median time of one decoding step of the whole batch.
	EncoderMs float64 `json:"encoder_ms"`
	StepMs    float64 `json:"step_ms"`
	// SentencesPerSec and TokensPerSec are Batch and Batch·TgtLen over
	// the median.
	SentencesPerSec float64 `json:"sentences_per_sec"`
	TokensPerSec    float64 `json:"tokens_per_sec"`
	// PeakRSSBytes is the process's peak resident memory (VmHWM) after
	// the runs: an upper bound on what the models needed, as it includes
	// everything the process held before.
	PeakRSSBytes int64 `json:"peak_rss_bytes"`
}

// BenchModel is a model to benchmark.
type BenchModel struct {
	Name   string
	Model  decode.Model
	Vocab  int
	Cached bool
}

// BenchFile loads the model at path (a file or an incremental directory,
// see Load) with sessions of one thread each and benchmarks it.
func BenchFile(path string, roles seq2seq.Roles, opts BenchOptions) (*BenchResult, error) {
	l, err := decode.Load(decode.ModelSpec{Path: path, Roles: roles}, opts.Special, 1)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	rs, err := BenchAll([]BenchModel{{Name: filepath.Base(path), Model: l.Model, Vocab: l.Vocab, Cached: l.Cached}}, opts)
	if err != nil {
		return nil, err
	}
	return rs[0], nil
}

// BenchAll times several models interleaved: each timed round decodes the
// batch with every model once, so that a change in the machine's load
// (other processes, frequency scaling) affects all of them alike and their
// ratios stay meaningful. The batch is split into opts.Threads parts
// decoded at once. The tokens are fixed pseudo-random ids above the
// special ids (no EOS), so every round computes the same thing.
func BenchAll(ms []BenchModel, opts BenchOptions) ([]*BenchResult, error) {
	if opts.Batch < 1 || opts.SrcLen < 1 || opts.TgtLen < 1 || opts.Iters < 1 || opts.Warmup < 0 {
		return nil, fmt.Errorf("bench: batch %d, source length %d, target length %d, iterations %d must be at least 1 (warm-up %d at least 0)",
			opts.Batch, opts.SrcLen, opts.TgtLen, opts.Iters, opts.Warmup)
	}
	sp := opts.Special
	if sp == (seq2seq.Special{}) {
		sp = seq2seq.DefaultSpecial()
	}
	workers := min(decode.Threads(opts.Threads), opts.Batch)
	type timing struct{ total, enc, step []float64 }
	times := make([]timing, len(ms))
	batches := make([]benchBatch, len(ms))
	for i, m := range ms {
		b, err := newBenchBatch(m, sp, opts)
		if err != nil {
			return nil, err
		}
		batches[i] = b
	}
	for it := range opts.Warmup + opts.Iters {
		for i, m := range ms {
			total, enc, err := batches[i].decode(m.Model, workers)
			if err != nil {
				return nil, fmt.Errorf("bench %s: %w", m.Name, err)
			}
			if it < opts.Warmup {
				continue
			}
			t := &times[i]
			t.total = append(t.total, total)
			t.enc = append(t.enc, enc)
			t.step = append(t.step, (total-enc)/float64(opts.TgtLen))
		}
	}
	hwm, err := PeakRSS()
	if err != nil {
		return nil, err
	}
	out := make([]*BenchResult, len(ms))
	for i, m := range ms {
		r := &BenchResult{
			Model: m.Name, Cached: m.Cached, Batch: opts.Batch, SrcLen: opts.SrcLen, TgtLen: opts.TgtLen,
			Threads: workers, Iters: opts.Iters, PeakRSSBytes: hwm,
		}
		r.MedianMs, r.P90Ms, r.MeanMs = latencyStats(times[i].total)
		r.EncoderMs, _, _ = latencyStats(times[i].enc)
		r.StepMs, _, _ = latencyStats(times[i].step)
		r.SentencesPerSec = float64(opts.Batch) / (r.MedianMs / 1000)
		r.TokensPerSec = float64(opts.Batch*opts.TgtLen) / (r.MedianMs / 1000)
		out[i] = r
	}
	return out, nil
}

// benchBatch is a model's fixed benchmark batch.
type benchBatch struct {
	srcs   [][]int64
	tokens [][]int64 // the target tokens of each step, BOS first
}

// newBenchBatch draws the batch for m's vocabulary.
func newBenchBatch(m BenchModel, sp seq2seq.Special, opts BenchOptions) (benchBatch, error) {
	lo := max(sp.Pad, sp.BOS, sp.EOS) + 1
	if int64(m.Vocab) <= lo {
		return benchBatch{}, fmt.Errorf("bench: %s has a vocabulary of %d, too small for tokens above the special ids", m.Name, m.Vocab)
	}
	x := uint64(0x9e3779b97f4a7c15)
	token := func() int64 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		return lo + int64(x%uint64(int64(m.Vocab)-lo))
	}
	var b benchBatch
	for range opts.Batch {
		src := make([]int64, opts.SrcLen)
		for i := range src {
			src[i] = token()
		}
		src[len(src)-1] = sp.EOS
		b.srcs = append(b.srcs, src)
	}
	for t := range opts.TgtLen {
		step := make([]int64, opts.Batch)
		for i := range step {
			step[i] = sp.BOS
			if t > 0 {
				step[i] = token()
			}
		}
		b.tokens = append(b.tokens, step)
	}
	return b, nil
}

// decode runs the batch, split into parts decoded at once, and returns the
// wall time of the whole and of the encoders (all parts started), in ms.
func (b benchBatch) decode(m decode.Model, workers int) (total, enc float64, err error) {
	n := len(b.srcs)
	size := (n + workers - 1) / workers
	type part struct {
		st     decode.State
		lo, hi int
		err    error
	}
	var parts []*part
	for lo := 0; lo < n; lo += size {
		parts = append(parts, &part{lo: lo, hi: min(lo+size, n)})
	}
	start := time.Now()
	var wg sync.WaitGroup
	for _, p := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.st, p.err = m.Start(b.srcs[p.lo:p.hi])
		}()
	}
	wg.Wait()
	encDone := time.Now()
	for _, p := range parts {
		if p.err != nil {
			return 0, 0, p.err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, step := range b.tokens {
				if _, _, err := p.st.Step(step[p.lo:p.hi]); err != nil {
					p.err = err
					return
				}
			}
		}()
	}
	wg.Wait()
	end := time.Now()
	for _, p := range parts {
		if p.err != nil {
			return 0, 0, p.err
		}
	}
	ms := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }
	return ms(end.Sub(start)), ms(encDone.Sub(start)), nil
}

// DecodeBench is one model's decoding of a set of sentences.
type DecodeBench struct {
	Model  string `json:"model"`
	Cached bool   `json:"cached"`
	// Sentences were decoded Rounds times; Seconds is the median and
	// SentencesPerSec the sentences over it.
	Sentences       int     `json:"sentences"`
	Rounds          int     `json:"rounds"`
	Threads         int     `json:"threads"`
	Beam            int     `json:"beam"`
	Seconds         float64 `json:"seconds"`
	SentencesPerSec float64 `json:"sentences_per_sec"`
	// CPUSeconds is the median of the process's CPU time (user + system,
	// every thread) per decode: on a machine shared with other work it
	// varies far less than the wall time, which waits for the cores.
	CPUSeconds   float64 `json:"cpu_seconds"`
	PeakRSSBytes int64   `json:"peak_rss_bytes"`
}

// BenchDecode decodes srcs with every model rounds times, interleaved (one
// decode per model per round, after a two-sentence warm-up), and returns
// each model's median.
func BenchDecode(ms []BenchModel, srcs [][]int64, opts decode.Options, rounds int) ([]DecodeBench, error) {
	if rounds < 1 || len(srcs) == 0 {
		return nil, fmt.Errorf("bench: %d rounds of %d sentences: need at least one of each", rounds, len(srcs))
	}
	o, err := opts.WithDefaults()
	if err != nil {
		return nil, err
	}
	secs, cpus := make([][]float64, len(ms)), make([][]float64, len(ms))
	for _, m := range ms {
		if _, err := decode.Decode(m.Model, srcs[:min(2, len(srcs))], o); err != nil {
			return nil, fmt.Errorf("bench %s: %w", m.Name, err)
		}
	}
	for range rounds {
		for i, m := range ms {
			t, c := time.Now(), cpuTime()
			if _, err := decode.Decode(m.Model, srcs, o); err != nil {
				return nil, fmt.Errorf("bench %s: %w", m.Name, err)
			}
			secs[i] = append(secs[i], time.Since(t).Seconds())
			cpus[i] = append(cpus[i], (cpuTime() - c).Seconds())
		}
	}
	hwm, err := PeakRSS()
	if err != nil {
		return nil, err
	}
	out := make([]DecodeBench, len(ms))
	for i, m := range ms {
		med, _, _ := latencyStats(secs[i])
		cpu, _, _ := latencyStats(cpus[i])
		out[i] = DecodeBench{Model: m.Name, Cached: m.Cached, Sentences: len(srcs), Rounds: rounds, Threads: o.Workers,
			Beam: max(o.Beam, 1), Seconds: med, SentencesPerSec: float64(len(srcs)) / med, CPUSeconds: cpu, PeakRSSBytes: hwm}
	}
	return out, nil
}

// cpuTime returns the CPU time the process has used (user + system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// latencyStats returns the median (the mean of the middle two for an even
// count), the nearest-rank 90th percentile and the mean of ms.
func latencyStats(ms []float64) (median, p90, mean float64) {
	s := append([]float64(nil), ms...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		median = s[n/2]
	} else {
		median = (s[n/2-1] + s[n/2]) / 2
	}
	p90 = s[int(math.Ceil(0.9*float64(n)))-1]
	for _, x := range s {
		mean += x
	}
	return median, p90, mean / float64(n)
}

// PeakRSS returns the process's peak resident set size (VmHWM in
// /proc/self/status) in bytes.
func PeakRSS() (int64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("peak memory: %v (VmHWM is read from /proc, which Linux provides)", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "VmHWM:") {
			continue
		}
		f := strings.Fields(strings.TrimPrefix(line, "VmHWM:"))
		if len(f) != 2 || f[1] != "kB" {
			break
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			break
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("peak memory: no VmHWM line in /proc/self/status")
}

package eval

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/qatc/qatc/ort"
)

// BenchOptions configure Bench: one forward pass over a batch of Batch
// sources of SrcLen tokens and target prefixes of TgtLen tokens (BOS
// first), Warmup untimed passes, then Iters timed ones.
type BenchOptions struct {
	Batch, SrcLen, TgtLen int
	// Threads is the intra-op thread count BenchFile opens the session
	// with (0: onnxruntime's default); Bench only records it.
	Threads       int
	Warmup, Iters int
	Special       Special // zero value: DefaultSpecial
}

// BenchResult is the latency of one forward pass.
type BenchResult struct {
	Model   string `json:"model"`
	Batch   int    `json:"batch"`
	SrcLen  int    `json:"src_len"`
	TgtLen  int    `json:"tgt_len"`
	Threads int    `json:"threads"`
	Iters   int    `json:"iters"`
	// MedianMs and P90Ms are the median and 90th percentile (nearest
	// rank) of the timed passes; MeanMs their mean.
	MedianMs float64 `json:"median_ms"`
	P90Ms    float64 `json:"p90_ms"`
	MeanMs   float64 `json:"mean_ms"`
	// SentencesPerSec and TokensPerSec are Batch and Batch·TgtLen over
	// the median.
	SentencesPerSec float64 `json:"sentences_per_sec"`
	TokensPerSec    float64 `json:"tokens_per_sec"`
	// PeakRSSBytes is the process's peak resident memory (VmHWM) after
	// the runs: an upper bound on what the session needed, as it
	// includes everything the process held before.
	PeakRSSBytes int64 `json:"peak_rss_bytes"`
}

// BenchFile opens the model at path with opts.Threads threads and
// benchmarks it (see Bench).
func BenchFile(path string, roles Roles, opts BenchOptions) (*BenchResult, error) {
	sess, err := ort.OpenFile(path, &ort.Options{Threads: opts.Threads})
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	m, err := NewSeq2Seq(path, sess, roles)
	if err != nil {
		return nil, err
	}
	r, err := Bench(m, opts)
	if err != nil {
		return nil, err
	}
	r.Model = filepath.Base(path)
	return r, nil
}

// Bench times forward passes of m (see BenchAll).
func Bench(m *Seq2Seq, opts BenchOptions) (*BenchResult, error) {
	rs, err := BenchAll([]*Seq2Seq{m}, opts)
	if err != nil {
		return nil, err
	}
	return rs[0], nil
}

// BenchAll times forward passes of several models interleaved: each timed
// round runs every model once, so that a change in the machine's load
// (other processes, frequency scaling) affects all of them alike and their
// ratios stay meaningful. The ids are fixed pseudo-random tokens above the
// special ids, so every run computes the same thing.
func BenchAll(ms []*Seq2Seq, opts BenchOptions) ([]*BenchResult, error) {
	if opts.Batch < 1 || opts.SrcLen < 1 || opts.TgtLen < 1 || opts.Iters < 1 || opts.Warmup < 0 {
		return nil, fmt.Errorf("bench: batch %d, source length %d, target length %d, iterations %d must be at least 1 (warm-up %d at least 0)",
			opts.Batch, opts.SrcLen, opts.TgtLen, opts.Iters, opts.Warmup)
	}
	sp := opts.Special
	if sp == (Special{}) {
		sp = DefaultSpecial()
	}
	inputs := make([]map[string]*ort.Tensor, len(ms))
	for i, m := range ms {
		in, err := benchInputs(m, sp, opts)
		if err != nil {
			return nil, err
		}
		inputs[i] = in
		for range opts.Warmup {
			if _, err := m.Session.Run(in, m.Roles.Logits); err != nil {
				return nil, err
			}
		}
	}
	ms2 := make([][]float64, len(ms))
	for range opts.Iters {
		for i, m := range ms {
			t := time.Now()
			if _, err := m.Session.Run(inputs[i], m.Roles.Logits); err != nil {
				return nil, err
			}
			ms2[i] = append(ms2[i], float64(time.Since(t).Nanoseconds())/1e6)
		}
	}
	hwm, err := PeakRSS()
	if err != nil {
		return nil, err
	}
	out := make([]*BenchResult, len(ms))
	for i, m := range ms {
		r := &BenchResult{
			Model: m.Name, Batch: opts.Batch, SrcLen: opts.SrcLen, TgtLen: opts.TgtLen,
			Threads: opts.Threads, Iters: opts.Iters, PeakRSSBytes: hwm,
		}
		r.MedianMs, r.P90Ms, r.MeanMs = latencyStats(ms2[i])
		r.SentencesPerSec = float64(opts.Batch) / (r.MedianMs / 1000)
		r.TokensPerSec = float64(opts.Batch*opts.TgtLen) / (r.MedianMs / 1000)
		out[i] = r
	}
	return out, nil
}

// benchInputs makes m's fixed benchmark batch.
func benchInputs(m *Seq2Seq, sp Special, opts BenchOptions) (map[string]*ort.Tensor, error) {
	vocab, err := m.Vocab(sp)
	if err != nil {
		return nil, err
	}
	lo := max(sp.Pad, sp.BOS, sp.EOS) + 1
	if int64(vocab) <= lo {
		return nil, fmt.Errorf("bench: %s has a vocabulary of %d, too small for tokens above the special ids", m.Name, vocab)
	}
	x := uint64(0x9e3779b97f4a7c15)
	token := func() int64 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		return lo + int64(x%uint64(int64(vocab)-lo))
	}
	src := make([]int64, opts.Batch*opts.SrcLen)
	tgt := make([]int64, opts.Batch*opts.TgtLen)
	for b := 0; b < opts.Batch; b++ {
		for i := 0; i < opts.SrcLen; i++ {
			src[b*opts.SrcLen+i] = token()
		}
		src[(b+1)*opts.SrcLen-1] = sp.EOS
		tgt[b*opts.TgtLen] = sp.BOS
		for i := 1; i < opts.TgtLen; i++ {
			tgt[b*opts.TgtLen+i] = token()
		}
	}
	return map[string]*ort.Tensor{
		m.Roles.Src: ort.Int64([]int64{int64(opts.Batch), int64(opts.SrcLen)}, src),
		m.Roles.Tgt: ort.Int64([]int64{int64(opts.Batch), int64(opts.TgtLen)}, tgt),
	}, nil
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

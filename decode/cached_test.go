package decode

import (
	"fmt"
	"github.com/qatc/qatc/seq2seq"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/incremental"
	"github.com/qatc/qatc/testmodels"
	"github.com/qatc/qatc/testmodels/demo"
)

// tinySources draws n sources of 2 to 9 tokens (EOS last) for cfg.
func tinySources(cfg testmodels.Config, n int, seed uint64) [][]int64 {
	r := rand.New(rand.NewPCG(seed, 1))
	var srcs [][]int64
	for range n {
		s := make([]int64, 1+r.IntN(8))
		for i := range s {
			s[i] = 4 + r.Int64N(int64(cfg.Vocab-4))
		}
		srcs = append(srcs, append(s, testmodels.EOS))
	}
	return srcs
}

// openBoth returns the tiny model decoded by re-running it and with its
// incremental graphs built in memory.
func openBoth(t *testing.T, cfg testmodels.Config) (*Seq2Seq, *Incremental) {
	t.Helper()
	m, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ort.Open(m, &ort.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	full, err := NewSeq2Seq("tiny", s, seq2seq.Roles{})
	if err != nil {
		t.Fatal(err)
	}
	set, err := incremental.Build(m, incremental.Options{Pad: 0, BOS: testmodels.BOS, EOS: testmodels.EOS})
	if err != nil {
		t.Fatal(err)
	}
	inc, err := NewIncremental("tiny", &set.Dir, &ort.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inc.Close() })
	return full, inc
}

// TestIncrementalDecode decodes with the cache and by re-running the full
// model, greedily and with beams, in batches of several lengths and with
// several workers: the translations are the same, and so are their
// log-probabilities to float rounding.
func TestIncrementalDecode(t *testing.T) {
	cfg := testmodels.Tiny()
	full, inc := openBoth(t, cfg)
	srcs := tinySources(cfg, 17, 1)
	for _, beam := range []int{1, 3} {
		opts := Options{Beam: beam, MaxExtra: 6, BatchSize: 5}
		want, err := Decode(full, srcs, opts)
		if err != nil {
			t.Fatal(err)
		}
		for _, workers := range []int{1, 3} {
			opts.Workers = workers
			got, err := Decode(inc, srcs, opts)
			if err != nil {
				t.Fatal(err)
			}
			for i := range srcs {
				if !reflect.DeepEqual(got[i].IDs, want[i].IDs) || got[i].Finished != want[i].Finished || math.Abs(got[i].LogProb-want[i].LogProb) > 1e-4 {
					t.Errorf("beam %d, %d workers, sentence %d: cached %+v, re-run %+v", beam, workers, i, got[i], want[i])
				}
			}
		}
	}
}

// writeDir writes a set as an incremental directory.
func writeDir(t *testing.T, s *incremental.Set) string {
	t.Helper()
	dir := t.TempDir()
	for _, g := range s.Graphs() {
		if err := g.Graph.Save(filepath.Join(dir, g.File)); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := s.Config.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, seq2seq.ConfigFile), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestOpenIncremental opens a directory and checks the one-line errors for
// directories that cannot be decoded.
func TestOpenIncremental(t *testing.T) {
	build := func(cfg testmodels.Config) *incremental.Set {
		m, err := testmodels.Build(cfg)
		if err != nil {
			t.Fatal(err)
		}
		s, err := incremental.Build(m, incremental.Options{BOS: 2, EOS: 3})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	tiny := testmodels.Tiny()
	wide := tiny
	wide.Hidden, wide.Heads = 48, 4
	a, b, c := build(tiny), build(tiny), build(wide)
	good := writeDir(t, a)
	m, err := OpenIncremental(good, nil)
	if err != nil {
		t.Fatal(err)
	}
	hyps, err := Decode(m, tinySources(tiny, 4, 2), Options{MaxExtra: 3})
	m.Close()
	if err != nil || len(hyps) != 4 {
		t.Fatalf("decode: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(dir string)
		want string
	}{
		{"missing file", func(dir string) { os.Remove(filepath.Join(dir, seq2seq.DecoderWithPastFile)) }, "decoder_with_past_model.onnx is missing"},
		{"no config", func(dir string) { os.Remove(filepath.Join(dir, seq2seq.ConfigFile)) }, "no config.json"},
		{"another export", func(dir string) {
			if err := b.Decoder.Save(filepath.Join(dir, seq2seq.DecoderFile)); err != nil {
				t.Fatal(err)
			}
		}, "comes from another export"},
		{"another model", func(dir string) {
			g := c.DecoderWithPast
			g.SetMetadata(seq2seq.MetadataKey, "")
			if err := g.Save(filepath.Join(dir, seq2seq.DecoderWithPastFile)); err != nil {
				t.Fatal(err)
			}
		}, "different models"},
	} {
		dir := writeDir(t, a)
		tc.edit(dir)
		_, err := OpenIncremental(dir, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: got %v, want one line containing %q", tc.name, err, tc.want)
		}
	}
}

// bruteBeam is beam search written plainly for one sentence: every
// hypothesis is scored by running the full model over its whole prefix,
// with Decode's rules (2·beam candidates per hypothesis, EOS ends a
// hypothesis, LightSeq's length penalty, the stopping bound).
func bruteBeam(t *testing.T, m *Seq2Seq, src []int64, o Options) Hypothesis {
	t.Helper()
	o, err := o.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	k, sp := o.Beam, o.Special
	type hyp struct {
		ids []int64
		lp  float64
	}
	alive := []hyp{{ids: []int64{}}}
	var finished []Hypothesis
	limit := o.limit(len(src))
	for len(alive) > 0 {
		type cand struct {
			ids []int64
			lp  float64
			eos bool
		}
		var cands []cand
		// One forward pass of the whole model over every live prefix.
		var srcIDs, tgtIDs []int64
		for _, h := range alive {
			srcIDs = append(srcIDs, src...)
			tgtIDs = append(append(tgtIDs, sp.BOS), h.ids...)
		}
		n := int64(len(alive))
		all, v, err := m.NextLogits(ort.Int64([]int64{n, int64(len(src))}, srcIDs), ort.Int64([]int64{n, int64(len(tgtIDs)) / n}, tgtIDs))
		if err != nil {
			t.Fatal(err)
		}
		for r, h := range alive {
			logits := all[r*v : (r+1)*v]
			lse := 0.0
			mx := math.Inf(-1)
			for _, x := range logits {
				mx = math.Max(mx, float64(x))
			}
			for _, x := range logits {
				lse += math.Exp(float64(x) - mx)
			}
			lse = mx + math.Log(lse)
			for _, tok := range topN(logits, min(2*k, v)) {
				ids := append(append([]int64(nil), h.ids...), int64(tok))
				cands = append(cands, cand{ids, h.lp + float64(logits[tok]) - lse, int64(tok) == sp.EOS})
			}
		}
		for i := 1; i < len(cands); i++ { // stable insertion sort, best first
			for j := i; j > 0 && cands[j].lp > cands[j-1].lp; j-- {
				cands[j], cands[j-1] = cands[j-1], cands[j]
			}
		}
		length := len(alive[0].ids) + 1
		var next []hyp
		for _, c := range cands {
			if c.eos {
				finished = append(finished, Hypothesis{IDs: c.ids[:len(c.ids)-1], LogProb: c.lp, Score: c.lp * o.lengthNorm(length), Finished: true})
			} else if len(next) < k {
				next = append(next, hyp{c.ids, c.lp})
			}
		}
		if length >= limit {
			for _, h := range next {
				finished = append(finished, Hypothesis{IDs: h.ids, LogProb: h.lp, Score: h.lp * o.lengthNorm(length)})
			}
			next = nil
		}
		for i := 1; i < len(finished); i++ {
			for j := i; j > 0 && finished[j].Score > finished[j-1].Score; j-- {
				finished[j], finished[j-1] = finished[j-1], finished[j]
			}
		}
		if len(finished) > k {
			finished = finished[:k]
		}
		alive = next
		if len(alive) > 0 && len(finished) == k && alive[0].lp*o.lengthNorm(limit) <= finished[k-1].Score {
			break
		}
	}
	return finished[0]
}

// TestBeamBruteForce decodes 50 demo test sentences with a beam of 4 and
// LightSeq's length penalty through the demo model's cache, in batches,
// and checks each translation against the plain beam search over the
// full model.
func TestBeamBruteForce(t *testing.T) {
	tok, err := seq2seq.LoadSentencePiece("../testmodels/demo/data/spm.model")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, p := range demo.Generate(3, 50) { // the test split's seed
		lines = append(lines, p.Src)
	}
	srcs, err := seq2seq.EncodeSources(lines, tok, "test", seq2seq.DefaultSpecial(), false)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Load(ModelSpec{Path: "../testmodels/demo/data/model.onnx"}, seq2seq.DefaultSpecial(), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if !l.Cached {
		t.Fatalf("the demo model decodes without a cache: %s", l.Note)
	}
	opts := Options{Beam: 4, LengthPenalty: DefaultLengthPenalty, Workers: 2}
	got, err := Decode(l.Model, srcs, opts)
	if err != nil {
		t.Fatal(err)
	}
	full := rerunModel(t, "../testmodels/demo/data/model.onnx")
	for i, src := range srcs {
		want := bruteBeam(t, full, src, opts)
		if !reflect.DeepEqual(got[i].IDs, want.IDs) || math.Abs(got[i].Score-want.Score) > 1e-4 {
			t.Errorf("sentence %d: cached beam %v (score %.5f), plain beam %v (score %.5f)", i, got[i].IDs, got[i].Score, want.IDs, want.Score)
		}
	}
}

// rerunModel opens a full-sequence file to be run whole.
func rerunModel(t *testing.T, path string) *Seq2Seq {
	t.Helper()
	s, err := ort.OpenFile(path, &ort.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	m, err := NewSeq2Seq(path, s, seq2seq.Roles{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestDecodeMemory decodes the 500 demo test sentences with the demo
// model's cache (built in memory), 2 workers, in a child process of its
// own, and checks its peak resident memory: within 1.5× of what the model
// took once loaded (sessions made, one sentence decoded) plus the cache
// (each worker's batch of keys and values, self-attention ones in two
// buffers, at the longest source and translation).
func TestDecodeMemory(t *testing.T) {
	if os.Getenv("QATC_EVAL_MEMORY_CHILD") == "1" {
		decodeMemoryChild()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestDecodeMemory$", "-test.v")
	cmd.Env = append(os.Environ(), "QATC_EVAL_MEMORY_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var loaded, peak, cache int64
	for _, l := range strings.Split(string(out), "\n") {
		if _, err := fmt.Sscanf(strings.TrimSpace(l), "memory: loaded %d peak %d cache %d", &loaded, &peak, &cache); err == nil {
			break
		}
	}
	if loaded == 0 {
		t.Fatalf("the child reported no figures:\n%s", out)
	}
	ratio := float64(peak) / float64(loaded+cache)
	t.Logf("loaded %.1f MiB, cache %.1f MiB, peak %.1f MiB: %.2f× loaded+cache", mb(loaded), mb(cache), mb(peak), ratio)
	if ratio > 1.5 {
		t.Errorf("peak RSS %.1f MiB is %.2f× the loaded model (%.1f MiB) plus the cache (%.1f MiB); at most 1.5×", mb(peak), ratio, mb(loaded), mb(cache))
	}
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

// decodeMemoryChild measures in the child process and prints the figures.
func decodeMemoryChild() {
	status := func(key string) int64 {
		b, _ := os.ReadFile("/proc/self/status")
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[0] == key+":" {
				var kb int64
				fmt.Sscan(f[1], &kb)
				return kb << 10
			}
		}
		return 0
	}
	tok, err := seq2seq.LoadSentencePiece("../testmodels/demo/data/spm.model")
	if err != nil {
		panic(err)
	}
	var lines []string
	for _, p := range demo.Generate(3, 500) {
		lines = append(lines, p.Src)
	}
	srcs, err := seq2seq.EncodeSources(lines, tok, "test", seq2seq.DefaultSpecial(), false)
	if err != nil {
		panic(err)
	}
	l, err := Load(ModelSpec{Path: "../testmodels/demo/data/model.onnx"}, seq2seq.DefaultSpecial(), 1)
	if err != nil {
		panic(err)
	}
	if _, err := Decode(l.Model, srcs[:1], Options{}); err != nil {
		panic(err)
	}
	runtime.GC()
	loaded := status("VmRSS")
	const workers, batch = 2, 32
	hyps, err := Decode(l.Model, srcs, Options{Workers: workers, BatchSize: batch})
	if err != nil {
		panic(err)
	}
	peak := status("VmHWM")
	cfg := l.Incremental.Config
	src, tgt := 0, 0
	for i, s := range srcs {
		src, tgt = max(src, len(s)), max(tgt, len(hyps[i].IDs)+1)
	}
	cache := int64(workers*batch*cfg.DecoderLayers*2*cfg.Hidden*4) * int64(2*tgt+src)
	fmt.Printf("memory: loaded %d peak %d cache %d\n", loaded, peak, cache)
}

// TestMaxPositions decodes sources long enough for their length limit to
// pass the model's position table: the translations stop at the table's
// end instead of failing.
func TestMaxPositions(t *testing.T) {
	cfg := testmodels.Tiny()
	cfg.MaxLen = 12
	_, inc := openBoth(t, cfg)
	src := []int64{5, 6, 7, 8, 9, 10, 3}
	for _, beam := range []int{1, 2} {
		hyps, err := Decode(inc, [][]int64{src}, Options{Beam: beam})
		if err != nil {
			t.Fatalf("beam %d: %v", beam, err)
		}
		if len(hyps[0].IDs) > 12 {
			t.Errorf("beam %d: %d tokens past the 12 positions", beam, len(hyps[0].IDs))
		}
	}
}

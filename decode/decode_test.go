package decode

import (
	"fmt"
	"github.com/qatc/qatc/seq2seq"
	"math"
	"reflect"
	"testing"

	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/testmodels"
)

// Token ids of the bigram test model (testmodels.Bigram).
const (
	tA, tB, tC, tD, tE, tF = testmodels.BigramA, testmodels.BigramB, testmodels.BigramC, testmodels.BigramD, testmodels.BigramE, testmodels.BigramF
	bigramVocab            = testmodels.BigramVocab
)

func openBigram(t *testing.T) *Seq2Seq {
	t.Helper()
	s, err := ort.Open(testmodels.Bigram(false), &ort.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	m, err := NewSeq2Seq("bigram", s, seq2seq.Roles{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestDecodeBigram(t *testing.T) {
	m := openBigram(t)
	if m.Roles != (seq2seq.Roles{Src: "src_ids", Tgt: "tgt_ids", Logits: "logits"}) {
		t.Fatalf("roles %+v", m.Roles)
	}
	if v, err := m.Vocab(seq2seq.DefaultSpecial()); err != nil || v != bigramVocab {
		t.Fatalf("vocab %d, %v", v, err)
	}
	src := [][]int64{{tA, 3}}
	lp := func(p float64) float64 { return math.Log(p) }
	for _, tc := range []struct {
		name    string
		opts    Options
		ids     []int64
		logProb float64
		score   float64
	}{
		// Greedy follows the locally best token: A (0.6), C (0.6), EOS.
		{"greedy", Options{}, []int64{tA, tC}, lp(0.36), lp(0.36)},
		// A beam of 2 keeps B, whose EOS (total 0.4) beats A C EOS (0.36).
		{"beam 2", Options{Beam: 2}, []int64{tB}, lp(0.4), lp(0.4)},
		{"beam 4", Options{Beam: 4}, []int64{tB}, lp(0.4), lp(0.4)},
		// With α = 1 the scores are logP·6/(5+L), L counting EOS:
		// B EOS: ln 0.4·6/7 = -0.785; A C EOS: ln 0.36·6/8 = -0.766, so
		// the longer hypothesis wins.
		{"beam 2 α=1", Options{Beam: 2, LengthPenalty: 1}, []int64{tA, tC}, lp(0.36), lp(0.36) * 6 / 8},
		// At α = 0.6 (LightSeq's default) B still wins:
		// ln 0.4·(7/6)^-0.6 = -0.835 > ln 0.36·(8/6)^-0.6 = -0.861.
		{"beam 2 α=0.6", Options{Beam: 2, LengthPenalty: 0.6}, []int64{tB}, lp(0.4), lp(0.4) * math.Pow(7.0/6, -0.6)},
		// Greedy scores with the penalty too, but never changes its path.
		{"greedy α=1", Options{LengthPenalty: 1}, []int64{tA, tC}, lp(0.36), lp(0.36) * 6 / 8},
	} {
		hyps, err := Decode(m, src, tc.opts)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		h := hyps[0]
		if !reflect.DeepEqual(h.IDs, tc.ids) || !h.Finished ||
			math.Abs(h.LogProb-tc.logProb) > 1e-6 || math.Abs(h.Score-tc.score) > 1e-6 {
			t.Errorf("%s: got %+v, want ids %v log-prob %.6f score %.6f", tc.name, h, tc.ids, tc.logProb, tc.score)
		}
	}
}

// A source starting with E makes F the best token at every step, so
// decoding stops at the length limit, without EOS.
func TestDecodeMaxLength(t *testing.T) {
	m := openBigram(t)
	src := [][]int64{{tE, tA, 3}} // 3 tokens
	for _, tc := range []struct {
		opts Options
		n    int
	}{
		{Options{}, 3 + DefaultMaxExtra},
		{Options{MaxExtra: 4}, 7},
		{Options{MaxLen: 5}, 5},
		{Options{MaxExtra: 4, MaxLen: 6}, 6},
		{Options{MaxExtra: 4, MaxLen: 60}, 7},
		{Options{Beam: 3, MaxExtra: 2}, 5},
	} {
		hyps, err := Decode(m, src, tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		h := hyps[0]
		if len(h.IDs) != tc.n || h.Finished {
			t.Errorf("%+v: got %d tokens (finished %v), want %d unfinished", tc.opts, len(h.IDs), h.Finished, tc.n)
		}
		for _, id := range h.IDs {
			if id != tF {
				t.Errorf("%+v: ids %v, want all %d", tc.opts, h.IDs, tF)
				break
			}
		}
	}
}

// Batched decoding (sorted by length, padded, finished rows leaving the
// batch) gives each sentence what decoding it alone gives, in input order.
func TestDecodeBatchOrder(t *testing.T) {
	m := openBigram(t)
	srcs := [][]int64{{tA, 3}, {tE, 3}, {tB, tC, tD, 3}, {tE, tE, tE, tE, tE, 3}, {3}, {}}
	for _, beam := range []int{1, 3} {
		var done []int
		opts := Options{Beam: beam, MaxExtra: 3, BatchSize: 4, Progress: func(d, n int) { done = append(done, d, n) }}
		got, err := Decode(m, srcs, opts)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(done, []int{4, 6, 6, 6}) {
			t.Errorf("beam %d: progress %v, want [4 6 6 6]", beam, done)
		}
		opts.Progress = nil
		for i, s := range srcs {
			alone, err := Decode(m, [][]int64{s}, opts)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got[i], alone[0]) {
				t.Errorf("beam %d, sentence %d: batched %+v, alone %+v", beam, i, got[i], alone[0])
			}
		}
		if want := []int64{tF, tF, tF, tF, tF}; !reflect.DeepEqual(got[1].IDs, want) {
			t.Errorf("beam %d: sentence 1 = %v, want %v (source 2 tokens + 3)", beam, got[1].IDs, want)
		}
	}
}

func TestDecodeOptionErrors(t *testing.T) {
	m := openBigram(t)
	for _, o := range []Options{
		{Beam: -1}, {LengthPenalty: -0.5}, {MaxExtra: -1}, {BatchSize: -2},
		{Special: seq2seq.Special{Pad: 0, BOS: 3, EOS: 3}},
		{Special: seq2seq.Special{Pad: 0, BOS: 2, EOS: 99}},
	} {
		if _, err := Decode(m, [][]int64{{tA, 3}}, o); err == nil {
			t.Errorf("%+v: no error", o)
		} else {
			t.Logf("%+v: %v", o, err)
		}
	}
}

// The PyTorch reference model: roles found by shape and name, the first
// decoding step's logits equal PyTorch's at position 0 (the decoder is
// causal), batched greedy decoding equals sentence-by-sentence decoding
// despite padding, and beam search's log-probability is the one a
// teacher-forced pass over its output computes.
func TestDecodeTorchTransformer(t *testing.T) {
	s, err := ort.OpenFile(fixture.Torch(t, fixture.Transformer17), &ort.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m, err := NewSeq2Seq(fixture.Transformer17, s, seq2seq.Roles{})
	if err != nil {
		t.Fatal(err)
	}
	if m.Roles != (seq2seq.Roles{Src: "src_ids", Tgt: "tgt_ids", Logits: "logits"}) {
		t.Fatalf("roles %+v", m.Roles)
	}
	if v, _ := m.Vocab(seq2seq.DefaultSpecial()); v != 512 {
		t.Fatalf("vocab %d, want 512", v)
	}
	src, err := ort.ReadNpy(fixture.Torch(t, fixture.TransformerSrc))
	if err != nil {
		t.Fatal(err)
	}
	ref, err := ort.ReadNpy(fixture.Torch(t, fixture.TransformerLogits))
	if err != nil {
		t.Fatal(err)
	}
	rows, cols := int(src.Shape[0]), int(src.Shape[1])
	first, v, err := m.NextLogits(src, ort.Int64([]int64{int64(rows), 1}, []int64{2, 2}))
	if err != nil {
		t.Fatal(err)
	}
	steps := int(ref.Shape[1])
	worst := 0.0
	for r := 0; r < rows; r++ {
		want := ref.Float32s()[r*steps*v : r*steps*v+v]
		for k := range want {
			worst = math.Max(worst, math.Abs(float64(first[r*v+k]-want[k])))
		}
	}
	if worst > 1e-4 {
		t.Errorf("first-step logits differ from PyTorch's by %g", worst)
	}

	// The sources without their padding.
	var srcs [][]int64
	for r := 0; r < rows; r++ {
		row := src.Int64s()[r*cols : (r+1)*cols]
		n := len(row)
		for n > 0 && row[n-1] == 0 {
			n--
		}
		srcs = append(srcs, row[:n])
	}
	for _, beam := range []int{1, 4} {
		opts := Options{Beam: beam, MaxExtra: 6, LengthPenalty: 0.6}
		got, err := Decode(m, srcs, opts)
		if err != nil {
			t.Fatal(err)
		}
		for i := range srcs {
			alone, err := Decode(m, srcs[i:i+1], opts)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got[i].IDs, alone[0].IDs) || math.Abs(got[i].LogProb-alone[0].LogProb) > 1e-4 {
				t.Errorf("beam %d, sentence %d: batched %+v, alone %+v", beam, i, got[i], alone[0])
			}
			// Teacher-forced log-probability of the hypothesis.
			seq := append([]int64{2}, got[i].IDs...)
			out, err := s.Run(map[string]*ort.Tensor{
				"src_ids": ort.Int64([]int64{1, int64(len(srcs[i]))}, srcs[i]),
				"tgt_ids": ort.Int64([]int64{1, int64(len(seq))}, seq),
			}, "logits")
			if err != nil {
				t.Fatal(err)
			}
			l := out["logits"].Float32s()
			lp := 0.0
			targets := append(append([]int64(nil), got[i].IDs...), 3)
			if !got[i].Finished {
				targets = targets[:len(targets)-1]
			}
			for p, tok := range targets {
				row := l[p*v : (p+1)*v]
				lp += float64(row[tok]) - logSumExp(row)
			}
			if math.Abs(lp-got[i].LogProb) > 1e-4 {
				t.Errorf("beam %d, sentence %d: log-prob %.6f, teacher-forced %.6f", beam, i, got[i].LogProb, lp)
			}
			n := len(targets)
			if want := lp * math.Pow((5+float64(n))/6, -0.6); math.Abs(want-got[i].Score) > 1e-4 {
				t.Errorf("beam %d, sentence %d: score %.6f, want %.6f", beam, i, got[i].Score, want)
			}
			t.Logf("beam %d, sentence %d: %v (log-prob %.4f, finished %v)", beam, i, got[i].IDs, got[i].LogProb, got[i].Finished)
		}
	}
}

// BenchmarkDecodeTorch decodes the reference model's two sources (up to 15
// tokens each, as the random model never emits EOS), greedily and with a
// beam of 4, one thread.
func BenchmarkDecodeTorch(b *testing.B) {
	s, err := ort.OpenFile(fixture.Torch(b, fixture.Transformer17), &ort.Options{Threads: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	m, err := NewSeq2Seq("torch", s, seq2seq.Roles{})
	if err != nil {
		b.Fatal(err)
	}
	srcs := [][]int64{{5, 6, 7, 8, 9, 10, 11, 12, 3}, {20, 21, 22, 23, 24, 3}}
	for _, beam := range []int{1, 4} {
		b.Run(fmt.Sprintf("beam%d", beam), func(b *testing.B) {
			for range b.N {
				if _, err := Decode(m, srcs, Options{Beam: beam, MaxExtra: 6}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

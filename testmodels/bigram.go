package testmodels

import (
	"math"

	"github.com/qatc/qatc/graph"
)

// Token ids of the Bigram model: A to F, and its vocabulary size (pad 0,
// bos 2 and eos 3, seq2seq.DefaultSpecial).
const (
	BigramA, BigramB, BigramC, BigramD, BigramE, BigramF = 4, 5, 6, 7, 8, 9
	BigramVocab                                          = 10
)

// impossible is the logit of a token Bigram never emits: its
// probability, e^-10000 relative to the others, is 0 in float64.
const impossible = -1e4

// Bigram builds a seq2seq graph whose logits at each target position
// depend only on the previous token and the source's first token:
//
//	logits[b, t, :] = next[tgt[b, t], :] + bias[src[b, 0], :]
//
// next holds log-probabilities: after BOS, A 0.6 and B 0.4; after A, C 0.6
// and D 0.4; after any other token EOS for sure. bias is zero except for a
// source starting with E, which makes F win every step (so decoding runs
// to the length limit). Greedy decoding of a source starting with A reads
// A C (probability 0.36); the best sequence is B (0.4), which beam search
// finds. With swap, C and D trade places after A (greedy reads A D).
func Bigram(swap bool) *graph.Model {
	const v = BigramVocab
	next := make([]float32, v*v)
	bias := make([]float32, v*v)
	for i := range next {
		next[i] = impossible
	}
	for prev := 0; prev < v; prev++ {
		next[prev*v+3] = 0 // EOS
	}
	set := func(prev int, probs map[int]float64) {
		for k := 0; k < v; k++ {
			next[prev*v+k] = impossible
		}
		for k, p := range probs {
			next[prev*v+k] = float32(math.Log(p))
		}
	}
	set(2, map[int]float64{BigramA: 0.6, BigramB: 0.4})
	if swap {
		set(BigramA, map[int]float64{BigramC: 0.4, BigramD: 0.6})
	} else {
		set(BigramA, map[int]float64{BigramC: 0.6, BigramD: 0.4})
	}
	bias[BigramE*v+BigramF] = 2e4

	m := graph.New("bigram", 17)
	m.AddInput("src_ids", graph.Int64, []int64{-1, -1}, "batch", "src_len")
	m.AddInput("tgt_ids", graph.Int64, []int64{-1, -1}, "batch", "tgt_len")
	m.AddInitializer(graph.FloatTensor("next", []int64{v, v}, next))
	m.AddInitializer(graph.FloatTensor("bias", []int64{v, v}, bias))
	m.AddInitializer(graph.Int64Tensor("zero", []int64{1}, []int64{0}))
	m.AddInitializer(graph.Int64Tensor("one", []int64{1}, []int64{1}))
	m.Op("Gather", "", []string{"next", "tgt_ids"}, []string{"bigram"}, graph.AttrInt("axis", 0))
	m.Op("Slice", "", []string{"src_ids", "zero", "one", "one"}, []string{"first"})
	m.Op("Gather", "", []string{"bias", "first"}, []string{"src_bias"}, graph.AttrInt("axis", 0))
	m.Op("Add", "", []string{"bigram", "src_bias"}, []string{"logits"})
	m.AddOutput("logits", graph.Float, []int64{-1, -1, v}, "batch", "tgt_len")
	return m
}

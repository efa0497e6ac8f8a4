package decode

import (
	"fmt"
	"sync"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
)

// The scoring head: what a decoding step needs of each row's logits, its
// k most likely tokens and their log-probabilities, computed by
// onnxruntime's vectorized kernels in one small session:
//
//	TopK(logits, k) → indices;  GatherElements(LogSoftmax(logits), indices) → log-probs
//
// Ranking the logits themselves keeps the argmax exact (ties go to the
// lower index, as ONNX's TopK orders them); over a vocabulary of
// thousands, a step then hands k numbers per row to Go instead of
// exponentiating every logit there.
var head struct {
	once sync.Once
	s    *ort.Session
	err  error
}

// headModel builds the head graph: logits [rows, vocab] and k [1] in,
// log_probs [rows, k] and indices [rows, k] out.
func headModel() *graph.Model {
	m := graph.New("qatc-decode-head", 17)
	m.AddInput("logits", graph.Float, []int64{-1, -1}, "rows", "vocab")
	m.AddInput("k", graph.Int64, []int64{1})
	m.Op("TopK", "topk", []string{"logits", "k"}, []string{"top_logits", "indices"},
		graph.AttrInt("axis", -1), graph.AttrInt("largest", 1), graph.AttrInt("sorted", 1))
	m.Op("LogSoftmax", "log_softmax", []string{"logits"}, []string{"all_log_probs"}, graph.AttrInt("axis", -1))
	m.Op("GatherElements", "gather", []string{"all_log_probs", "indices"}, []string{"log_probs"}, graph.AttrInt("axis", -1))
	m.AddOutput("log_probs", graph.Float, []int64{-1, -1}, "rows", "k")
	m.AddOutput("indices", graph.Int64, []int64{-1, -1}, "rows", "k")
	return m
}

// topK returns, for each of the rows of logits [rows × v], its k best
// tokens (largest logit first) and their log-probabilities, row-major.
func topK(logits []float32, rows, v, k int) ([]int64, []float32, error) {
	head.once.Do(func() { head.s, head.err = ort.Open(headModel(), &ort.Options{Threads: 1}) })
	if head.err != nil {
		return nil, nil, fmt.Errorf("decoding head: %w", head.err)
	}
	out, err := head.s.Run(map[string]*ort.Tensor{
		"logits": ort.Float32([]int64{int64(rows), int64(v)}, logits),
		"k":      ort.Int64([]int64{1}, []int64{int64(k)}),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("decoding head: %w", err)
	}
	return out["indices"].Int64s(), out["log_probs"].Float32s(), nil
}

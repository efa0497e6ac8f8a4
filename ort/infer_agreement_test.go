package ort_test

import (
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/ort"
)

// TestInferAgreement checks graph's shape inference against onnxruntime:
// every value a node of the shared models computes is exposed as an output
// and run at two input shapes; the inferred element type and rank must
// match what onnxruntime produces, and so must every dim inferred static
// or named after an input dim (batch, src_len, tgt_len).
func TestInferAgreement(t *testing.T) {
	src, err := ort.ReadNpy(fixture.Torch(t, fixture.TransformerSrc))
	if err != nil {
		t.Fatal(err)
	}
	tgt, err := ort.ReadNpy(fixture.Torch(t, fixture.TransformerTgt))
	if err != nil {
		t.Fatal(err)
	}
	// The shared batch, and its first row cut to other lengths.
	feeds := []map[string]*ort.Tensor{
		{"src_ids": src, "tgt_ids": tgt},
		{"src_ids": ort.Int64([]int64{1, 5}, src.Int64s()[:5]), "tgt_ids": ort.Int64([]int64{1, 4}, tgt.Int64s()[:4])},
	}
	for _, model := range []string{fixture.Transformer14, fixture.Transformer17} {
		t.Run(model, func(t *testing.T) {
			m, err := graph.Load(fixture.Torch(t, model))
			if err != nil {
				t.Fatal(err)
			}
			info, err := m.InferShapes()
			if err != nil {
				t.Fatal(err)
			}
			var values []string
			for _, n := range m.Graph().Node {
				for _, o := range n.Output {
					if o != "" {
						values = append(values, o)
					}
				}
			}
			s, err := ort.Open(m, &ort.Options{Threads: 1, Outputs: values})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			bad, static, named := 0, 0, 0
			for _, v := range values {
				for _, d := range info[v].Dims {
					if d.Static() {
						static++
					} else if d.Param == "batch" || d.Param == "src_len" || d.Param == "tgt_len" {
						named++
					}
				}
			}
			for _, feed := range feeds {
				// The sizes of the inputs' named dims in this feed.
				sizes := map[string]int64{}
				for _, in := range s.Inputs() {
					for i, p := range in.DimParams {
						if p != "" {
							sizes[p] = feed[in.Name].Shape[i]
						}
					}
				}
				out, err := s.Run(feed, values...)
				if err != nil {
					t.Fatal(err)
				}
				for _, v := range values {
					got, want := out[v], info[v]
					if msg := disagreement(want, got, sizes); msg != "" {
						bad++
						if bad <= 40 {
							t.Errorf("%s (%s): inferred %s, onnxruntime gives %s: %s", v, m.Producer(v).OpType, want, got, msg)
						}
					}
				}
			}
			if bad > 40 {
				t.Errorf("... %d disagreements in all", bad)
			}
			t.Logf("%d values checked at %d input shapes: %d static dims, %d dims named after an input dim", len(values), len(feeds), static, named)
		})
	}
}

// disagreement says how inference (want) and the actual tensor differ, or
// returns "" when they agree.
func disagreement(want graph.TensorInfo, got *ort.Tensor, sizes map[string]int64) string {
	switch {
	case want.Elem != got.DType():
		return "element type differs"
	case !want.RankKnown:
		return "rank not inferred"
	case want.Rank() != len(got.Shape):
		return "rank differs"
	}
	for i, d := range want.Dims {
		if d.Static() && d.Value != got.Shape[i] {
			return "static dim " + d.String() + " differs"
		}
		if n, ok := sizes[d.Param]; ok && !d.Static() && n != got.Shape[i] {
			return "dim " + d.Param + " differs"
		}
	}
	return ""
}

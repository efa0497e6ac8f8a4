package seq2seq

import (
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/testmodels"
)

func TestDescribe(t *testing.T) {
	m, err := testmodels.Build(testmodels.Tiny())
	if err != nil {
		t.Fatal(err)
	}
	r, err := Describe(m, Roles{})
	if err != nil {
		t.Fatal(err)
	}
	if want := (Model{Roles: Roles{Src: "src_ids", Tgt: "tgt_ids", Logits: "logits"}, Vocab: 64, SrcPositions: 64, TgtPositions: 64}); r != want {
		t.Errorf("roles %+v, want %+v", r, want)
	}
	// Named roles win over the name heuristics.
	r, err = Describe(m, Roles{Src: "tgt_ids"})
	if err != nil || r.Src != "tgt_ids" || r.Tgt != "src_ids" {
		t.Errorf("roles %+v, %v; want the named source", r, err)
	}

	bad := graph.New("bad", 17)
	bad.AddInput("a", graph.Int64, []int64{-1, -1})
	bad.AddInput("b", graph.Int64, []int64{-1, -1})
	bad.AddOutput("probs", graph.Float, []int64{-1, 10})
	for _, tc := range []struct {
		m    *graph.Model
		want Roles
		err  string
	}{
		{bad, Roles{}, "the model has no logits output (a float [batch, tgt_len, vocab] tensor) among probs"},
		{bad, Roles{Logits: "logits"}, `model has no output "logits"; its outputs are probs`},
		{bad, Roles{Src: "x"}, `model has no input "x"; its inputs are a, b`},
		{m, Roles{Src: "position_embedding"}, `model has no input "position_embedding"`},
	} {
		if _, err := Describe(tc.m, tc.want); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("Describe(%+v): error %v, want %q", tc.want, err, tc.err)
		}
	}
	one := graph.New("one", 17)
	one.AddInput("ids", graph.Int64, []int64{-1, -1})
	one.AddOutput("logits", graph.Float, []int64{-1, -1, 10})
	if _, err := Describe(one, Roles{}); err == nil || !strings.Contains(err.Error(), "--src-input and --tgt-input") {
		t.Errorf("one input: error %v", err)
	}
}

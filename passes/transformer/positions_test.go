package transformer

import (
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/testmodels"
)

func TestPositions(t *testing.T) {
	cfg := testmodels.Tiny()
	cfg.MaxLen = 48
	fp32, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	qat, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := quantize.Insert(qat, quantize.DefaultParams()); err != nil {
		t.Fatal(err)
	}
	// fairseq's layout: positions gathered from a table whose first two
	// rows are skipped by a slice, after a Cast of the ids.
	fs := graph.New("fairseq", 17)
	fs.AddInput("ids", graph.Int64, []int64{-1, -1}, "batch", "len")
	fs.AddInitializer(graph.FloatTensor("tokens", []int64{10, 4}, make([]float32, 40)))
	fs.AddInitializer(graph.FloatTensor("table", []int64{130, 4}, make([]float32, 520)))
	fs.AddInitializer(graph.Int64Tensor("two", []int64{1}, []int64{2}))
	fs.AddInitializer(graph.Int64Tensor("big", []int64{1}, []int64{1 << 20}))
	fs.AddInitializer(graph.FloatTensor("scale", nil, []float32{2}))
	fs.Op("Cast", "", []string{"ids"}, []string{"ids32"}, graph.AttrInt("to", 6))
	fs.Op("Gather", "", []string{"tokens", "ids32"}, []string{"rows"})
	fs.Op("Mul", "", []string{"rows", "scale"}, []string{"scaled"})
	fs.Op("Slice", "", []string{"table", "two", "big"}, []string{"rest"})
	fs.Op("Gather", "", []string{"rest", "ids"}, []string{"pos"})
	fs.Op("Add", "", []string{"scaled", "pos"}, []string{"x"})
	fs.AddOutput("x", graph.Float, nil)
	// Computed positions: no table, no limit.
	sin := graph.New("sinusoids", 17)
	sin.AddInput("ids", graph.Int64, []int64{-1, -1}, "batch", "len")
	sin.AddInput("pe", graph.Float, []int64{-1, 4}, "len")
	sin.AddInitializer(graph.FloatTensor("tokens", []int64{10, 4}, make([]float32, 40)))
	sin.Op("Gather", "", []string{"tokens", "ids"}, []string{"rows"})
	sin.Op("Add", "", []string{"rows", "pe"}, []string{"x"})
	sin.AddOutput("x", graph.Float, nil)
	for _, tc := range []struct {
		name  string
		m     *graph.Model
		input string
		want  int
	}{
		{"testmodel source", fp32, "src_ids", 48},
		{"testmodel target", fp32, "tgt_ids", 48},
		{"QAT testmodel", qat, "src_ids", 48},
		{"fairseq offset", fs, "ids", 128},
		{"computed positions", sin, "ids", 0},
		{"not an ids input", fp32, "nothing", 0},
	} {
		if got := Positions(tc.m, tc.input); got != tc.want {
			t.Errorf("%s: Positions = %d, want %d", tc.name, got, tc.want)
		}
	}
}

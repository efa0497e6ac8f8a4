package autodiff_test

import (
	"math"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/autodiff"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/testmodels"
)

// TestRecompute checks Options.Recompute on a QAT testmodel (shared,
// transposed embedding table, NeurST's quantizers): the loss and every
// gradient are bit for bit those of the graph without it; each
// fake-quantized weight of the forward pass is read by the forward nodes
// alone; and every alias input names a parameter.
func TestRecompute(t *testing.T) {
	cfg, m := tinyQAT(t)
	const rows, srcLen, tgtLen = 3, 9, 7
	src, tgt := testmodels.RandomBatch(cfg, rows, srcLen, tgtLen, 5)
	labels := append(append([]int64(nil), tgt[1:]...), cfg.PadID)
	feeds := map[string]*ort.Tensor{
		"src_ids": ort.Int64([]int64{rows, srcLen}, src),
		"tgt_ids": ort.Int64([]int64{rows, tgtLen}, tgt),
		"labels":  ort.Int64([]int64{rows, tgtLen}, labels),
	}
	for _, init := range m.Graph().Initializer {
		if graph.TensorType(init) == graph.Float {
			v, err := graph.Floats(init)
			if err != nil {
				t.Fatal(err)
			}
			feeds[init.Name] = ort.Float32(init.Dims, v)
		}
	}
	results := map[bool]map[string]*ort.Tensor{}
	var info *autodiff.Info
	for _, recompute := range []bool{false, true} {
		tm, in, err := autodiff.Build(m, autodiff.Options{Loss: autodiff.Loss{LabelSmoothing: 0.1, PadID: cfg.PadID}, Recompute: recompute})
		if err != nil {
			t.Fatal(err)
		}
		run := map[string]*ort.Tensor{}
		for _, v := range tm.Graph().Input {
			run[v.Name] = feeds[v.Name]
		}
		for _, a := range in.Aliases {
			if feeds[a.Param] == nil || run[a.Input] != nil {
				t.Fatalf("alias %s of %s: not a parameter's alias", a.Input, a.Param)
			}
			run[a.Input] = feeds[a.Param]
		}
		for name, v := range run {
			if v == nil {
				t.Fatalf("recompute %v: no feed for input %s", recompute, name)
			}
		}
		s, err := ort.Open(tm, nil)
		if err != nil {
			t.Fatal(err)
		}
		out, err := s.Run(run)
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		results[recompute] = out
		if recompute {
			info = in
			weights := 0
			for _, n := range m.Graph().Node {
				if n.OpType != "DequantizeLinear" {
					continue
				}
				if u, _ := quantize.Match(m, n); u == nil || m.Initializer(u.Tensor) == nil {
					continue
				}
				weights++
				if got, want := len(tm.Consumers(n.Output[0])), len(m.Consumers(n.Output[0])); got != want {
					t.Errorf("fake-quantized weight %s has %d readers in the training graph, %d in the model", n.Output[0], got, want)
				}
			}
			if weights == 0 || len(in.Aliases) == 0 {
				t.Fatalf("%d weight quantizers, %d aliases", weights, len(in.Aliases))
			}
		}
	}
	names := []string{info.Loss}
	for _, p := range info.Params {
		names = append(names, p.Grad)
	}
	for _, name := range names {
		a, b := results[false][name].Float32s(), results[true][name].Float32s()
		if len(a) != len(b) {
			t.Fatalf("%s: %d values without recomputing, %d with", name, len(a), len(b))
		}
		for i := range a {
			if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
				t.Fatalf("%s[%d]: %g without recomputing, %g with", name, i, a[i], b[i])
			}
		}
	}
	t.Logf("%d parameters, %d aliases, loss %g", len(info.Params), len(info.Aliases), results[true][info.Loss].Float32s()[0])
}

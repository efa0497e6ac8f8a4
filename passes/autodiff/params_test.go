package autodiff_test

import (
	"math"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/autodiff"
)

// paramModel: logits = (x·W + b + pe[:, :3]·0 + mask) · Wcopyᵀ-ish, with
// constants that must not become parameters.
func paramModel() *graph.Model {
	m := graph.New("params", 17)
	m.AddInput("x", graph.Float, []int64{1, 2, 2})
	m.AddInitializer(graph.FloatTensor("W", []int64{2, 3}, []float32{1, 2, 3, 4, 5, 6}))
	m.AddInitializer(graph.FloatTensor("W_copy", []int64{2, 3}, []float32{1, 2, 3, 4, 5, 6}))
	m.AddInitializer(graph.FloatTensor("W_t", []int64{3, 2}, []float32{1, 4, 2, 5, 3, 6}))
	m.AddInitializer(graph.FloatTensor("zeros_a", []int64{3}, []float32{0, 0, 0}))
	m.AddInitializer(graph.FloatTensor("zeros_b", []int64{3}, []float32{0, 0, 0}))
	m.AddInitializer(graph.FloatTensor("scale", nil, []float32{0.5}))
	m.AddInitializer(graph.FloatTensor("act_clip_max", nil, []float32{16}))
	m.AddInitializer(graph.FloatTensor("pe", []int64{2, 4}, []float32{0, 0, 1, 1, 0.84, 0.01, 0.54, 0.99}))
	m.AddInitializer(graph.FloatTensor("mask", []int64{2, 3}, []float32{0, float32(math.Inf(-1)), 0, 0, 0, 0}))
	m.AddInitializer(graph.FloatTensor("unused", []int64{2}, []float32{1, 2}))
	m.AddInitializer(graph.Int64Tensor("shape", []int64{3}, []int64{1, 2, 3}))
	m.AddInitializer(graph.Int64Tensor("pe_cols", []int64{1}, []int64{3}))
	m.AddInitializer(graph.Int64Tensor("zero", []int64{1}, []int64{0}))
	m.AddInitializer(graph.Int64Tensor("one", []int64{1}, []int64{1}))
	m.Op("MatMul", "", []string{"x", "W"}, []string{"h1"})
	m.Op("MatMul", "", []string{"x", "W_copy"}, []string{"h2"})
	m.Op("Transpose", "", []string{"W_t"}, []string{"Wt_t"}, graph.AttrInts("perm", 1, 0))
	m.Op("MatMul", "", []string{"x", "Wt_t"}, []string{"h3"})
	m.Op("Sum", "", []string{"h1", "h2", "h3", "zeros_a", "zeros_b", "mask"}, []string{"h4"})
	m.Op("Mul", "", []string{"h4", "scale"}, []string{"h5"})
	m.Op("Div", "", []string{"h5", "act_clip_max"}, []string{"h6"})
	m.Op("Slice", "", []string{"pe", "zero", "pe_cols", "one"}, []string{"pe3"})
	m.Op("Add", "", []string{"h6", "pe3"}, []string{"h7"})
	m.Op("Reshape", "", []string{"h7", "shape"}, []string{"logits"})
	m.Op("Identity", "", []string{"unused"}, []string{"side"})
	m.AddOutput("logits", graph.Float, []int64{-1, -1, 3})
	m.AddOutput("side", graph.Float, []int64{2})
	return m
}

// TestDefaultParameters checks which initializers the default set holds
// and which copies are tied.
func TestDefaultParameters(t *testing.T) {
	m := paramModel()
	_, info, err := autodiff.Build(m, autodiff.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range info.Params {
		names = append(names, p.Name)
	}
	if got, want := strings.Join(names, ","), "W,zeros_a,zeros_b,act_clip_max"; got != want {
		t.Errorf("tied parameters %s, want %s", got, want)
	}
	if len(info.Ties) != 2 || info.Ties[0] != (autodiff.Tie{Param: "W", Copy: "W_copy"}) || info.Ties[1] != (autodiff.Tie{Param: "W", Copy: "W_t", Transposed: true}) {
		t.Errorf("ties %+v, want W_copy and W_t (transposed) tied to W, zero vectors untied", info.Ties)
	}
	_, info, err = autodiff.Build(m, autodiff.Options{Untie: true})
	if err != nil {
		t.Fatal(err)
	}
	names = nil
	for _, p := range info.Params {
		names = append(names, p.Name)
	}
	if got, want := strings.Join(names, ","), "W,W_copy,W_t,zeros_a,zeros_b,act_clip_max"; got != want {
		t.Errorf("untied parameters %s, want %s", got, want)
	}
	if strings.Join(info.Batch, ",") != "x,labels" {
		t.Errorf("batch inputs %v, want x, labels", info.Batch)
	}
	if m.Initializer("W") == nil || m.Input("W") != nil {
		t.Errorf("Build changed its input model")
	}
}

// TestInterfaceShapes checks that every input and output of the training
// graph declares its rank, scalar parameters (the clip) and their
// gradients included: a session learns undeclared ranks only by opening
// the model a second time.
func TestInterfaceShapes(t *testing.T) {
	tm, _, err := autodiff.Build(paramModel(), autodiff.Options{})
	if err != nil {
		t.Fatal(err)
	}
	g := tm.Graph()
	for _, v := range append(append([]*onnx.ValueInfoProto{}, g.Input...), g.Output...) {
		if v.GetType().GetTensorType().GetShape() == nil {
			t.Errorf("%q declares no shape", v.Name)
		}
	}
	if v := tm.Input("act_clip_max"); v == nil || len(v.GetType().GetTensorType().GetShape().GetDim()) != 0 {
		t.Errorf("scalar parameter act_clip_max: input %v, want rank 0", v)
	}
}

// TestBuildErrors checks that bad options and models fail with a message
// naming what is wrong.
func TestBuildErrors(t *testing.T) {
	noLogits := graph.New("nologits", 17)
	noLogits.AddInitializer(graph.FloatTensor("w", []int64{2}, []float32{1, 2}))
	noLogits.Op("Identity", "", []string{"w"}, []string{"y"})
	noLogits.AddOutput("y", graph.Float, []int64{2})
	taken := paramModel()
	taken.AddInitializer(graph.FloatTensor("W_grad", []int64{1}, []float32{0}))
	taken.Op("Identity", "", []string{"W_grad"}, []string{"other"})
	scaleTaken := paramModel()
	scaleTaken.AddInitializer(graph.FloatTensor(autodiff.GradScaleInput, nil, []float32{0}))
	scaleTaken.Op("Identity", "", []string{autodiff.GradScaleInput}, []string{"other"})
	accTaken := paramModel()
	accTaken.AddInitializer(graph.FloatTensor("W_grad_in", nil, []float32{0}))
	accTaken.Op("Identity", "", []string{"W_grad_in"}, []string{"other"})
	for _, c := range []struct {
		name string
		m    *graph.Model
		opts autodiff.Options
		want string
	}{
		{"no logits", noLogits, autodiff.Options{}, "no float output of rank 3"},
		{"unknown logits", paramModel(), autodiff.Options{Logits: "nope"}, `"nope"`},
		{"loss kind", paramModel(), autodiff.Options{Loss: autodiff.Loss{Kind: "mse"}}, `loss "mse"`},
		{"clip grad", paramModel(), autodiff.Options{ClipGrad: "pact"}, `"pact"`},
		{"unknown trainable", paramModel(), autodiff.Options{Trainable: []string{"W", "V"}}, `trainable "V"`},
		{"int trainable", paramModel(), autodiff.Options{Trainable: []string{"shape"}}, `"shape" is int64`},
		{"clip L2 of a constant", paramModel(), autodiff.Options{Loss: autodiff.Loss{ClipL2: map[string]float32{"scale": 0.01}}}, `"scale" is not a trainable parameter`},
		{"label smoothing", paramModel(), autodiff.Options{Loss: autodiff.Loss{LabelSmoothing: 1}}, "label smoothing"},
		{"no dependence", paramModel(), autodiff.Options{Trainable: []string{"unused"}}, "do not depend on any trainable"},
		{"name taken", taken, autodiff.Options{}, `"W_grad"`},
		{"grad_scale taken", scaleTaken, autodiff.Options{Accumulate: true}, `"grad_scale"`},
		{"accumulator taken", accTaken, autodiff.Options{Accumulate: true}, `"W_grad_in"`},
	} {
		_, _, err := autodiff.Build(c.m, c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %s", c.name, err, c.want)
		}
	}
}

// TestScalarLossNamedLoss differentiates a model that computes its own
// loss and calls it "loss", the training graph's output name.
func TestScalarLossNamedLoss(t *testing.T) {
	if err := ort.Init(); err != nil {
		t.Fatal(err)
	}
	m := graph.New("own", 17)
	m.AddInitializer(graph.FloatTensor("w", []int64{3}, []float32{1, -2, 3}))
	m.Op("Mul", "", []string{"w", "w"}, []string{"sq"})
	m.Op("ReduceSum", "", []string{"sq"}, []string{"loss"}, graph.AttrInt("keepdims", 0))
	m.AddOutput("loss", graph.Float, []int64{})
	s, _ := trainingSession(t, m, autodiff.Options{Logits: "loss", Loss: autodiff.Loss{Kind: "scalar"}}, nil)
	defer s.Close()
	out, err := s.Run(map[string]*ort.Tensor{"w": ort.Float32([]int64{3}, []float32{1, -2, 3})})
	if err != nil {
		t.Fatal(err)
	}
	expect(t, "loss", out["loss"].Float32s(), []float32{14}, 1e-6)
	expect(t, "dw", out["w_grad"].Float32s(), []float32{2, -4, 6}, 1e-6)
}

// TestGatherRepeatedIndices checks the embedding gradient with many
// repeated indices on two threads, fifty runs: every row must be the exact
// sum of its rows of the output gradient (small integers, exact in
// float32). ScatterND with reduction add lost about one run in two here.
func TestGatherRepeatedIndices(t *testing.T) {
	const V, D, N = 512, 128, 4096
	m := graph.New("gather", 17)
	m.AddInitializer(graph.FloatTensor("E", []int64{V, D}, make([]float32, V*D)))
	m.AddInput("idx", graph.Int64, []int64{N})
	m.AddInput("c", graph.Float, []int64{N, D})
	m.Op("Gather", "", []string{"E", "idx"}, []string{"rows"})
	m.Op("Mul", "", []string{"rows", "c"}, []string{"prod"})
	m.Op("ReduceSum", "", []string{"prod"}, []string{"loss"}, graph.AttrInt("keepdims", 0))
	m.AddOutput("loss", graph.Float, []int64{})
	s, _ := trainingSession(t, m, autodiff.Options{Logits: "loss", Loss: autodiff.Loss{Kind: "scalar"}}, &ort.Options{Threads: 2})
	defer s.Close()
	idx := make([]int64, N)
	c := make([]float32, N*D)
	want := make([]float32, V*D)
	for i := range idx {
		idx[i] = int64(i*i%41) - 5 // negative ids count from the end
		row := (idx[i] + V) % V
		for j := range D {
			c[i*D+j] = float32((i + j) % 3)
			want[row*D+int64(j)] += c[i*D+j]
		}
	}
	in := map[string]*ort.Tensor{
		"E":   ort.Float32([]int64{V, D}, make([]float32, V*D)),
		"idx": ort.Int64([]int64{N}, idx),
		"c":   ort.Float32([]int64{N, D}, c),
	}
	for run := range 50 {
		out, err := s.Run(in, "E_grad")
		if err != nil {
			t.Fatal(err)
		}
		for i, g := range out["E_grad"].Float32s() {
			if g != want[i] {
				t.Fatalf("run %d: E_grad[%d] = %g, want %g", run, i, g, want[i])
			}
		}
	}
}

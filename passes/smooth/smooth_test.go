package smooth_test

import (
	"math"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/smooth"
	"github.com/qatc/qatc/testmodels"
)

func run(t *testing.T, m *graph.Model, src, tgt []int64, cfg testmodels.Config, outs ...string) map[string]*ort.Tensor {
	t.Helper()
	m = graph.FromProto(m.Proto, m.Dir)
	for _, o := range outs {
		if !m.IsGraphOutput(o) {
			m.AddOutput(o, graph.Float, nil)
		}
	}
	s, err := ort.Open(m, &ort.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.Run(map[string]*ort.Tensor{
		"src_ids": ort.Int64([]int64{2, 7}, src),
		"tgt_ids": ort.Int64([]int64{2, 6}, tgt),
	}, outs...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSmoothKeepsFunction smooths every LayerNorm of the tiny transformer
// with the maxima measured on a batch: the logits stay the same, the tied
// logits projection is left alone, and at α = ½ each channel's activation
// range equals its weight range afterwards (√(a·w) both).
func TestSmoothKeepsFunction(t *testing.T) {
	if err := ort.Init(); err != nil {
		t.Fatal(err)
	}
	cfg := testmodels.Tiny()
	m, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	groups, skipped, err := smooth.Groups(m)
	if err != nil {
		t.Fatal(err)
	}
	// Per encoder layer: attention and FFN; per decoder layer: self- and
	// cross-attention and FFN; the encoder's final norm feeds every
	// cross-attention's K and V. The decoder's final norm feeds the logits
	// projection, which is the embedding table.
	if want := 2*cfg.EncoderLayers + 3*cfg.DecoderLayers + 1; len(groups) != want {
		t.Errorf("%d groups, want %d", len(groups), want)
	}
	if len(skipped) != 1 || !strings.Contains(skipped[0], "tied to the embedding table") {
		t.Errorf("skipped %q, want the decoder's final norm", skipped)
	}
	src, tgt := testmodels.RandomBatch(cfg, 2, 7, 6, 3)
	var norms []string
	for _, g := range groups {
		norms = append(norms, g.Norm.Output)
	}
	before := run(t, m, src, tgt, cfg, append([]string{"logits"}, norms...)...)
	actMax := map[string][]float32{}
	for _, n := range norms {
		v := before[n].Float32s()
		d := cfg.Hidden
		mx := make([]float32, d)
		for i, x := range v {
			mx[i%d] = max(mx[i%d], float32(math.Abs(float64(x))))
		}
		// Outlier channels, as trained models have them.
		mx[1] *= 20
		actMax[n] = mx
	}
	rep, err := smooth.Apply(m, groups, actMax, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Smoothed) != len(groups) {
		t.Errorf("smoothed %d of %d", len(rep.Smoothed), len(groups))
	}
	after := run(t, m, src, tgt, cfg, append([]string{"logits"}, norms...)...)
	a, b := before["logits"].Float32s(), after["logits"].Float32s()
	worst := 0.0
	for i := range a {
		worst = max(worst, math.Abs(float64(a[i]-b[i])))
	}
	if worst > 1e-4 {
		t.Errorf("smoothing changed the logits by %g", worst)
	}
	// α = ½: the new activation maximum a/s equals the new weight maximum
	// w·s of the channel.
	g := groups[0]
	v := after[g.Norm.Output].Float32s()
	d := cfg.Hidden
	newAct := make([]float64, d)
	for i, x := range v {
		newAct[i%d] = max(newAct[i%d], math.Abs(float64(x)))
	}
	newW := make([]float64, d)
	for _, p := range g.Projs {
		w, _ := graph.Floats(m.Initializer(p.Weight))
		dims := m.Initializer(p.Weight).Dims
		for i, x := range w {
			j := i / int(dims[1])
			if p.Transposed {
				j = i % int(dims[1])
			}
			newW[j] = max(newW[j], math.Abs(float64(x)))
		}
	}
	for j := range d {
		want := newW[j]
		if j == 1 {
			want /= 20 // measured 20× too large: a/s = √(aw/20), w·s = √(20aw)
		}
		if math.Abs(newAct[j]-want) > 1e-4*want {
			t.Errorf("channel %d: activation max %g, weight max %g", j, newAct[j], want)
		}
	}
}

func TestSmoothErrors(t *testing.T) {
	m, err := testmodels.Build(testmodels.Tiny())
	if err != nil {
		t.Fatal(err)
	}
	groups, _, err := smooth.Groups(m)
	if err != nil {
		t.Fatal(err)
	}
	n := groups[0].Norm.Output
	ok := map[string][]float32{}
	for _, g := range groups {
		ok[g.Norm.Output] = make([]float32, testmodels.Tiny().Hidden)
	}
	short := map[string][]float32{n: {1, 2}}
	for _, tc := range []struct {
		stats map[string][]float32
		alpha float64
		want  string
	}{
		{ok, 1.5, "want 0 ≤ α ≤ 1"},
		{map[string][]float32{}, 0.5, "no activation statistics for " + n},
		{short, 0.5, "2 channel statistics"},
	} {
		if _, err := smooth.Apply(m, groups[:1], tc.stats, tc.alpha); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want an error with %q", err, tc.want)
		}
	}
	g := graph.New("relu", 17)
	g.AddInput("x", graph.Float, []int64{1, 4})
	g.Op("Relu", "", []string{"x"}, []string{"y"})
	g.AddOutput("y", graph.Float, []int64{1, 4})
	if _, _, err := smooth.Groups(g); err == nil || !strings.HasPrefix(err.Error(), "smoothing: ") {
		t.Errorf("not a transformer: %v", err)
	}
}

package autodiff_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/autodiff"
)

func logSoftmax(x []float64, T float64) []float64 {
	mx := math.Inf(-1)
	for _, v := range x {
		mx = max(mx, v/T)
	}
	s := 0.0
	for _, v := range x {
		s += math.Exp(v/T - mx)
	}
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = v/T - mx - math.Log(s)
	}
	return out
}

// refLoss is the loss written out directly in float64.
func refLoss(L autodiff.Loss, w, teacher []float64, labels []int64, vocab int) float64 {
	T := float64(L.Temperature)
	if T == 0 {
		T = 1
	}
	eps := float64(L.LabelSmoothing)
	ce, kd, count := 0.0, 0.0, 0.0
	for tok, lab := range labels {
		if lab == L.PadID {
			continue
		}
		count++
		row := w[tok*vocab : (tok+1)*vocab]
		lsm := logSoftmax(row, 1)
		mean := 0.0
		for _, v := range lsm {
			mean -= v / float64(vocab)
		}
		ce += (1-eps)*-lsm[lab] + eps*mean
		if teacher != nil {
			lpt := logSoftmax(teacher[tok*vocab:(tok+1)*vocab], T)
			lps := logSoftmax(row, T)
			for v := range lpt {
				kd += math.Exp(lpt[v]) * (lpt[v] - lps[v])
			}
		}
	}
	ce /= count
	kd = kd * T * T / count
	switch L.Kind {
	case "kd":
		return kd
	case "ce+kd":
		return ce + float64(L.KDWeight)*kd
	}
	return ce
}

// TestLosses checks ce (label smoothing, pad ignored), kd and ce+kd
// against a direct float64 computation: the loss value, and the logits'
// gradient against central differences of that computation.
func TestLosses(t *testing.T) {
	if err := ort.Init(); err != nil {
		t.Skipf("onnxruntime not available: %v", err)
	}
	const B, S, V = 2, 3, 5
	rng := rand.New(rand.NewPCG(1, 2))
	w := make([]float32, B*S*V)
	teacher := make([]float32, B*S*V)
	for i := range w {
		w[i] = float32(2 * rng.NormFloat64())
		teacher[i] = float32(2 * rng.NormFloat64())
	}
	labels := []int64{1, 3, 4, 2, 0, 0} // pad 0 twice
	for _, L := range []autodiff.Loss{
		{Kind: "ce"},
		{Kind: "ce", LabelSmoothing: 0.1},
		{Kind: "ce", LabelSmoothing: 0.2, PadID: 3},
		{Kind: "kd", Temperature: 2},
		{Kind: "ce+kd", LabelSmoothing: 0.1, KDWeight: 0.5, Temperature: 3},
	} {
		m := graph.New("logits", 17)
		m.AddInitializer(graph.FloatTensor("w", []int64{B, S, V}, w))
		m.AddInput("x", graph.Float, []int64{B, S, 1})
		m.Op("Mul", "", []string{"w", "x"}, []string{"logits"})
		m.AddOutput("logits", graph.Float, []int64{B, S, V})
		tm, info, err := autodiff.Build(m, autodiff.Options{Loss: L})
		if err != nil {
			t.Fatal(err)
		}
		s, err := ort.Open(tm, nil)
		if err != nil {
			t.Fatal(err)
		}
		ones := make([]float32, B*S)
		for i := range ones {
			ones[i] = 1
		}
		feeds := map[string]*ort.Tensor{
			"w":      ort.Float32([]int64{B, S, V}, append([]float32(nil), w...)),
			"x":      ort.Float32([]int64{B, S, 1}, ones),
			"labels": ort.Int64([]int64{B, S}, labels),
		}
		var tch []float64
		if info.TeacherLogits != "" {
			feeds[info.TeacherLogits] = ort.Float32([]int64{B, S, V}, teacher)
			tch = f64(teacher)
		}
		out, err := s.Run(feeds)
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		w64 := f64(w)
		want := refLoss(L, w64, tch, labels, V)
		got := float64(out["loss"].Float32s()[0])
		if math.Abs(got-want) > 1e-6*math.Abs(want) {
			t.Errorf("%+v: loss %.8f, want %.8f", L, got, want)
		}
		grad := out["w_grad"].Float32s()
		const h = 1e-6
		worst := 0.0
		for i := range w64 {
			p := append([]float64(nil), w64...)
			p[i] += h
			q := append([]float64(nil), w64...)
			q[i] -= h
			num := (refLoss(L, p, tch, labels, V) - refLoss(L, q, tch, labels, V)) / (2 * h)
			worst = max(worst, math.Abs(num-float64(grad[i])))
		}
		if worst > 1e-6 {
			t.Errorf("%+v: logits gradient differs from finite differences by %.3g", L, worst)
		}
	}
}

func f64(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

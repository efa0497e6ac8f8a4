package autodiff_test

import (
	"math"
	"math/rand/v2"
	"strings"
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
		t.Fatal(err)
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

// TestHiddenKD checks the hidden-state distillation term: with h = w·x
// distilled from a teacher's h, the loss is ce(logits) + λ‖h − t‖²/‖t‖²,
// and w's gradient matches central differences of that in float64.
func TestHiddenKD(t *testing.T) {
	if err := ort.Init(); err != nil {
		t.Fatal(err)
	}
	const B, S, V = 2, 3, 4
	rng := rand.New(rand.NewPCG(3, 4))
	w, x, teacher := make([]float32, B*S*V), make([]float32, B*S*V), make([]float32, B*S*V)
	for i := range w {
		w[i] = float32(rng.NormFloat64())
		x[i] = float32(rng.NormFloat64())
		teacher[i] = float32(rng.NormFloat64())
	}
	labels := []int64{1, 3, 2, 2, 0, 1}
	const lambda = 0.7
	m := graph.New("hidden", 17)
	m.AddInitializer(graph.FloatTensor("w", []int64{B, S, V}, w))
	m.AddInput("x", graph.Float, []int64{B, S, V})
	m.Op("Mul", "", []string{"w", "x"}, []string{"h"})
	m.Op("Tanh", "", []string{"h"}, []string{"logits"})
	m.AddOutput("logits", graph.Float, []int64{B, S, V})
	L := autodiff.Loss{Kind: "ce", PadID: 0, Hidden: []string{"h"}, HiddenWeight: lambda}
	tm, info, err := autodiff.Build(m, autodiff.Options{Loss: L})
	if err != nil {
		t.Fatal(err)
	}
	if got := info.TeacherHidden["h"]; got != "teacher/h" {
		t.Fatalf("teacher input of h: %q", got)
	}
	s, err := ort.Open(tm, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.Run(map[string]*ort.Tensor{
		"w":         ort.Float32([]int64{B, S, V}, append([]float32(nil), w...)),
		"x":         ort.Float32([]int64{B, S, V}, x),
		"labels":    ort.Int64([]int64{B, S}, labels),
		"teacher/h": ort.Float32([]int64{B, S, V}, teacher),
	})
	if err != nil {
		t.Fatal(err)
	}
	x64, t64 := f64(x), f64(teacher)
	ref := func(w []float64) float64 {
		logits := make([]float64, len(w))
		var d2, t2 float64
		for i := range w {
			h := w[i] * x64[i]
			logits[i] = math.Tanh(h)
			d2 += (h - t64[i]) * (h - t64[i])
			t2 += t64[i] * t64[i]
		}
		return refLoss(autodiff.Loss{Kind: "ce"}, logits, nil, labels, V) + lambda*d2/t2
	}
	w64 := f64(w)
	if got, want := float64(out["loss"].Float32s()[0]), ref(w64); math.Abs(got-want) > 1e-5*math.Abs(want) {
		t.Errorf("loss %.7f, want %.7f", got, want)
	}
	grad := out["w_grad"].Float32s()
	const h = 1e-6
	worst := 0.0
	for i := range w64 {
		p, q := append([]float64(nil), w64...), append([]float64(nil), w64...)
		p[i] += h
		q[i] -= h
		worst = max(worst, math.Abs((ref(p)-ref(q))/(2*h)-float64(grad[i])))
	}
	if worst > 1e-5 {
		t.Errorf("w's gradient differs from finite differences by %.3g", worst)
	}
}

func TestHiddenKDErrors(t *testing.T) {
	m := graph.New("hidden", 17)
	m.AddInitializer(graph.FloatTensor("w", []int64{2}, []float32{1, 2}))
	m.AddInitializer(graph.FloatTensor("c", []int64{2}, []float32{1, 2}))
	m.AddInput("x", graph.Float, []int64{1, 1, 2})
	m.Op("Mul", "", []string{"c", "x"}, []string{"frozen"})
	m.Op("Mul", "", []string{"w", "frozen"}, []string{"logits"})
	m.AddOutput("logits", graph.Float, []int64{1, 1, 2})
	for _, tc := range []struct {
		loss autodiff.Loss
		want string
	}{
		{autodiff.Loss{Hidden: []string{"nope"}, HiddenWeight: 1}, `"nope" is not computed by a node`},
		{autodiff.Loss{Hidden: []string{"logits", "logits"}, HiddenWeight: 1}, "listed twice"},
		{autodiff.Loss{Hidden: []string{"logits"}}, "weight 0, want > 0"},
		{autodiff.Loss{Hidden: []string{"frozen"}, HiddenWeight: 1}, "does not depend on a trainable parameter"},
	} {
		_, _, err := autodiff.Build(m, autodiff.Options{Loss: tc.loss, Trainable: []string{"w"}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an error with %q", tc.loss, err, tc.want)
		}
	}
}

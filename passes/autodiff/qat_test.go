package autodiff_test

import (
	"math"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/autodiff"
)

// insertWeightQuantizer puts the project's quantizer form on weight w
// (signed 8-bit, per-tensor when axis < 0, else per-channel along axis)
// with the given clip values.
func insertWeightQuantizer(m *graph.Model, w string, clip []float32, axis int64) {
	var dims []int64
	if axis >= 0 {
		dims = []int64{int64(len(clip))}
	}
	clipName := m.AddInitializer(graph.FloatTensor(w+"_clip_max", dims, clip))
	tiny := m.AddInitializer(graph.FloatTensor(m.UniqueName(w+"_tiny"), nil, []float32{1e-8}))
	qmax := m.AddInitializer(graph.FloatTensor(m.UniqueName(w+"_qmax"), nil, []float32{127}))
	zp := m.AddInitializer(graph.Int8Tensor(m.UniqueName(w+"_zp"), dims, make([]int8, len(clip))))
	mx := m.UniqueName(w + "_clip_pos")
	scale := m.UniqueName(w + "_scale")
	q := m.UniqueName(w + "_q")
	dq := m.UniqueName(w + "_dq")
	users := append(m.Consumers(w)[:0:0], m.Consumers(w)...)
	m.Op("Max", "", []string{clipName, tiny}, []string{mx})
	m.Op("Div", "", []string{mx, qmax}, []string{scale})
	qa := graph.AttrInt("axis", max(axis, 0))
	m.Op("QuantizeLinear", w+"/quantize", []string{w, scale, zp}, []string{q}, qa)
	m.Op("DequantizeLinear", w+"/dequantize", []string{q, scale, zp}, []string{dq}, qa)
	for _, u := range users {
		for i, in := range u.Input {
			if in == w {
				m.ReplaceInput(u, i, dq)
			}
		}
	}
	if err := m.TopoSort(); err != nil {
		panic(err)
	}
}

// fakeQuant returns round_half_even(w/s)·s clamped to [-128, 127] steps,
// with s = clip/127 per tensor or per channel of a [rows, cols] matrix.
func fakeQuant(w []float32, cols int, clip []float32, axis int64) []float32 {
	out := make([]float32, len(w))
	for i, x := range w {
		c := clip[0]
		if axis == 1 {
			c = clip[i%cols]
		} else if axis == 0 {
			c = clip[i/cols]
		}
		s := c / 127
		q := math.RoundToEven(float64(x / s))
		q = max(-128, min(127, q))
		out[i] = float32(q) * s
	}
	return out
}

// TestQATMatchesSTE checks a quantized transformer's training graph
// against the fp32 one: for a weight behind a fake quantizer the gradient
// is the fp32 gradient at the fake-quantized weights where the weight is
// inside the clip range and zero outside, and the clip receives
// Σ_above g − 128/127·Σ_below g (per channel for per-channel clips).
func TestQATMatchesSTE(t *testing.T) {
	if err := ort.Init(); err != nil {
		t.Fatal(err)
	}
	file := fixture.Torch(t, fixture.Transformer17)
	fp, err := graph.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	ref := loadReference(t)
	var ffn, proj string // an FFN kernel [64, 128] and the output projection [64, 512]
	for name, g := range ref.Gradients[fixture.Transformer17] {
		if len(g.Shape) != 2 {
			continue
		}
		if g.Shape[0] == 64 && g.Shape[1] == 128 && (ffn == "" || name < ffn) {
			ffn = name
		}
		if g.Shape[1] == 512 {
			proj = name
		}
	}
	type qw struct {
		name string
		axis int64
		clip []float32
	}
	wFFN, _ := graph.Floats(fp.Initializer(ffn))
	wProj, _ := graph.Floats(fp.Initializer(proj))
	// Clips just under half the largest magnitude, so that some weights lie
	// outside and none on the boundary (the weights are bfloat16 values).
	perChan := make([]float32, 128)
	for j := range perChan {
		m := 0.0
		for i := 0; i < 64; i++ {
			m = max(m, math.Abs(float64(wFFN[i*128+j])))
		}
		perChan[j] = float32(m * 0.499)
	}
	quants := []qw{{ffn, 1, perChan}, {proj, -1, []float32{float32(maxAbs(wProj) * 0.499)}}}

	qat, _ := graph.Load(file)
	for _, q := range quants {
		insertWeightQuantizer(qat, q.name, q.clip, q.axis)
	}
	loss := autodiff.Loss{LabelSmoothing: 0.1}
	qm, qinfo, err := autodiff.Build(qat, autodiff.Options{Untie: true, Loss: loss})
	if err != nil {
		t.Fatal(err)
	}
	// The fp32 model with the two weights replaced by their fake-quantized
	// values.
	fq := map[string][]float32{ffn: fakeQuant(wFFN, 128, perChan, 1), proj: fakeQuant(wProj, 512, quants[1].clip, -1)}
	fm, finfo, err := autodiff.Build(fp, autodiff.Options{Untie: true, Loss: loss})
	if err != nil {
		t.Fatal(err)
	}
	run := func(tm *graph.Model, info *autodiff.Info, src *graph.Model, override map[string][]float32) map[string]*ort.Tensor {
		s, err := ort.Open(tm, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		feeds := batchFeeds(t, src, info)
		for name, v := range override {
			feeds[name].Data = v
		}
		out, err := s.Run(feeds)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	qout := run(qm, qinfo, qat, nil)
	fout := run(fm, finfo, fp, fq)
	if a, b := qout["loss"].Float32s()[0], fout["loss"].Float32s()[0]; math.Abs(float64(a-b)) > 1e-5*math.Abs(float64(b)) {
		t.Fatalf("QAT loss %v, fp32 loss at the fake-quantized weights %v", a, b)
	}
	if len(qinfo.Params) != len(finfo.Params)+2 {
		t.Errorf("QAT graph has %d parameters, want the fp32 %d plus 2 clips", len(qinfo.Params), len(finfo.Params))
	}
	for _, q := range quants {
		w, _ := graph.Floats(qat.Initializer(q.name))
		g := fout[q.name+"_grad"].Float32s()
		cols := len(w) / 64
		wantDW := make([]float32, len(w))
		wantDC := make([]float64, len(q.clip))
		outside := 0
		for i, x := range w {
			ch := 0
			if q.axis == 1 {
				ch = i % cols
			}
			hi := float64(q.clip[ch]/127) * 127
			lo := float64(q.clip[ch]/127) * -128
			switch {
			case float64(x) > hi:
				wantDC[ch] += float64(g[i])
				outside++
			case float64(x) < lo:
				wantDC[ch] -= 128.0 / 127 * float64(g[i])
				outside++
			default:
				wantDW[i] = g[i]
			}
		}
		gotDW := qout[q.name+"_grad"].Float32s()
		scale := maxAbs(g)
		for i := range wantDW {
			if math.Abs(float64(gotDW[i]-wantDW[i])) > 1e-4*scale {
				t.Fatalf("%s: d%s[%d] = %v, want %v", q.name, q.name, i, gotDW[i], wantDW[i])
			}
		}
		gotDC := qout[q.name+"_clip_max_grad"].Float32s()
		for ch := range wantDC {
			if math.Abs(float64(gotDC[ch])-wantDC[ch]) > 1e-4*scale*math.Sqrt(float64(len(w)/len(wantDC))) {
				t.Fatalf("%s: dclip[%d] = %v, want %v", q.name, ch, gotDC[ch], wantDC[ch])
			}
		}
		if outside == 0 {
			t.Fatalf("%s: no weight outside the clip; the test checks nothing about the clip", q.name)
		}
		t.Logf("%s: %d of %d weights outside the clip; dclip[0] = %.5g", q.name, outside, len(w), gotDC[0])
	}
}

package quantize_test

import (
	"fmt"
	"math"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
)

// neurst is NeurST's fake quantization, written from its definition:
// y = round(clamp(x, lo, hi)/step)·step.
func neurst(x float64, kind string, bits int, clip float64) float64 {
	var step, lo, hi float64
	switch kind {
	case "weight", "act":
		n := math.Ldexp(1, bits-1) - 1 // 127 at 8 bits
		step, lo, hi = clip/n, -(n+1)*clip/n, clip
	case "relu":
		n := math.Ldexp(1, bits) - 1 // 255 at 8 bits
		step, lo, hi = clip/n, 0, clip
	case "softmax":
		step = math.Ldexp(1, -bits)
		lo, hi = 0, 1-step
	}
	return math.Round(math.Max(lo, math.Min(hi, x))/step) * step
}

// TestGrids runs the quantizers Insert builds in onnxruntime on chosen
// values (no ties, where ONNX's half-to-even and NeurST's rounding differ)
// and checks them against NeurST's grids.
func TestGrids(t *testing.T) {
	tests := []struct {
		kind string
		bits int
		clip float64
		xs   []float32
	}{
		// signed: multiples of clip/127 in −128..127 steps
		{"act", 8, 2.54, []float32{0, 0.013, -0.013, 0.009, 2.54, 2.6, -2.56, -3, 1.234, -1.237, 100, -100}},
		{"weight", 8, 1.27, []float32{0.5, -1.3, 1.3, 0.123, -0.126, 1.2749, -1.2849, 0.004}},
		// relu: multiples of clip/255 in 0..255 steps
		{"relu", 8, 2.55, []float32{0, 0.004, 0.006, 2.55, 3, -1, 1.2345, 2.544}},
		// softmax: multiples of 1/256 up to 255/256
		{"softmax", 8, 0, []float32{0, 0.5, 0.999, 1, 0.0019, 0.0021, 0.25 + 0.6/256}},
		// 4 bits: the Clip keeps −8..7 and 0..15
		{"act", 4, 0.7, []float32{0.75, -0.9, 0.33, -0.36, -0.7, 0.04, 5, -5}},
		{"weight", 4, 1.4, []float32{1.5, -1.7, 0.33, -0.52, 0.09, -0.11}},
		{"relu", 4, 1.5, []float32{1.6, 0.44, -0.2, 0.06, 1.46}},
		{"softmax", 4, 0, []float32{0.03, 0.04, 0.5, 0.97, 1}},
		// 2 bits: −2..1
		{"act", 2, 1, []float32{0.4, 0.6, -0.6, -1.6, -2.5, 3}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s%d", tt.kind, tt.bits), func(t *testing.T) {
			m, feeds, out := gridModel(t, tt.kind, tt.xs)
			p := quantize.DefaultParams()
			p.WeightBits, p.ActBits = tt.bits, tt.bits
			if tt.clip > 0 {
				p.WeightClipMax, p.ActClipMax = float32(tt.clip), float32(tt.clip)
			}
			p.Include = []string{"^x$"}
			if tt.kind == "relu" || tt.kind == "softmax" {
				r, err := quantize.ParseRecipe([]byte("rules:\n  - match: '^x$'\n    kind: " + tt.kind + "\n"))
				if err != nil {
					t.Fatal(err)
				}
				p.Recipe = r
			}
			rec, err := quantize.Insert(m, p)
			if err != nil {
				t.Fatal(err)
			}
			if q := rec.Quantizers; len(q) != 1 || q[0].Kind != tt.kind || q[0].Bits != tt.bits {
				t.Fatalf("quantizers %+v, want one %s/%d", q, tt.kind, tt.bits)
			}
			s, err := ort.Open(m, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			res, err := s.Run(feeds, out)
			if err != nil {
				t.Fatal(err)
			}
			ys := res[out].Float32s()
			qmin, qmax := rec.Quantizers[0].QRange()
			step := tt.clip / float64(qmax)
			if tt.kind == "softmax" {
				step = math.Ldexp(1, -tt.bits)
			}
			for i, x := range tt.xs {
				y, want := float64(ys[i]), neurst(float64(x), tt.kind, tt.bits, tt.clip)
				k := y / step
				if math.Abs(y-want) > 1e-6*math.Max(1, tt.clip) || math.Abs(k-math.Round(k)) > 1e-4 || k < float64(qmin)-1e-4 || k > float64(qmax)+1e-4 {
					t.Errorf("fq(%g) = %g (%.4f steps of %g), want %g (range %d..%d)", x, y, k, step, want, qmin, qmax)
				}
			}
		})
	}
}

// gridModel builds y = x·I (activation kinds: x is an input) or y = I·x
// (weight: x is an initializer, I fed as input), so y shows the quantized x.
func gridModel(t *testing.T, kind string, xs []float32) (*graph.Model, map[string]*ort.Tensor, string) {
	n := int64(len(xs))
	eye := make([]float32, n*n)
	for i := int64(0); i < n; i++ {
		eye[i*n+i] = 1
	}
	m := graph.New("grid", 17)
	if kind == "weight" {
		m.AddInput("e", graph.Float, []int64{n, n})
		m.AddInitializer(graph.FloatTensor("x", []int64{n, 1}, xs))
		m.Op("MatMul", "mm", []string{"e", "x"}, []string{"y"})
		m.AddOutput("y", graph.Float, []int64{n, 1})
		return m, map[string]*ort.Tensor{"e": ort.Float32([]int64{n, n}, eye)}, "y"
	}
	m.AddInput("x", graph.Float, []int64{1, n})
	m.AddInitializer(graph.FloatTensor("eye", []int64{n, n}, eye))
	m.Op("MatMul", "mm", []string{"x", "eye"}, []string{"y"})
	m.AddOutput("y", graph.Float, []int64{1, n})
	return m, map[string]*ort.Tensor{"x": ort.Float32([]int64{1, n}, xs)}, "y"
}

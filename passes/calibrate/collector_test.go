package calibrate

import (
	"math"
	"math/rand"
	"strings"
	"testing"

	"github.com/qatc/qatc/passes/quantize"
)

// fakeQuantMSE is the mean squared error of NeurST's fake quantization of
// xs with clip c, computed directly on the samples.
func fakeQuantMSE(xs []float32, c float64, kind string, bits int) float64 {
	var qmin, qmax float64
	if kind == quantize.KindReLU {
		qmin, qmax = 0, math.Ldexp(1, bits)-1
	} else {
		qmin, qmax = -math.Ldexp(1, bits-1), math.Ldexp(1, bits-1)-1
	}
	s := c / qmax
	var e float64
	for _, x := range xs {
		v := float64(x)
		q := math.Max(qmin, math.Min(qmax, math.RoundToEven(v/s))) * s
		e += (v - q) * (v - q)
	}
	return e / float64(len(xs))
}

func samples(n int, seed int64, gen func(r *rand.Rand) float64) []float32 {
	r := rand.New(rand.NewSource(seed))
	xs := make([]float32, n)
	for i := range xs {
		xs[i] = float32(gen(r))
	}
	return xs
}

func observeBatches(c *Collector, name string, xs []float32, batch int) {
	for i := 0; i < len(xs); i += batch {
		c.Observe(name, xs[i:min(i+batch, len(xs))])
	}
}

func TestMinMaxAndPercentile(t *testing.T) {
	uniform := samples(1_000_000, 1, func(r *rand.Rand) float64 { return 2*r.Float64() - 1 })
	var maxPos, maxNeg float64
	for _, x := range uniform {
		maxPos = math.Max(maxPos, float64(x))
		maxNeg = math.Max(maxNeg, -float64(x))
	}
	c := NewCollector(nil)
	observeBatches(c, "u", uniform, 10_000)
	mm, err := c.Clips(MinMax, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := float32(math.Max(maxPos, maxNeg*127/128)); mm["u"] != want {
		t.Errorf("minmax = %v, want %v", mm["u"], want)
	}
	for _, p := range []float64{50, 90, 99, 99.99} {
		got, err := c.Clips(Percentile, p)
		if err != nil {
			t.Fatal(err)
		}
		// |x| is uniform on [0, 1]: the p-th percentile is p/100.
		if d := math.Abs(float64(got["u"]) - p/100); d > 0.003 {
			t.Errorf("percentile %g = %v, want %v ± 0.003", p, got["u"], p/100)
		}
	}
}

func TestPercentileSurvivesRebinning(t *testing.T) {
	// Small values first, then a batch 100× larger: the merged histogram
	// must give the same percentiles as one that saw the large batch first.
	small := samples(100_000, 2, func(r *rand.Rand) float64 { return r.Float64() })
	large := samples(100_000, 3, func(r *rand.Rand) float64 { return 100 * r.Float64() })
	a, b := NewCollector(nil), NewCollector(nil)
	a.Observe("x", small)
	a.Observe("x", large)
	b.Observe("x", large)
	b.Observe("x", small)
	for _, p := range []float64{25, 75, 99} {
		ca, _ := a.Clips(Percentile, p)
		cb, _ := b.Clips(Percentile, p)
		// Both bin widths are at most 2·100/2048.
		if d := math.Abs(float64(ca["x"] - cb["x"])); d > 0.1 {
			t.Errorf("percentile %g: %v after rebinning vs %v without", p, ca["x"], cb["x"])
		}
	}
	// 75th percentile: half the samples are below 1, the rest uniform to 100.
	got, _ := a.Clips(Percentile, 75)
	if d := math.Abs(float64(got["x"]) - 50); d > 1 {
		t.Errorf("percentile 75 = %v, want about 50", got["x"])
	}
}

func TestMemoryFlat(t *testing.T) {
	c := NewCollector(nil)
	batch := samples(4096, 4, func(r *rand.Rand) float64 { return r.NormFloat64() })
	h := func() *hist { return c.hists["g"] }
	c.Observe("g", batch)
	size := len(h().pos) + len(h().neg)
	for i := 0; i < 500; i++ {
		for j := range batch {
			batch[j] *= 1.01 // a slowly growing range forces rebinning
		}
		c.Observe("g", batch)
	}
	if got := len(h().pos) + len(h().neg); got != size || size != 2*DefaultBins {
		t.Errorf("histogram size %d after 501 batches, %d after 1; want %d both", got, size, 2*DefaultBins)
	}
	var total uint64
	for i := range h().pos {
		total += h().pos[i] + h().neg[i]
	}
	if total+h().zeros != 501*4096 {
		t.Errorf("histogram holds %d values, want %d", total+h().zeros, 501*4096)
	}
}

func TestMSE(t *testing.T) {
	gauss := samples(150_000, 5, func(r *rand.Rand) float64 { return r.NormFloat64() })
	halfNormal := samples(150_000, 6, func(r *rand.Rand) float64 { return math.Abs(r.NormFloat64()) })
	tests := []struct {
		name   string
		xs     []float32
		kind   string
		bits   int
		lo, hi float64 // where the optimum must lie, in σ
	}{
		{"gauss8", gauss, quantize.KindAct, 8, 2.5, 4.5},
		{"gauss4", gauss, quantize.KindAct, 4, 1.8, 3.2},
		{"halfnormal-relu8", halfNormal, quantize.KindReLU, 8, 2.5, 4.6},
		{"halfnormal-act8", halfNormal, quantize.KindAct, 8, 2.5, 4.6},
	}
	clips := map[string]float64{}
	for _, tt := range tests {
		c := NewCollector(nil)
		c.Track(tt.name, tt.kind, tt.bits)
		observeBatches(c, tt.name, tt.xs, 50_000)
		got, err := c.Clips(MSE, 0)
		if err != nil {
			t.Fatal(err)
		}
		clip := float64(got[tt.name])
		clips[tt.name] = clip
		// The sample optimum, found by brute force on the samples.
		best, bestErr := 0.0, math.Inf(1)
		for k := 100; k <= 500; k += 2 {
			c := float64(k) / 100
			if e := fakeQuantMSE(tt.xs, c, tt.kind, tt.bits); e < bestErr {
				best, bestErr = c, e
			}
		}
		e := fakeQuantMSE(tt.xs, clip, tt.kind, tt.bits)
		t.Logf("%s: mse clip %.3fσ (sample optimum %.3fσ), error %.3g vs %.3g", tt.name, clip, best, e, bestErr)
		if clip < tt.lo || clip > tt.hi {
			t.Errorf("%s: mse clip %.3fσ outside [%g, %g]σ", tt.name, clip, tt.lo, tt.hi)
		}
		if e > 1.03*bestErr {
			t.Errorf("%s: error %.4g at the mse clip is more than 3%% above the sample optimum %.4g (clip %.3f)", tt.name, e, bestErr, best)
		}
	}
	// The unsigned grid has twice the steps over [0, c], so it affords a
	// wider range than the signed one on the same non-negative data.
	if clips["halfnormal-relu8"] <= clips["halfnormal-act8"] {
		t.Errorf("relu clip %.3f not above act clip %.3f on the same data", clips["halfnormal-relu8"], clips["halfnormal-act8"])
	}
}

func TestRoundingIntegral(t *testing.T) {
	// Against a midpoint sum of the sawtooth squared.
	for _, tc := range []struct{ x, s float64 }{{0.3, 0.1}, {1, 0.07}, {2.55, 1}, {0, 0.5}} {
		n := 200000
		var sum float64
		for i := 0; i < n; i++ {
			u := (float64(i) + 0.5) * tc.x / float64(n)
			r := u - tc.s*math.Round(u/tc.s)
			sum += r * r * tc.x / float64(n)
		}
		if got := roundingIntegral(tc.x, tc.s); math.Abs(got-sum) > 1e-9+1e-6*sum {
			t.Errorf("roundingIntegral(%g, %g) = %g, want %g", tc.x, tc.s, got, sum)
		}
	}
}

func TestClipErrors(t *testing.T) {
	c := NewCollector(nil)
	c.Observe("zeros", make([]float32, 10))
	c2 := NewCollector(nil)
	c2.Observe("nan", []float32{1, float32(math.NaN())})
	c3 := NewCollector(nil)
	c3.Observe("ok", []float32{1, 2})
	tests := []struct {
		c      *Collector
		method string
		p      float64
		want   string
	}{
		{c, MinMax, 0, "tensor zeros: no nonzero values observed"},
		{c2, MinMax, 0, "tensor nan: 1 non-finite values"},
		{c3, "kl", 0, `unknown calibration method "kl"`},
		{c3, Percentile, 101, "percentile 101 out of range"},
	}
	for _, tt := range tests {
		_, err := tt.c.Clips(tt.method, tt.p)
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("Clips(%s, %g) error %v, want one line containing %q", tt.method, tt.p, err, tt.want)
		}
	}
}

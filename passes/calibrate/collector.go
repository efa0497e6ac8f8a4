package calibrate

import (
	"fmt"
	"math"
	"sort"

	"github.com/qatc/qatc/passes/quantize"
)

// DefaultBins is the histogram size per tensor.
const DefaultBins = 2048

// DefaultPercentile is the percentile method's default.
const DefaultPercentile = 99.99

// Methods.
const (
	MinMax     = "minmax"
	Percentile = "percentile"
	MSE        = "mse"
)

// Collector accumulates histograms of activation values per tensor.
type Collector struct {
	bins  int
	hists map[string]*hist
	order []string
}

// hist is one tensor's histogram: bin i holds |x| in [i·width, (i+1)·width),
// the last bin also |x| = bins·width.
type hist struct {
	kind      string
	bits      int
	width     float64
	pos, neg  []uint64
	zeros     uint64
	maxPos    float64
	maxNeg    float64 // of −x
	nonFinite uint64
	batches   int
}

// NewCollector returns a collector tracking the activation quantizers of
// rec (weights and the fixed-scale softmax kind need no statistics); more
// tensors can be added with Track.
func NewCollector(rec *quantize.Record) *Collector {
	c := &Collector{bins: DefaultBins, hists: map[string]*hist{}}
	if rec != nil {
		for _, q := range rec.Quantizers {
			if q.Kind == quantize.KindAct || q.Kind == quantize.KindReLU {
				c.Track(q.Tensor, q.Kind, q.Bits)
			}
		}
	}
	return c
}

// Track registers tensor with its quantizer kind (act or relu) and bits.
// Observing an untracked tensor tracks it as an 8-bit act.
func (c *Collector) Track(tensor, kind string, bits int) {
	if h := c.hists[tensor]; h != nil {
		h.kind, h.bits = kind, bits
		return
	}
	c.hists[tensor] = &hist{kind: kind, bits: bits, pos: make([]uint64, c.bins), neg: make([]uint64, c.bins)}
	c.order = append(c.order, tensor)
}

// Tensors returns the tracked tensors in the order they were tracked: the
// values a driver asks the fp32 session for.
func (c *Collector) Tensors() []string { return append([]string(nil), c.order...) }

// Bins returns the number of bins per histogram (per sign).
func (c *Collector) Bins() int { return c.bins }

// Batches returns how many times tensor was observed.
func (c *Collector) Batches(tensor string) int {
	if h := c.hists[tensor]; h != nil {
		return h.batches
	}
	return 0
}

// Observe adds values of tensor to its histogram. Non-finite values are
// counted, not binned; Clips reports them.
func (c *Collector) Observe(tensor string, values []float32) {
	h := c.hists[tensor]
	if h == nil {
		c.Track(tensor, quantize.KindAct, 8)
		h = c.hists[tensor]
	}
	h.batches++
	top := 0.0
	for _, v := range values {
		a := math.Abs(float64(v))
		if math.IsInf(a, 0) || math.IsNaN(a) {
			continue
		}
		top = math.Max(top, a)
	}
	if top > 0 {
		h.grow(top)
	}
	n := len(h.pos)
	for _, v := range values {
		x := float64(v)
		switch {
		case math.IsInf(x, 0) || math.IsNaN(x):
			h.nonFinite++
		case x == 0:
			h.zeros++
		case x > 0:
			h.pos[min(int(x/h.width), n-1)]++
			h.maxPos = math.Max(h.maxPos, x)
		default:
			h.neg[min(int(-x/h.width), n-1)]++
			h.maxNeg = math.Max(h.maxNeg, -x)
		}
	}
}

// grow makes the range cover top: the first time by setting it, later by
// doubling the bin width, merging bin pairs, which keeps every count exact.
func (h *hist) grow(top float64) {
	n := float64(len(h.pos))
	if h.width == 0 {
		h.width = top / n
		return
	}
	for h.width*n < top {
		for _, b := range [][]uint64{h.pos, h.neg} {
			half := len(b) / 2
			for i := 0; i < half; i++ {
				b[i] = b[2*i] + b[2*i+1]
			}
			for i := half; i < len(b); i++ {
				b[i] = 0
			}
		}
		h.width *= 2
	}
}

// Clips returns one clip per tracked tensor by method (minmax, percentile
// or mse); percentile is the percentile method's level in (0, 100], 0 for
// the default 99.99.
func (c *Collector) Clips(method string, percentile float64) (map[string]float32, error) {
	switch method {
	case MinMax, MSE:
	case Percentile:
		if percentile == 0 {
			percentile = DefaultPercentile
		}
		if !(percentile > 0 && percentile <= 100) {
			return nil, fmt.Errorf("percentile %g out of range (0, 100]", percentile)
		}
	default:
		return nil, fmt.Errorf("unknown calibration method %q: want minmax, percentile or mse", method)
	}
	out := make(map[string]float32, len(c.hists))
	names := append([]string(nil), c.order...)
	sort.Strings(names)
	for _, name := range names {
		h := c.hists[name]
		if h.nonFinite > 0 {
			return nil, fmt.Errorf("tensor %s: %d non-finite values observed: the fp32 model overflows on the calibration data", name, h.nonFinite)
		}
		if h.maxPos == 0 && (h.kind == quantize.KindReLU || h.maxNeg == 0) {
			return nil, fmt.Errorf("tensor %s: no nonzero values observed (%d batches): calibrate on more data or exclude it", name, h.batches)
		}
		var v float64
		switch method {
		case MinMax:
			v = h.minmax()
		case Percentile:
			v = h.percentile(percentile)
		case MSE:
			v = h.mse()
		}
		out[name] = float32(v)
	}
	return out, nil
}

func (h *hist) signed() bool { return h.kind != quantize.KindReLU }

// qmax is the number of positive grid steps.
func (h *hist) qmax() float64 {
	if h.signed() {
		return float64(int(1)<<(h.bits-1) - 1)
	}
	return float64(int(1)<<h.bits - 1)
}

func (h *hist) minmax() float64 {
	if !h.signed() {
		return h.maxPos
	}
	q := h.qmax()
	return math.Max(h.maxPos, h.maxNeg*q/(q+1))
}

// percentile returns the p-th percentile of the values the grid must cover
// (|x| for signed kinds, x > 0 counted with zeros for relu).
func (h *hist) percentile(p float64) float64 {
	counts := make([]uint64, len(h.pos))
	copy(counts, h.pos)
	total := h.zeros
	if h.signed() {
		for i, n := range h.neg {
			counts[i] += n
		}
	} else {
		for _, n := range h.neg {
			total += n // negatives map to 0 on the unsigned grid
		}
	}
	for _, n := range counts {
		total += n
	}
	want := p / 100 * float64(total)
	cum := float64(total)
	for _, n := range counts {
		cum -= float64(n)
	}
	// cum now counts the values below bin 0 (zeros, and relu's negatives).
	top := h.minmaxAbs()
	for i, n := range counts {
		if n > 0 && cum+float64(n) >= want {
			f := (want - cum) / float64(n)
			return math.Min(top, (float64(i)+math.Max(f, 0))*h.width)
		}
		cum += float64(n)
	}
	return top
}

func (h *hist) minmaxAbs() float64 {
	if h.signed() {
		return math.Max(h.maxPos, h.maxNeg)
	}
	return h.maxPos
}

// mse returns the clip minimising the expected squared quantization error,
// values spread uniformly within each bin: first over every 8th bin edge,
// then over every edge near the best.
func (h *hist) mse() float64 {
	n := len(h.pos)
	top := h.minmax()
	best, bestErr := top, h.expectedError(top)
	try := func(k int) {
		c := float64(k) * h.width
		if c <= 0 || c > top {
			return
		}
		if e := h.expectedError(c); e < bestErr {
			best, bestErr = c, e
		}
	}
	for k := 8; k <= n; k += 8 {
		try(k)
	}
	k0 := int(math.Round(best / h.width))
	for k := k0 - 8; k <= k0+8; k++ {
		try(k)
	}
	return best
}

// expectedError is the total squared error of fake-quantizing the
// histogram's values with clip c.
func (h *hist) expectedError(c float64) float64 {
	q := h.qmax()
	s := c / q
	var e float64
	e += sideError(h.pos, h.width, c, s)
	if h.signed() {
		e += sideError(h.neg, h.width, c*(q+1)/q, s)
	}
	return e
}

// sideError sums, over bins of |x| with the given width, the error of a
// grid of step s up to limit: rounding inside, distance to limit outside.
func sideError(counts []uint64, width, limit, s float64) float64 {
	var e float64
	for i, n := range counts {
		if n == 0 {
			continue
		}
		a, b := float64(i)*width, float64(i+1)*width
		var sum float64 // ∫ error over [a, b]
		if a < limit {
			hi := math.Min(b, limit)
			sum += roundingIntegral(hi, s) - roundingIntegral(a, s)
		}
		if b > limit {
			lo := math.Max(a, limit)
			sum += (math.Pow(b-limit, 3) - math.Pow(lo-limit, 3)) / 3
		}
		e += float64(n) * sum / width
	}
	return e
}

// roundingIntegral is ∫₀ˣ (t − s·round(t/s))² dt.
func roundingIntegral(x, s float64) float64 {
	u := x + s/2
	k := math.Floor(u / s)
	f := u - k*s
	d := f - s/2
	return k*s*s*s/12 + (d*d*d+s*s*s/8)/3 - s*s*s/24
}

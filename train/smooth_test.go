package train

import (
	"github.com/qatc/qatc/seq2seq"
	"math"
	"testing"
)

// TestSmoothAlphaOne smooths the tiny transformer at α = 1, which divides
// each LayerNorm output channel by its measured maximum: measured again on
// the same data, every channel's maximum is then 1.
func TestSmoothAlphaOne(t *testing.T) {
	m := tinyModel(t)
	ds := reverseTask(t, 40, 8, 3)
	opts := CalibrationOptions{Roles: seq2seq.Roles{Src: "src_ids", Tgt: "tgt_ids"}, BatchTokens: 128, Threads: 1}
	r, err := Smooth(m, ds, 1, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Smoothed) == 0 || len(r.Skipped) != 1 {
		t.Fatalf("smoothed %v, skipped %v", r.Smoothed, r.Skipped)
	}
	maxima, err := ChannelMax(m, ds, r.Smoothed, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range r.Smoothed {
		for j, x := range maxima[n] {
			if math.Abs(float64(x)-1) > 1e-4 {
				t.Errorf("%s channel %d: maximum %g after smoothing, want 1", n, j, x)
			}
		}
	}
}

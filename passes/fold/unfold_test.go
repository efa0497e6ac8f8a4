package fold

import (
	"math"
	"math/rand"
	"testing"

	"github.com/qatc/qatc/passes/quantize"
)

// TestClipFor checks that clipFor finds, for scales computed from random
// clips of every magnitude and each qmax, a clip that computes the very
// same float32 scale.
func TestClipFor(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for _, qmax := range []float32{1, 7, 127, 255} {
		for i := range 20000 {
			c := float32(math.Ldexp(1+rng.Float64(), rng.Intn(40)-30))
			if i == 0 {
				c = quantize.Tiny / 2 // below the floor
			}
			s := max(c, quantize.Tiny) / qmax
			got, ok := clipFor(s, qmax)
			if !ok || max(got, quantize.Tiny)/qmax != s {
				t.Fatalf("qmax %g: clip %g gives scale %g; clipFor found %g (ok %v)", qmax, c, s, got, ok)
			}
		}
	}
}

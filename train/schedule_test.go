package train

import (
	"math"
	"strings"
	"testing"
)

func TestSchedules(t *testing.T) {
	for _, tc := range []struct {
		s    Schedule
		step int64
		want float64
	}{
		{Constant{}, 1, 1},
		{Constant{}, 123456, 1},
		{InverseSqrt{Warmup: 4000}, 1, 1.0 / 4000},
		{InverseSqrt{Warmup: 4000}, 2000, 0.5},
		{InverseSqrt{Warmup: 4000}, 4000, 1},
		{InverseSqrt{Warmup: 4000}, 16000, 0.5},
		{InverseSqrt{Warmup: 4000}, 64000, 0.25},
		// Continuation: 12000 steps after step 4000 is step 16000.
		{InverseSqrt{Warmup: 4000, InitialStep: 4000}, 12000, 0.5},
		{InverseSqrt{Warmup: 4000, InitialStep: 60000}, 4000, 0.25},
		{InverseSqrt{Warmup: 4000}, 0, 0},
		{InverseSqrt{}, 4, 0.5},
		{Cosine{Warmup: 100, Total: 1100}, 50, 0.5},
		{Cosine{Warmup: 100, Total: 1100}, 100, 1},
		{Cosine{Warmup: 100, Total: 1100}, 350, (1 + math.Sqrt(0.5)) / 2},
		{Cosine{Warmup: 100, Total: 1100}, 600, 0.5},
		{Cosine{Warmup: 100, Total: 1100}, 1100, 0},
		{Cosine{Warmup: 0, Total: 10}, 1, (1 + math.Cos(math.Pi/10)) / 2},
		{Cosine{Warmup: 0, Total: 10}, 0, 0},
	} {
		if got := tc.s.Factor(tc.step); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("%s at step %d = %g, want %g", tc.s, tc.step, got, tc.want)
		}
	}
}

// TestNoamForm checks the documented equivalence with tensor2tensor's
// form lr · d^-0.5 · min(s^-0.5, s·w^-1.5).
func TestNoamForm(t *testing.T) {
	const lr, d, w = 2.0, 512.0, 8000.0
	base := lr / math.Sqrt(d) / math.Sqrt(w)
	s := InverseSqrt{Warmup: w}
	for _, step := range []int64{1, 100, 8000, 9000, 50000} {
		x := float64(step)
		noam := lr / math.Sqrt(d) * math.Min(1/math.Sqrt(x), x*math.Pow(w, -1.5))
		if got := base * s.Factor(step); math.Abs(got-noam) > 1e-15 {
			t.Errorf("step %d: %g, noam %g", step, got, noam)
		}
	}
}

func TestParseSchedule(t *testing.T) {
	s, err := ParseSchedule("inverse-sqrt", 10, 5, 0)
	if err != nil || s != (InverseSqrt{Warmup: 10, InitialStep: 5}) {
		t.Errorf("ParseSchedule = %v, %v", s, err)
	}
	if s, err := ParseSchedule("cosine", 10, 0, 500); err != nil || s != (Cosine{Warmup: 10, Total: 500}) {
		t.Errorf("ParseSchedule(cosine) = %v, %v", s, err)
	}
	for _, tc := range []struct {
		name                string
		warmup, init, total int64
		want                string
	}{
		{"linear", 0, 0, 0, `unknown learning-rate schedule "linear"`},
		{"constant", 0, 10, 0, "initial step only applies to inverse-sqrt"},
		{"cosine", 0, 10, 100, "initial step only applies to inverse-sqrt"},
		{"cosine", 10, 0, 0, "give the number of steps"},
		{"cosine", 100, 0, 100, "warmup 100 must be shorter than the 100 steps"},
		{"inverse-sqrt", -1, 0, 0, "must not be negative"},
	} {
		if _, err := ParseSchedule(tc.name, tc.warmup, tc.init, tc.total); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
}

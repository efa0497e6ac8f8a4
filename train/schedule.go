package train

import (
	"fmt"
	"math"
	"strings"
)

// Schedule gives the factor the groups' base learning rates are multiplied
// by at an update step (1-based: step 1 is the first update).
type Schedule interface {
	Factor(step int64) float64
	String() string
}

// Constant keeps the learning rate at its base value.
type Constant struct{}

// Factor returns 1.
func (Constant) Factor(int64) float64 { return 1 }

func (Constant) String() string { return "constant" }

// InverseSqrt is the Transformer schedule: a linear warmup to the base
// learning rate at step Warmup, then decay with the inverse square root of
// the step,
//
//	factor(s) = sqrt(Warmup) · min(s^-0.5, s · Warmup^-1.5),  s = InitialStep + step,
//
// which is fairseq's inverse_sqrt with a warmup from 0. It is normalized so
// that the base learning rate is the peak; tensor2tensor's and NeurST's
// "noam" form, lr_noam · d_model^-0.5 · min(s^-0.5, s · Warmup^-1.5), is the
// same curve with base rate lr_noam · d_model^-0.5 · Warmup^-0.5.
//
// InitialStep continues a schedule (NeurST's initial_step): a fine-tuning
// run of a model trained for InitialStep updates starts where that
// training's schedule stopped instead of warming up again.
type InverseSqrt struct {
	Warmup      int64
	InitialStep int64
}

// Factor returns the schedule's value at step.
func (s InverseSqrt) Factor(step int64) float64 {
	t := float64(s.InitialStep + step)
	if t <= 0 {
		return 0
	}
	if s.Warmup <= 0 {
		return 1 / math.Sqrt(t)
	}
	w := float64(s.Warmup)
	return math.Sqrt(w) * math.Min(1/math.Sqrt(t), t/(w*math.Sqrt(w)))
}

func (s InverseSqrt) String() string {
	if s.InitialStep != 0 {
		return fmt.Sprintf("inverse-sqrt (warmup %d, from step %d)", s.Warmup, s.InitialStep)
	}
	return fmt.Sprintf("inverse-sqrt (warmup %d)", s.Warmup)
}

// Cosine warms up linearly to the base learning rate at step Warmup, then
// decays it along a half cosine to 0 at step Total, the usual schedule of a
// fine-tuning run of known length:
//
//	factor(s) = s/Warmup                                   for s ≤ Warmup,
//	            (1 + cos(π·(s − Warmup)/(Total − Warmup)))/2  up to Total, then 0.
type Cosine struct {
	Warmup, Total int64
}

// Factor returns the schedule's value at step.
func (c Cosine) Factor(step int64) float64 {
	switch {
	case step <= 0 || step >= c.Total:
		return 0
	case step <= c.Warmup:
		return float64(step) / float64(c.Warmup)
	}
	return (1 + math.Cos(math.Pi*float64(step-c.Warmup)/float64(c.Total-c.Warmup))) / 2
}

func (c Cosine) String() string {
	return fmt.Sprintf("cosine (warmup %d, to 0 at step %d)", c.Warmup, c.Total)
}

// ParseSchedule returns the schedule called name: "constant",
// "inverse-sqrt" (with warmup and initial step) or "cosine" (with warmup
// and total steps, which it needs).
func ParseSchedule(name string, warmup, initialStep, total int64) (Schedule, error) {
	if warmup < 0 || initialStep < 0 {
		return nil, fmt.Errorf("schedule: warmup %d and initial step %d must not be negative", warmup, initialStep)
	}
	switch strings.ToLower(name) {
	case "constant", "":
		if initialStep != 0 {
			return nil, fmt.Errorf("schedule: an initial step only applies to inverse-sqrt")
		}
		return Constant{}, nil
	case "inverse-sqrt", "inverse_sqrt", "rsqrt", "noam":
		return InverseSqrt{Warmup: warmup, InitialStep: initialStep}, nil
	case "cosine":
		switch {
		case initialStep != 0:
			return nil, fmt.Errorf("schedule: an initial step only applies to inverse-sqrt")
		case total <= 0:
			return nil, fmt.Errorf("schedule cosine decays to 0 at the last step: give the number of steps")
		case warmup >= total:
			return nil, fmt.Errorf("schedule cosine: warmup %d must be shorter than the %d steps", warmup, total)
		}
		return Cosine{Warmup: warmup, Total: total}, nil
	}
	return nil, fmt.Errorf("unknown learning-rate schedule %q; use constant, inverse-sqrt or cosine", name)
}

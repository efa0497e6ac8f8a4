package calibrate

import (
	"fmt"
	"math"
	"sort"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/passes/quantize"
)

// Apply sets the clip initializer of each quantizer of rec named in clips
// (by quantized tensor) to its value, in every element of a per-channel
// clip, and rewrites the record (with rec.Calibration, when the caller set
// it). A tensor without a clipped quantizer, a missing clip initializer or
// a clip that is not positive and finite is an error, and m is unchanged.
func Apply(m *graph.Model, rec *quantize.Record, clips map[string]float32) error {
	names := make([]string, 0, len(clips))
	for n := range clips {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		q := rec.Lookup(n)
		switch {
		case q == nil:
			return fmt.Errorf("calibrated tensor %s has no quantizer in the %s record", n, quantize.MetadataKey)
		case q.Clip == "":
			return fmt.Errorf("quantizer on %s (%s) has a fixed scale and no clip to calibrate", n, q.Kind)
		case m.Initializer(q.Clip) == nil:
			return fmt.Errorf("quantizer on %s: clip initializer %s is missing from the model", n, q.Clip)
		}
		if v := float64(clips[n]); !(v > 0) || math.IsInf(v, 0) {
			return fmt.Errorf("clip %g for %s must be a positive finite number", v, n)
		}
	}
	for _, n := range names {
		t := m.Initializer(rec.Lookup(n).Clip)
		vals := make([]float32, graph.NumElements(t.Dims))
		for i := range vals {
			vals[i] = clips[n]
		}
		if err := graph.SetFloats(t, vals); err != nil {
			return err
		}
	}
	return quantize.WriteRecord(m, rec)
}

// Calibrate computes clips from c by method and applies them to m, and
// records the method in rec.
func Calibrate(m *graph.Model, rec *quantize.Record, c *Collector, method string, percentile float64) error {
	clips, err := c.Clips(method, percentile)
	if err != nil {
		return err
	}
	cal := &quantize.Calibration{Method: method}
	if method == Percentile {
		cal.Percentile = percentile
		if percentile == 0 {
			cal.Percentile = DefaultPercentile
		}
	}
	for _, t := range c.order {
		cal.Batches = max(cal.Batches, c.hists[t].batches)
	}
	old := rec.Calibration
	rec.Calibration = cal
	if err := Apply(m, rec, clips); err != nil {
		rec.Calibration = old
		return err
	}
	return nil
}

package train

import (
	"fmt"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/calibrate"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/passes/smooth"
	"github.com/qatc/qatc/seq2seq"
)

// CalibrationOptions configure Calibrate.
type CalibrationOptions struct {
	// Roles name the model's source and target inputs.
	Roles seq2seq.Roles
	// Batches caps the number of batches run (0: the whole dataset).
	Batches int
	// BatchTokens is the padded token count of one batch.
	BatchTokens int
	// Threads is the session's intra-op thread count.
	Threads int
	// Progress, when set, is called after each batch.
	Progress func(done, total int)
}

// Calibrate runs the fp32 model m over the dataset's batches and feeds the
// values of every tensor c tracks into c's histograms. Only one batch's
// activations are alive at a time, so memory stays flat however many
// batches run.
func Calibrate(m *graph.Model, d *seq2seq.Dataset, c *calibrate.Collector, opts CalibrationOptions) error {
	return eachBatch(m, d, c.Tensors(), opts, func(name string, _ []int64, v []float32) { c.Observe(name, v) })
}

// ChannelMax runs the fp32 model m over the dataset's batches (as
// Calibrate does) and returns, for each named tensor, the largest |x| of
// each channel of its last axis: the activation statistics of
// SmoothQuant (passes/smooth).
func ChannelMax(m *graph.Model, d *seq2seq.Dataset, tensors []string, opts CalibrationOptions) (map[string][]float32, error) {
	maxima := map[string][]float32{}
	var bad error
	err := eachBatch(m, d, tensors, opts, func(name string, shape []int64, v []float32) {
		mx := maxima[name]
		if len(shape) == 0 || mx != nil && int64(len(mx)) != shape[len(shape)-1] {
			if bad == nil {
				bad = fmt.Errorf("channel statistics: %q has shape %v, not a fixed last axis", name, shape)
			}
			return
		}
		c := shape[len(shape)-1]
		if mx == nil {
			mx = make([]float32, c)
			maxima[name] = mx
		}
		for i, x := range v {
			j := i % int(c)
			if x < 0 {
				x = -x
			}
			mx[j] = max(mx[j], x)
		}
	})
	if err == nil {
		err = bad
	}
	return maxima, err
}

// eachBatch runs m over the dataset's batches (at most opts.Batches,
// spread over the length buckets) and hands each named tensor's values to
// observe. Only one batch's activations are alive at a time, so memory
// stays flat however many batches run.
func eachBatch(m *graph.Model, d *seq2seq.Dataset, tensors []string, opts CalibrationOptions, observe func(name string, shape []int64, v []float32)) error {
	if len(tensors) == 0 {
		return nil
	}
	if opts.BatchTokens <= 0 {
		opts.BatchTokens = 4096
	}
	s, err := ort.Open(m, &ort.Options{Threads: opts.Threads, Outputs: tensors})
	if err != nil {
		return err
	}
	defer s.Close()
	b, err := NewBatcher(d, opts.BatchTokens, 1)
	if err != nil {
		return err
	}
	plan := b.Sequential()
	if opts.Batches > 0 && opts.Batches < len(plan) {
		// Spread the batches over the length buckets rather than taking
		// only the shortest sentences.
		picked := make(Plan, opts.Batches)
		for i := range picked {
			picked[i] = plan[i*len(plan)/opts.Batches]
		}
		plan = picked
	}
	for i, idx := range plan {
		batch := d.MakeBatch(idx)
		outs, err := s.Run(map[string]*ort.Tensor{
			opts.Roles.Src: ort.Int64([]int64{int64(batch.Size), int64(batch.SrcLen)}, batch.Src),
			opts.Roles.Tgt: ort.Int64([]int64{int64(batch.Size), int64(batch.TgtLen)}, batch.Dec),
		}, tensors...)
		if err != nil {
			return fmt.Errorf("calibration batch %d (lines %d..): %w", i+1, batch.Lines[0], err)
		}
		for _, t := range tensors {
			v, ok := outs[t].Data.([]float32)
			if !ok {
				return fmt.Errorf("calibration: tensor %q is %s, not float32", t, outs[t].DType())
			}
			observe(t, outs[t].Shape, v)
		}
		if opts.Progress != nil {
			opts.Progress(i+1, len(plan))
		}
	}
	return nil
}

// Smooth applies SmoothQuant (passes/smooth) to the fp32 transformer m with
// strength alpha: it measures the per-channel maxima of every smoothable
// LayerNorm's output over the dataset's batches, then moves them into the
// weights that read it. m keeps its function.
func Smooth(m *graph.Model, d *seq2seq.Dataset, alpha float64, opts CalibrationOptions) (smooth.Report, error) {
	groups, skipped, err := smooth.Groups(m)
	if err != nil {
		return smooth.Report{}, err
	}
	if len(groups) == 0 {
		return smooth.Report{Skipped: skipped}, fmt.Errorf("smoothing: no LayerNorm of the model feeds only projections (%s)", strings.Join(skipped, "; "))
	}
	var norms []string
	for _, g := range groups {
		norms = append(norms, g.Norm.Output)
	}
	maxima, err := ChannelMax(m, d, norms, opts)
	if err != nil {
		return smooth.Report{}, err
	}
	r, err := smooth.Apply(m, groups, maxima, alpha)
	r.Skipped = skipped
	return r, err
}

// SampleSize is how many sentences RecordSample keeps.
const SampleSize = 16

// RecordSample records, unless m already has one, SampleSize sentences of
// d spread over the file (every len/SampleSize-th pair) as m's sample
// (quantize.SampleKey): the batch its inputs take, so that export checks
// itself on real sentences. It reports whether it wrote one.
func RecordSample(m *graph.Model, d *seq2seq.Dataset, roles seq2seq.Roles) (bool, error) {
	if s, err := quantize.ReadSample(m); err != nil || s != nil {
		return false, err
	}
	n := min(SampleSize, len(d.Examples))
	if n == 0 {
		return false, nil
	}
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i * len(d.Examples) / n
	}
	b := d.MakeBatch(idx)
	s := &quantize.Sample{From: d.SrcPath, Inputs: map[string]quantize.SampleTensor{
		roles.Src: {Shape: []int64{int64(b.Size), int64(b.SrcLen)}, Data: b.Src},
		roles.Tgt: {Shape: []int64{int64(b.Size), int64(b.TgtLen)}, Data: b.Dec},
	}}
	return true, quantize.WriteSample(m, s)
}

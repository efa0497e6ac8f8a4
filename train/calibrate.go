package train

import (
	"fmt"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/calibrate"
)

// CalibrationOptions configure Calibrate.
type CalibrationOptions struct {
	// Roles name the model's source and target inputs.
	Roles Roles
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
func Calibrate(m *graph.Model, d *Dataset, c *calibrate.Collector, opts CalibrationOptions) error {
	tensors := c.Tensors()
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
			c.Observe(t, v)
		}
		if opts.Progress != nil {
			opts.Progress(i+1, len(plan))
		}
	}
	return nil
}

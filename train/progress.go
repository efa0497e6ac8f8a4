package train

import (
	"fmt"
	"io"
	"math"
	"time"

	"github.com/schollz/progressbar/v3"
)

// Progress is what the loop reports after every update.
type Progress struct {
	// Step is the number of updates done; Steps the number the run will
	// stop at.
	Step, Steps int64
	Epoch       int
	// Loss is this batch's training loss, GradNorm its gradient norm
	// before clipping, LR the weights' learning rate used.
	Loss, GradNorm, LR float64
	// Tokens counts the target tokens trained on so far (resumed runs
	// included); TokensPerSec is this run's throughput.
	Tokens       int64
	TokensPerSec float64
	Elapsed, ETA time.Duration
	// ValidLoss is the validation loss when this step evaluated it, else
	// NaN.
	ValidLoss float64
	// Checkpoint is the directory written at this step, or "".
	Checkpoint string
	// CommTime is this run's time so far in summing gradients across
	// ranks, WaitTime in exchanging step reports before that (mostly
	// waiting for the slowest rank); both are 0 in one process.
	CommTime, WaitTime time.Duration
}

// Display draws progress for a terminal (a progress bar redrawn in place)
// or, for logs and pipes, as plain lines every Every steps and at every
// validation and checkpoint.
type Display struct {
	w     io.Writer
	bar   *progressbar.ProgressBar
	every int64
}

// NewDisplay returns a display of a run of steps updates on w; tty
// chooses the progress bar over plain lines, and every spaces the plain
// lines (0: 100).
func NewDisplay(w io.Writer, steps int64, tty bool, every int64) *Display {
	d := &Display{w: w, every: every}
	if d.every <= 0 {
		d.every = 100
	}
	if tty {
		d.bar = progressbar.NewOptions64(steps,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetWidth(30),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(false),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetDescription("training"),
		)
	}
	return d
}

// Update shows p; it is a Config.Progress function.
func (d *Display) Update(p Progress) {
	stats := fmt.Sprintf("loss %.4f  lr %.3g  %.0f tok/s  eta %s", p.Loss, p.LR, p.TokensPerSec, roundDuration(p.ETA))
	if d.bar != nil {
		d.bar.Describe(stats)
		d.bar.Set64(p.Step)
		if !math.IsNaN(p.ValidLoss) || p.Checkpoint != "" {
			d.bar.Clear()
			fmt.Fprintln(d.w, eventLine(p))
			d.bar.RenderBlank()
		}
		return
	}
	if p.Step%d.every == 0 || p.Step == p.Steps || p.Step == 1 {
		fmt.Fprintf(d.w, "step %d/%d  epoch %d  %s\n", p.Step, p.Steps, p.Epoch+1, stats)
	}
	if !math.IsNaN(p.ValidLoss) || p.Checkpoint != "" {
		fmt.Fprintln(d.w, eventLine(p))
	}
}

// Finish ends the progress bar's line.
func (d *Display) Finish() {
	if d.bar != nil {
		d.bar.Finish()
		fmt.Fprintln(d.w)
	}
}

func eventLine(p Progress) string {
	s := fmt.Sprintf("step %d:", p.Step)
	if !math.IsNaN(p.ValidLoss) {
		s += fmt.Sprintf(" validation loss %.4f", p.ValidLoss)
	}
	if p.Checkpoint != "" {
		s += " checkpoint " + p.Checkpoint
	}
	return s
}

func roundDuration(d time.Duration) time.Duration {
	if d > time.Minute {
		return d.Round(time.Second)
	}
	return d.Round(100 * time.Millisecond)
}

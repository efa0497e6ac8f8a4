package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progress shows a bar on a terminal and a line every few seconds
// elsewhere (logs, CI); it finishes when done reaches total.
type progress struct {
	w     io.Writer
	what  string
	bar   *progressbar.ProgressBar
	last  time.Time
	start time.Time
}

func newProgress(w io.Writer, what string) *progress {
	return &progress{w: w, what: what, start: time.Now()}
}

// isTerminal reports whether w is a character device.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func (p *progress) update(done, total int) {
	if isTerminal(p.w) {
		if p.bar == nil {
			p.bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(p.w), progressbar.OptionSetDescription(p.what),
				progressbar.OptionShowCount(), progressbar.OptionSetPredictTime(true), progressbar.OptionClearOnFinish())
		}
		p.bar.Set(done)
		if done == total {
			p.bar.Finish()
		}
		return
	}
	if time.Since(p.last) >= 5*time.Second || done == total {
		p.last = time.Now()
		fmt.Fprintf(p.w, "%s: %d/%d (%s)\n", p.what, done, total, time.Since(p.start).Round(time.Second))
	}
}

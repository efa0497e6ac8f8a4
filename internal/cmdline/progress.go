package cmdline

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
)

// Progress shows a bar on a terminal and a line every few seconds
// elsewhere (logs, CI); it finishes when done reaches total.
type Progress struct {
	w     io.Writer
	what  string
	bar   *progressbar.ProgressBar
	last  time.Time
	start time.Time
}

// NewProgress returns a display of what's progress on w.
func NewProgress(w io.Writer, what string) *Progress {
	return &Progress{w: w, what: what, start: time.Now()}
}

// IsTerminal reports whether w is a character device.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// Update shows that done of total are done.
func (p *Progress) Update(done, total int) {
	if IsTerminal(p.w) {
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

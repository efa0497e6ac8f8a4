package train

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"
)

func TestDisplayPlain(t *testing.T) {
	var b bytes.Buffer
	d := NewDisplay(&b, 200, false, 100)
	for step := int64(1); step <= 200; step++ {
		p := Progress{Step: step, Steps: 200, Loss: 2.5, LR: 1e-3, TokensPerSec: 1234, ETA: 90 * time.Second, ValidLoss: math.NaN()}
		if step == 150 {
			p.ValidLoss = 1.75
			p.Checkpoint = "ckpt/step-00000150"
		}
		d.Update(p)
	}
	d.Finish()
	want := "step 1/200  epoch 1  loss 2.5000  lr 0.001  1234 tok/s  eta 1m30s\n" +
		"step 100/200  epoch 1  loss 2.5000  lr 0.001  1234 tok/s  eta 1m30s\n" +
		"step 150: validation loss 1.7500 checkpoint ckpt/step-00000150\n" +
		"step 200/200  epoch 1  loss 2.5000  lr 0.001  1234 tok/s  eta 1m30s\n"
	if b.String() != want {
		t.Errorf("output\n%s\nwant\n%s", b.String(), want)
	}
}

func TestDisplayBar(t *testing.T) {
	var b bytes.Buffer
	d := NewDisplay(&b, 10, true, 0)
	for step := int64(1); step <= 10; step++ {
		p := Progress{Step: step, Steps: 10, Loss: 3, ValidLoss: math.NaN()}
		if step == 10 {
			p.ValidLoss = 2
		}
		d.Update(p)
	}
	d.Finish()
	out := b.String()
	for _, want := range []string{"loss 3.0000", "step 10: validation loss 2.0000", "10/10"} {
		if !strings.Contains(out, want) {
			t.Errorf("bar output %q lacks %q", out, want)
		}
	}
}

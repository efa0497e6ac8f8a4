package export

import (
	"slices"
	"strings"
	"testing"

	"github.com/qatc/qatc/passes/quantize"
)

// TestInsertedModels exports QAT models made by passes/quantize.Insert
// (the models `qatc insert` writes) in every format they can carry.
func TestInsertedModels(t *testing.T) {
	fp32, _, batch := torchQAT(t)
	for _, tc := range []struct {
		name    string
		params  func(*quantize.Params)
		formats []string
	}{
		{"default", func(p *quantize.Params) { p.WeightInit = quantize.InitMax; p.ActClipMax = 8 }, Formats},
		{"per-channel", func(p *quantize.Params) {
			p.WeightInit = quantize.InitMax
			p.ActClipMax = 8
			p.Granularity = quantize.Channel
		}, Formats},
		{"per-block", func(p *quantize.Params) {
			p.WeightInit = quantize.InitMax
			p.ActClipMax = 8
			p.Granularity, p.BlockSize = quantize.Block, 32
		}, []string{"matmulnbits"}}, // 8-bit blocked qdq runs in fp32 in onnxruntime 1.30 (at the basic level, see runtime): only Export is checked
		{"6-bit", func(p *quantize.Params) {
			p.WeightInit = quantize.InitMax
			p.ActClipMax = 8
			p.WeightBits, p.ActBits = 6, 6
		}, []string{"qdq"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			qat := clone(t, fp32)
			p := quantize.DefaultParams()
			tc.params(&p)
			if _, err := quantize.Insert(qat, p); err != nil {
				t.Fatal(err)
			}
			for _, format := range tc.formats {
				out, rep, err := Export(qat, format, nil)
				if err != nil {
					t.Fatalf("%s: %v", format, err)
				}
				v, err := Verify(qat, out, batch, Padding{})
				t.Logf("%s: %d quantizers, max abs error %.4g (bound %.4g), top-1 %.4f, %d int / %d float matmul kernels",
					format, len(rep.Quantizers), v.MaxAbsErr, v.Bound, v.Top1, v.IntKernels, v.FloatMatMuls)
				if err != nil {
					t.Fatal(err)
				}
			}
			if !slices.Contains(tc.formats, "qdq") {
				if _, _, err := Export(qat, "qdq", nil); err != nil {
					t.Errorf("qdq: %v", err)
				}
			}
			if len(tc.formats) < len(Formats) {
				// Blocks and 6 bits are beyond the integer MatMuls.
				if _, _, err := Export(qat, "qoperator", nil); err == nil || !strings.Contains(err.Error(), "export with --format qdq") {
					t.Errorf("qoperator: got %v, want an error naming --format qdq", err)
				}
			}
		})
	}
}

package export

import (
	"fmt"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/passes/quantize"
)

// TestBlockedExports exports the PyTorch export with weights quantized per
// block of 32 (8, 4 and 3 bits; activations 8 bits) as qdq and, where
// MatMulNBits takes the bits, matmulnbits. Verify runs each file at
// onnxruntime's default level against the QAT model, itself at the
// default level: 4 and 3 bits are stored INT4 (onnxruntime reads those
// right), 8 bits stay int8 behind the blocked view (fold.GuardBlocked),
// where the MatMulIntegerToFloat fusion would reject them.
func TestBlockedExports(t *testing.T) {
	fp32, err := graph.Load(fixture.Torch(t, fixture.Transformer17))
	if err != nil {
		t.Fatal(err)
	}
	batch := torchBatch(4, 12, 12, 3)
	for _, tc := range []struct {
		bits    int
		formats []string
		guarded bool
	}{
		{8, []string{"qdq", "matmulnbits"}, true},
		{4, []string{"qdq", "matmulnbits"}, false},
		{3, []string{"qdq"}, false},
	} {
		t.Run(fmt.Sprintf("w%d", tc.bits), func(t *testing.T) {
			qat := clone(t, fp32)
			p := quantize.DefaultParams()
			p.WeightBits, p.Granularity, p.BlockSize, p.WeightInit = tc.bits, quantize.Block, 32, quantize.InitMax
			if _, err := quantize.Insert(qat, p); err != nil {
				t.Fatal(err)
			}
			for _, format := range tc.formats {
				out, rep, err := Export(qat, format, nil)
				if err != nil {
					t.Fatalf("%s: %v", format, err)
				}
				v, err := Verify(qat, out, batch, Padding{})
				t.Logf("%s: max abs error %.4g (bound %.4g), %d integer kernels, notes %q", format, v.MaxAbsErr, v.Bound, v.IntKernels, rep.Notes)
				if err != nil {
					t.Errorf("%s: %v", format, err)
				}
				guarded := false
				for _, n := range rep.Notes {
					guarded = guarded || strings.Contains(n, "[blocks, block] view")
				}
				if want := tc.guarded && format == "qdq"; guarded != want {
					t.Errorf("%s: guarded %v, want %v (notes %q)", format, guarded, want, rep.Notes)
				}
			}
		})
	}
}

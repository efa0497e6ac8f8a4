package lightseq_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/qatc/qatc/export/lightseq"
	"github.com/qatc/qatc/export/lightseq/lspb"
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/internal/protodiff"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/testmodels"
)

// TestScalingsFolded exports the tiny model and testmodels.Rescale's
// equivalent of it (q and k scaled by Pow(head size, −¼) from their
// shapes, V, the context and the hidden activation by compensated
// literals): the recogniser sees through every scaling and the writer
// folds them, so both files hold the same integer weights, biases,
// LayerNorms and clips (to float rounding); the rescaled file passes
// Verify.
func TestScalingsFolded(t *testing.T) {
	cfg := testmodels.Tiny()
	cfg.Heads = 2 // head size 16: Pow(16, −¼) = ½, so every factor is exact
	b := batchOf(cfg, 8, 12, 10, 7)
	var files []*lspb.QuantTransformer
	for _, rescale := range []bool{false, true} {
		m, err := testmodels.Build(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if rescale {
			if err := testmodels.Rescale(m); err != nil {
				t.Fatal(err)
			}
		}
		m = calibratedQAT(t, m, b, maxParams())
		qt, rep, err := lightseq.Export(m, lightseq.Options{BosID: testmodels.BOS, EosID: testmodels.EOS, Calib: b})
		if err != nil {
			t.Fatal(err)
		}
		if rescale {
			notes := 0
			for _, n := range rep.Notes {
				if strings.Contains(n, "folded into V") || strings.Contains(n, "folded into the output projection") || strings.Contains(n, "folded into dense2") {
					notes++
				}
			}
			// 2+2 layers: 6 attentions (V and context each) and 4 FFNs.
			if notes != 6*2+4 {
				t.Errorf("%d notes on folded scalings, want 16: %q", notes, rep.Notes)
			}
			r, err := lightseq.Verify(m, rep.Model, qt, batchOf(cfg, 16, 12, 12, 99))
			if err != nil {
				t.Fatal(err)
			}
			t.Log(r)
		}
		files = append(files, qt)
	}
	r := protodiff.Compare(files[0], files[1], 1e-5)
	for _, d := range r.Diffs {
		t.Errorf("the two files differ: %s", d)
	}
	// 2 encoder layers × 4 kernels, 2 decoder layers × 6, two tables and
	// the encoder-decoder K/V kernel.
	if r.Bytes != 2*4+2*6+3 || r.Floats == 0 {
		t.Errorf("compared %d byte fields and %d floats", r.Bytes, r.Floats)
	}
}

// calibratedQAT inserts quantizers with p and sets every activation clip
// to the largest |x| the fp32 model computes on batch, as qatc insert
// --calib-src does (the fp32 model, so that equivalent graphs get
// equivalent clips).
func calibratedQAT(t *testing.T, m *graph.Model, batch map[string]*ort.Tensor, p quantize.Params) *graph.Model {
	t.Helper()
	plan, err := quantize.Plan(m, p)
	if err != nil {
		t.Fatal(err)
	}
	out := runActs(t, m, plan.Quantizers, batch)
	rec, err := quantize.Insert(m, p)
	if err != nil {
		t.Fatal(err)
	}
	setMaxClips(t, m, rec, out)
	return m
}

// TestTorchRefusals: a PyTorch export LightSeq cannot hold is refused for
// that reason alone, after the recogniser has read it: d256
// (nn.Transformer's defaults) ends its post-norm stacks on a second, final
// LayerNorm. (The post-norm pair passes: cmd/qatc's
// TestTorchPathsLightSeq; an untied output projection is refused in
// TestRefusals.)
func TestTorchRefusals(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{fixture.D256, "post-norm layers followed by a final LayerNorm"},
	} {
		m, err := graph.Load(fixture.Torch(t, tc.file))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := quantize.Insert(m, maxParams()); err != nil {
			t.Fatal(err)
		}
		_, _, err = lightseq.Export(m, lightseq.Options{BosID: 2, EosID: 3})
		if !errors.Is(err, lightseq.ErrUnsupported) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want it refused: %q", tc.file, err, tc.want)
		}
	}
}

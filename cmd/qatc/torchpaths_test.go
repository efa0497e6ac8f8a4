package main

import (
	"encoding/json"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qatc/qatc/export/lightseq"
	"github.com/qatc/qatc/export/lightseq/lspb"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/internal/protodiff"
)

// TestTorchPathsLightSeq is issue 11's LightSeq export of both PyTorch
// export paths of one trained model: postnorm_nn.onnx (nn.Transformer,
// fused in_proj, q scaled by 1/√d) and postnorm_fn.onnx (separate q/k/v,
// q and k each scaled by Pow(head_dim, −0.25) from the runtime shape),
// whose target table is also the output projection. Each goes through
// insert with minmax calibration on the task's sentences and `export
// --format lightseq`, whose check (the reference decoder against the QAT
// model, on the sentences insert recorded) must be within its bounds; the
// two files hold the same int8 weights byte for byte and every float
// within 1e-5 relative, and the two checks report the same figures.
//
// Weight clips start at one value (--weight-init value): nn.Transformer
// quantizes in_proj as one tensor and the functional path q, k and v
// apart, so clips from each tensor's own max |w| differ by design.
func TestTorchPathsLightSeq(t *testing.T) {
	src, tgt := fixture.Torch(t, "postnorm.src"), fixture.Torch(t, "postnorm.tgt")
	dir := t.TempDir()
	type check struct {
		Check  string `json:"check_batch"`
		Verify lightseq.VerifyReport
	}
	var (
		files  []*lspb.QuantTransformer
		checks []check
	)
	for _, f := range []string{fixture.PostNormNN, fixture.PostNormFn} {
		name := strings.TrimSuffix(f, ".onnx")
		qat := filepath.Join(dir, name+".qat.onnx")
		if code, out, errOut := qatc(t, "insert", fixture.Torch(t, f), "-o", qat, "--calib-src", src, "--calib-tgt", tgt,
			"--calib-method", "minmax", "--weight-init", "value", "--weight-clip-max", "1", "--threads", "1"); code != 0 {
			t.Fatalf("insert %s: exit %d\n%s%s", f, code, out, errOut)
		}
		pb := filepath.Join(dir, name+".pb")
		code, out, errOut := qatc(t, "export", qat, "-o", pb, "--format", "lightseq", "--json")
		if code != 0 {
			t.Fatalf("export %s --format lightseq: exit %d\n%s%s", f, code, out, errOut)
		}
		var c check
		if err := json.Unmarshal([]byte(out), &c); err != nil {
			t.Fatalf("export %s --json: %v\n%s", f, err, out)
		}
		v := c.Verify
		t.Logf("%s: %v; on %s", f, v, c.Check)
		if !strings.Contains(c.Check, "recorded in the model") || v.Positions == 0 {
			t.Errorf("%s: checked %d positions of %s, want the sentences insert recorded", f, v.Positions, c.Check)
		}
		if v.MinTop1 != lightseq.MinTop1 || v.MaxRMSErr != lightseq.MaxRMSErr || !(v.Top1 >= v.MinTop1) || !(v.RMSErr <= v.MaxRMSErr) {
			t.Errorf("%s: top-1 %.4f (min %g), RMS error %.4f (max %g): outside the check's bounds", f, v.Top1, v.MinTop1, v.RMSErr, v.MaxRMSErr)
		}
		qt, err := lightseq.Read(pb)
		if err != nil {
			t.Fatal(err)
		}
		files, checks = append(files, qt), append(checks, c)
	}
	a, b := checks[0].Verify, checks[1].Verify
	if a.Positions != b.Positions || a.Top1 != b.Top1 || math.Abs(a.RMSErr-b.RMSErr) > 1e-4 || math.Abs(a.MaxAbsErr-b.MaxAbsErr) > 1e-3*a.MaxAbs {
		t.Errorf("the two checks differ: %v and %v", a, b)
	}
	r := protodiff.Compare(files[0], files[1], 1e-5)
	for _, d := range r.Diffs {
		t.Errorf("the two LightSeq files differ: %s", d)
	}
	// 2 encoder layers × 4 kernels, 2 decoder layers × 6, two tables and
	// the encoder-decoder K/V kernel.
	if r.Bytes != 2*4+2*6+3 || r.Floats == 0 {
		t.Errorf("compared %d int8 weight fields and %d floats, want 23 and some", r.Bytes, r.Floats)
	}
	t.Logf("%d int8 weight fields equal byte for byte, %d floats within %.2g relative", r.Bytes, r.Floats, r.MaxRel)
}

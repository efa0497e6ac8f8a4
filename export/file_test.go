package export

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qatc/qatc/passes/quantize"
)

// TestFile checks export.File against Export, Verify and Save on the
// PyTorch reference model's QAT model: the same file, report and check
// (on the batch the QAT model records), and one-line errors naming the
// model.
func TestFile(t *testing.T) {
	_, shared, batch := torchQAT(t)
	// File checks on the batch the model records.
	qat := shared.CloneShared()
	sample := &quantize.Sample{From: "torchBatch", Inputs: map[string]quantize.SampleTensor{}}
	for name, v := range batch {
		sample.Inputs[name] = quantize.SampleTensor{Shape: v.Shape, Data: v.Int64s()}
	}
	if err := quantize.WriteSample(qat, sample); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "qat.onnx")
	if err := qat.Save(path); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"qdq", "qoperator"} {
		t.Run(format, func(t *testing.T) {
			out, rep, err := Export(qat, format, &Options{Source: path})
			if err != nil {
				t.Fatal(err)
			}
			ver, err := Verify(qat, out, batch, Padding{Target: "tgt_ids"}) // File's padding: the target input, id 0
			if err != nil {
				t.Fatal(err)
			}
			want := filepath.Join(dir, format+".want.onnx")
			if err := out.Save(want); err != nil {
				t.Fatal(err)
			}
			got := filepath.Join(dir, format+".onnx")
			res, err := File(path, got, Config{Format: format})
			if err != nil {
				t.Fatal(err)
			}
			frep, fver := res.Report, *res.Verify
			a, _ := os.ReadFile(want)
			b, _ := os.ReadFile(got)
			if len(a) == 0 || !bytes.Equal(a, b) {
				t.Errorf("File wrote %d bytes, Export then Save %d, not the same", len(b), len(a))
			}
			if frep.Size != rep.Size || frep.SourceSize != rep.SourceSize || frep.IntWeights != rep.IntWeights || frep.IntBytes != rep.IntBytes {
				t.Errorf("File's report %+v, Export's %+v", *frep, *rep)
			}
			if fver.MaxAbsErr != ver.MaxAbsErr || fver.Step != ver.Step || fver.StepRule != ver.StepRule || fver.Top1 != ver.Top1 || fver.IntKernels != ver.IntKernels || fver.Output != ver.Output || fver.Positions != ver.Positions || fver.Padded != ver.Padded {
				t.Errorf("File's check %+v, Verify's %+v", fver, ver)
			}
		})
	}
	for _, tc := range []struct {
		name, path, format, want string
	}{
		{"unknown format", path, "int3", `unknown export format "int3"`},
		{"missing model", filepath.Join(dir, "nope.onnx"), "qdq", "nope.onnx"},
	} {
		_, err := File(tc.path, filepath.Join(dir, "x.onnx"), Config{Format: tc.format})
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %v, want one line naming %s", tc.name, err, tc.want)
		}
		if _, err := os.Stat(filepath.Join(dir, "x.onnx")); err == nil {
			t.Errorf("%s: an output was written", tc.name)
		}
	}
}

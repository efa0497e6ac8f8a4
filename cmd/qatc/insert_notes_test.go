package main

import (
	"bytes"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
)

// TestCalibSrcAlone: --calib-src alone is --calib-method minmax, weight
// clips included (max |w|), and the output says where clips start.
func TestCalibSrcAlone(t *testing.T) {
	dir := t.TempDir()
	model, src, tgt := tinySetup(t, dir)
	for _, tc := range []struct {
		name  string
		flags []string
		line  string
		clip  string // "max": every weight clip is max |w|; else the value
	}{
		{"alone", []string{"--calib-src", src, "--calib-tgt", tgt}, "weight clips from max |w|, activation clips calibrated by minmax", "max"},
		{"minmax", []string{"--calib-src", src, "--calib-tgt", tgt, "--calib-method", "minmax"}, "weight clips from max |w|, activation clips calibrated by minmax", "max"},
		{"value", []string{"--calib-src", src, "--calib-tgt", tgt, "--calib-method", "minmax", "--weight-init", "value"}, "weight clips from the value 1, activation clips calibrated by minmax", "1"},
		{"no calibration", nil, "weight clips from the value 1, activation clips at 16", "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, tc.name+".onnx")
			code, stdout, errOut := qatc(t, append([]string{"insert", model, "-o", out}, tc.flags...)...)
			if code != 0 || !strings.Contains(stdout, tc.line) {
				t.Fatalf("exit %d, output %q, want it to say %q; %s", code, stdout, tc.line, errOut)
			}
			m, err := graph.Load(out)
			if err != nil {
				t.Fatal(err)
			}
			rec, err := quantize.ReadRecord(m)
			if err != nil {
				t.Fatal(err)
			}
			weights := 0
			for _, q := range rec.Quantizers {
				if q.Kind != quantize.KindWeight || q.TiedTo != "" {
					continue
				}
				weights++
				c, _ := graph.Floats(m.Initializer(q.Clip))
				w, _ := graph.Floats(m.Initializer(q.Tensor))
				want := float32(1)
				if tc.clip == "max" {
					want = 0
					for _, x := range w {
						want = max(want, float32(math.Abs(float64(x))))
					}
				}
				if len(c) != 1 || c[0] != want {
					t.Errorf("%s: clip %v, want %g", q.Tensor, c, want)
				}
			}
			if weights == 0 {
				t.Fatal("no weight quantizers")
			}
		})
	}
	// The two spellings of minmax write the same model.
	a, errA := graph.Load(filepath.Join(dir, "alone.onnx"))
	b, errB := graph.Load(filepath.Join(dir, "minmax.onnx"))
	if errA != nil || errB != nil {
		t.Fatal(errA, errB)
	}
	da, _ := a.Marshal()
	db, _ := b.Marshal()
	if !bytes.Equal(da, db) {
		t.Error("--calib-src alone and --calib-method minmax write different models")
	}
}

// TestInsertReportsUnquantized: an operand the placement cannot quantize
// (a float16 weight) is a line in insert's output, and in --dry-run's.
func TestInsertReportsUnquantized(t *testing.T) {
	dir := t.TempDir()
	m := graph.New("h", 17)
	m.AddInput("x", graph.Float, []int64{2, 4})
	m.AddInitializer(graph.FloatTensor("A", []int64{4, 3}, make([]float32, 12)))
	m.AddInitializer(&onnx.TensorProto{Name: "H", Dims: []int64{4, 3}, DataType: int32(graph.Float16), RawData: make([]byte, 24)})
	m.Op("MatMul", "mA", []string{"x", "A"}, []string{"yA"})
	m.Op("Cast", "castH", []string{"H"}, []string{"Hf"}, graph.AttrInt("to", int64(graph.Float)))
	m.Op("MatMul", "mH", []string{"x", "Hf"}, []string{"yH"})
	m.AddOutput("yA", graph.Float, []int64{2, 3})
	m.AddOutput("yH", graph.Float, []int64{2, 3})
	model := filepath.Join(dir, "h.onnx")
	if err := m.Save(model); err != nil {
		t.Fatal(err)
	}
	const want = "1 matrix-product operands stay float:\n  mH input 1: initializer H is float16; only float32 weights are quantized"
	for _, args := range [][]string{
		{"insert", model, "-o", filepath.Join(dir, "q.onnx")},
		{"insert", model, "-o", filepath.Join(dir, "q.onnx"), "--dry-run"},
	} {
		code, out, errOut := qatc(t, args...)
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("%v: exit %d, output %q, want it to hold %q; %s", args, code, out, want, errOut)
		}
	}
}

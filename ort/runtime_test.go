package ort

import (
	"math"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
)

// maxAbsDiff returns the largest |a[i]-b[i]|.
func maxAbsDiff(a, b []float32) float64 {
	m := 0.0
	for i := range a {
		m = math.Max(m, math.Abs(float64(a[i])-float64(b[i])))
	}
	return m
}

func mustReadNpy(t *testing.T, name string) *Tensor {
	t.Helper()
	x, err := ReadNpy(fixture.Torch(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// TestParity runs PyTorch's exported transformer at both opsets and checks
// the logits against PyTorch's, then runs the first row alone in the same
// session to show that shapes may change between calls.
func TestParity(t *testing.T) {
	src := mustReadNpy(t, "transformer_src_ids.npy")
	tgt := mustReadNpy(t, "transformer_tgt_ids.npy")
	want := mustReadNpy(t, "transformer_logits.npy")
	for _, model := range []string{"transformer_opset14.onnx", "transformer_opset17.onnx"} {
		t.Run(model, func(t *testing.T) {
			s, err := OpenFile(fixture.Torch(t, model), &Options{Threads: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			out, err := s.Run(map[string]*Tensor{"src_ids": src, "tgt_ids": tgt})
			if err != nil {
				t.Fatal(err)
			}
			got := out["logits"]
			if !equalShape(got.Shape, want.Shape) {
				t.Fatalf("logits shape %v, want %v", got.Shape, want.Shape)
			}
			d := maxAbsDiff(got.Float32s(), want.Float32s())
			t.Logf("max abs error vs PyTorch: %.3g", d)
			if d > 1e-4 {
				t.Errorf("logits differ from PyTorch's by %g (atol 1e-4)", d)
			}

			// Row 0 alone, shorter target: batch and length both change.
			srcLen, tgtLen, vocab := src.Shape[1], tgt.Shape[1], want.Shape[2]
			cut := tgtLen - 2
			row := Int64([]int64{1, srcLen}, src.Int64s()[:srcLen])
			trow := Int64([]int64{1, cut}, tgt.Int64s()[:cut])
			out, err = s.Run(map[string]*Tensor{"src_ids": row, "tgt_ids": trow}, "logits")
			if err != nil {
				t.Fatal(err)
			}
			got = out["logits"]
			if !equalShape(got.Shape, []int64{1, cut, vocab}) {
				t.Fatalf("row 0 logits shape %v, want [1 %d %d]", got.Shape, cut, vocab)
			}
			// The decoder is causal, so the first cut positions of row 0
			// are unchanged by dropping the later ones.
			d = maxAbsDiff(got.Float32s(), want.Float32s()[:cut*vocab])
			t.Logf("row 0, %d target positions: max abs error %.3g", cut, d)
			if d > 1e-4 {
				t.Errorf("row 0 logits differ by %g (atol 1e-4)", d)
			}
		})
	}
}

func equalShape(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestIntermediateOutputs exposes the value feeding the final MatMul, a
// scalar constant and a Shape result, and checks them against the logits
// and the inputs: value × weight must equal the logits.
func TestIntermediateOutputs(t *testing.T) {
	src := mustReadNpy(t, "transformer_src_ids.npy")
	tgt := mustReadNpy(t, "transformer_tgt_ids.npy")
	for _, model := range []string{"transformer_opset14.onnx", "transformer_opset17.onnx"} {
		t.Run(model, func(t *testing.T) {
			m, err := graph.Load(fixture.Torch(t, model))
			if err != nil {
				t.Fatal(err)
			}
			mm := m.Producer("logits")
			if mm == nil || mm.OpType != "MatMul" {
				t.Fatalf("logits is not made by a MatMul")
			}
			hidden := mm.Input[0]
			w, err := graph.Floats(m.Initializer(mm.Input[1]))
			if err != nil {
				t.Fatal(err)
			}
			var shapeOut, scalarOut string
			for _, n := range m.Graph().Node {
				if n.OpType == "Shape" && n.Input[0] == "src_ids" && shapeOut == "" {
					shapeOut = n.Output[0]
				}
				if n.OpType == "Constant" && scalarOut == "" {
					if a := graph.Attr(n, "value"); a != nil && a.T != nil && len(a.T.Dims) == 0 && a.T.DataType == int32(graph.Float) {
						scalarOut = n.Output[0]
					}
				}
			}
			if shapeOut == "" || scalarOut == "" {
				t.Fatalf("no Shape(src_ids) or float scalar Constant in the model")
			}
			wantScalar, err := graph.Floats(graph.Attr(m.Producer(scalarOut), "value").T)
			if err != nil {
				t.Fatal(err)
			}
			nOut := len(m.Graph().Output)

			s, err := Open(m, &Options{Threads: 1, Outputs: []string{hidden, shapeOut, scalarOut, "logits"}})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if len(m.Graph().Output) != nOut {
				t.Errorf("Open changed the caller's model: %d outputs, had %d", len(m.Graph().Output), nOut)
			}
			if got := names(s.Outputs()); len(got) != 4 || got[0] != "logits" || got[1] != hidden {
				t.Errorf("Outputs() = %v, want logits then the 3 added values", got)
			}
			out, err := s.Run(map[string]*Tensor{"src_ids": src, "tgt_ids": tgt})
			if err != nil {
				t.Fatal(err)
			}
			h, logits := out[hidden], out["logits"]
			d, v := h.Shape[2], logits.Shape[2]
			if !equalShape(h.Shape, []int64{2, 7, d}) || int64(len(w)) != d*v {
				t.Fatalf("hidden %v, weight %d elements, logits %v", h.Shape, len(w), logits.Shape)
			}
			prod := matmul(h.Float32s(), w, int(d), int(v))
			diff := maxAbsDiff(prod, logits.Float32s())
			t.Logf("hidden × weight vs logits: max abs error %.3g", diff)
			if diff > 1e-4 {
				t.Errorf("hidden × weight differs from logits by %g", diff)
			}
			if got := out[shapeOut]; !equalShape(got.Shape, []int64{2}) || got.Int64s()[0] != 2 || got.Int64s()[1] != 9 {
				t.Errorf("%s = %v %v, want int64[2] {2, 9}", shapeOut, got.Shape, got.Data)
			}
			if got := out[scalarOut]; len(got.Shape) != 0 || got.Float32s()[0] != wantScalar[0] {
				t.Errorf("%s = %v %v, want scalar %v", scalarOut, got.Shape, got.Data, wantScalar[0])
			}
		})
	}
}

// matmul multiplies a [rows, k] by b [k, n] in float64.
func matmul(a, b []float32, k, n int) []float32 {
	rows := len(a) / k
	c := make([]float32, rows*n)
	for i := 0; i < rows; i++ {
		for j := 0; j < n; j++ {
			var sum float64
			for p := 0; p < k; p++ {
				sum += float64(a[i*k+p]) * float64(b[p*n+j])
			}
			c[i*n+j] = float32(sum)
		}
	}
	return c
}

package quantize_test

import (
	"fmt"
	"math"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
	"google.golang.org/protobuf/proto"
)

// TestBlockedDefaultLevel checks the blocked view on the PyTorch export
// (weights stored transposed under onnx::MatMul_N names, a tied table and
// its transposed copy): every blocked weight quantizer is in the view
// form, and the QAT model runs in onnxruntime at its default optimization
// level computing exactly what its fake-quantized weights give: the model
// with each weight quantizer replaced by its dequantized values (taken
// from an unoptimized run) yields the same logits at the default level.
func TestBlockedDefaultLevel(t *testing.T) {
	feeds := map[string]*ort.Tensor{}
	for name, file := range map[string]string{"src_ids": fixture.TransformerSrc, "tgt_ids": fixture.TransformerTgt} {
		x, err := ort.ReadNpy(fixture.Torch(t, file))
		if err != nil {
			t.Fatal(err)
		}
		feeds[name] = x
	}
	for _, tc := range []struct{ bits, block int }{{4, 32}, {8, 32}, {3, 16}} {
		t.Run(fmt.Sprintf("w%d-block%d", tc.bits, tc.block), func(t *testing.T) {
			m := loadTorch(t, 17)
			p := quantize.DefaultParams()
			p.WeightBits, p.ActBits, p.Granularity, p.BlockSize, p.WeightInit = tc.bits, 8, quantize.Block, tc.block, quantize.InitMax
			if _, err := quantize.Insert(m, p); err != nil {
				t.Fatal(err)
			}
			qs, err := quantize.Find(m)
			if err != nil {
				t.Fatal(err)
			}
			var outs []string
			for _, q := range qs {
				if q.Kind != quantize.KindWeight {
					continue
				}
				dq := m.Producer(q.Output)
				if dq == nil || dq.OpType != "Reshape" || q.BlockSize != tc.block || q.Axis == nil {
					t.Fatalf("weight %s: output %s is not the view's Reshape (block %d)", q.Tensor, q.Output, q.BlockSize)
				}
				dqNode := m.Producer(dq.Input[0])
				qNode := m.Producer(dqNode.Input[0])
				if qNode.OpType == "Clip" {
					qNode = m.Producer(qNode.Input[0])
				}
				v := quantize.FindBlockView(m, qNode, dqNode)
				if v == nil || v.Weight != q.Tensor || v.Axis != *q.Axis {
					t.Fatalf("weight %s: view %+v, quantizer axis %d", q.Tensor, v, *q.Axis)
				}
				outs = append(outs, q.Output)
			}
			if len(outs) != 22 {
				t.Fatalf("%d blocked weights, want 22", len(outs))
			}

			// The fake-quantized weights, from a run without optimizations.
			s, err := ort.Open(m, &ort.Options{Optimization: ort.OptimizeNone, Outputs: outs})
			if err != nil {
				t.Fatal(err)
			}
			w, err := s.Run(feeds, outs...)
			s.Close()
			if err != nil {
				t.Fatal(err)
			}
			ref := graph.FromProto(proto.Clone(m.Proto).(*onnx.ModelProto), m.Dir)
			for _, o := range outs {
				name := ref.AddInitializer(graph.FloatTensor(ref.UniqueName(o+"/value"), w[o].Shape, w[o].Float32s()))
				ref.ReplaceUses(o, name)
			}
			ref.RemoveDead()

			got, want := logits(t, m, feeds), logits(t, ref, feeds)
			d, scale := 0.0, 0.0
			for i := range want {
				d = max(d, math.Abs(float64(got[i]-want[i])))
				scale = max(scale, math.Abs(float64(want[i])))
			}
			t.Logf("default level: logits differ from the dequantized weights' by %.3g (max |logit| %.3g)", d, scale)
			if d > 1e-5*scale {
				t.Errorf("at the default level the blocked QAT model's logits differ by %.3g from its dequantized weights' (max %.3g)", d, scale)
			}
		})
	}
}

// logits runs m at onnxruntime's default optimization level.
func logits(t *testing.T, m *graph.Model, feeds map[string]*ort.Tensor) []float32 {
	t.Helper()
	s, err := ort.Open(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.Run(feeds, "logits")
	if err != nil {
		t.Fatal(err)
	}
	return out["logits"].Float32s()
}

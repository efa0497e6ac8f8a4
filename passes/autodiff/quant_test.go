package autodiff_test

import (
	"math"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/autodiff"
)

// quantCase is a fake quantizer in the project's graph form over x with
// upstream gradient g, and the gradients worked out by hand.
type quantCase struct {
	name     string
	xShape   []int64
	x, g     []float32
	clip     []float32 // scalar when one value
	axis     int64     // per-channel axis when len(clip) > 1
	unsigned bool      // relu kind: uint8, qmax 255
	bits     int       // 8 unless 4 (int8 with an integer Clip to [-8, 7])
	clipGrad string
	block    int64 // block size (opset 21) along axis; the clip is then clipDims
	clipDims []int64
	opset    int64 // 17 (21 when blocked) unless set
	l2       float32
	dx       []float32
	dclip    []float32
}

var quantCases = []quantCase{
	{name: "act", xShape: []int64{4}, x: []float32{-2, -0.5, 0.3, 1.5}, g: []float32{1, 1, 1, 1}, clip: []float32{1},
		dx: []float32{0, 1, 1, 0}, dclip: []float32{1 - 128.0/127}},
	{name: "act/weighted", xShape: []int64{2, 3}, x: []float32{-20, 3, 17, 16, -16.5, 0}, g: []float32{0.5, 1, 2, 3, 4, 5}, clip: []float32{16},
		// lo = -16·128/127 = -16.126: -20 below (0.5), 17 above (2), 16 inside, -16.5 below (4)
		dx: []float32{0, 1, 0, 3, 0, 5}, dclip: []float32{2 - 128.0/127*(0.5+4)}},
	{name: "relu", xShape: []int64{4}, x: []float32{-0.5, 0.3, 1.5, 2}, g: []float32{1, 2, 3, 4}, clip: []float32{1}, unsigned: true,
		dx: []float32{0, 2, 0, 0}, dclip: []float32{7}},
	{name: "per-channel", xShape: []int64{2, 3}, x: []float32{2, -0.5, -3, 0.4, 0.6, -0.6}, g: []float32{1, 2, 3, 4, 5, 6}, clip: []float32{1, 0.5}, axis: 0,
		dx: []float32{0, 2, 0, 4, 0, 0}, dclip: []float32{1 - 128.0/127*3, 5 - 128.0/127*6}},
	{name: "per-channel/axis1", xShape: []int64{3, 2}, x: []float32{2, 0.4, -0.5, 0.6, -3, -0.6}, g: []float32{1, 4, 2, 5, 3, 6}, clip: []float32{1, 0.5}, axis: 1,
		dx: []float32{0, 4, 2, 0, 0, 0}, dclip: []float32{1 - 128.0/127*3, 5 - 128.0/127*6}},
	{name: "4-bit", xShape: []int64{4}, x: []float32{-1.5, -1.1, 0.5, 1.2}, g: []float32{1, 1, 1, 1}, clip: []float32{1}, bits: 4,
		dx: []float32{0, 1, 1, 0}, dclip: []float32{1 - 8.0/7}},
	{name: "lsq", xShape: []int64{2}, x: []float32{0.3, 2}, g: []float32{1, 1}, clip: []float32{1}, clipGrad: "lsq",
		// inside: round(38.1) − 38.1 = −0.1 in scale units; above: 127.
		dx: []float32{1, 0}, dclip: []float32{(127 - 0.1) / 127}},
	{name: "blocked", xShape: []int64{4, 2}, x: []float32{1.5, 0.1, -0.5, -0.6, 2.5, 0.2, -3, -0.3}, g: []float32{1, 2, 3, 4, 5, 6, 7, 8},
		clip: []float32{1, 0.5, 2, 0.25}, clipDims: []int64{2, 2}, axis: 0, block: 2,
		dx: []float32{0, 2, 3, 0, 0, 6, 0, 0}, dclip: []float32{1, -128.0 / 127 * 4, 5 - 128.0/127*7, -128.0 / 127 * 8}},
	// Before opset 11 the rule builds explicit masks (no float Equal).
	{name: "act/weighted/opset10", xShape: []int64{2, 3}, x: []float32{-20, 3, 17, 16, -16.5, 0}, g: []float32{0.5, 1, 2, 3, 4, 5}, clip: []float32{16}, opset: 10,
		dx: []float32{0, 1, 0, 3, 0, 5}, dclip: []float32{2 - 128.0/127*(0.5+4)}},
	{name: "relu/opset10", xShape: []int64{4}, x: []float32{-0.5, 0.3, 1.5, 2}, g: []float32{1, 2, 3, 4}, clip: []float32{1}, unsigned: true, opset: 10,
		dx: []float32{0, 2, 0, 0}, dclip: []float32{7}},
	{name: "l2", xShape: []int64{4}, x: []float32{-2, -0.5, 0.3, 1.5}, g: []float32{1, 1, 1, 1}, clip: []float32{1}, l2: 0.01,
		dx: []float32{0, 1, 1, 0}, dclip: []float32{1 - 128.0/127 + 0.02}},
	// The penalty is coef·mean(clip²) over a tensor's clips: 2·coef·c/n each.
	{name: "l2/per-channel", xShape: []int64{2, 3}, x: []float32{2, -0.5, -3, 0.4, 0.6, -0.6}, g: []float32{1, 2, 3, 4, 5, 6}, clip: []float32{1, 0.5}, axis: 0, l2: 0.01,
		dx: []float32{0, 2, 0, 4, 0, 0}, dclip: []float32{1 - 128.0/127*3 + 0.01, 5 - 128.0/127*6 + 0.005}},
}

// quantModel builds L = Σ g ⊙ DQ(Q(x, Max(clip, tiny)/qmax)) with x and
// the clip as parameters.
func quantModel(c quantCase) *graph.Model {
	opset := int64(17)
	if c.block > 0 {
		opset = 21
	}
	if c.opset != 0 {
		opset = c.opset
	}
	m := graph.New("quant", opset)
	m.AddInitializer(graph.FloatTensor("x", c.xShape, c.x))
	clipDims := c.clipDims
	if len(c.clip) > 1 && clipDims == nil {
		clipDims = []int64{int64(len(c.clip))}
	}
	m.AddInitializer(graph.FloatTensor("x_clip_max", clipDims, c.clip))
	m.AddInput("g", graph.Float, c.xShape)
	m.AddInitializer(graph.FloatTensor("tiny", nil, []float32{1e-8}))
	qmax := float32(127)
	switch {
	case c.unsigned:
		qmax = 255
	case c.bits == 4:
		qmax = 7
	}
	m.AddInitializer(graph.FloatTensor("qmax", nil, []float32{qmax}))
	if c.unsigned {
		m.AddInitializer(graph.Uint8Tensor("zp", clipDims, make([]uint8, len(c.clip))))
	} else {
		m.AddInitializer(graph.Int8Tensor("zp", clipDims, make([]int8, len(c.clip))))
	}
	m.Op("Max", "", []string{"x_clip_max", "tiny"}, []string{"clipped"})
	m.Op("Div", "", []string{"clipped", "qmax"}, []string{"scale"})
	var attrs []*onnx.AttributeProto
	if opset >= 13 {
		attrs = append(attrs, graph.AttrInt("axis", c.axis))
	}
	if c.block > 0 {
		attrs = append(attrs, graph.AttrInt("block_size", c.block))
	}
	m.Op("QuantizeLinear", "x/quantize", []string{"x", "scale", "zp"}, []string{"q"}, attrs...)
	q := "q"
	if c.bits == 4 {
		m.AddInitializer(graph.Int8Tensor("qlo", nil, []int8{-8}))
		m.AddInitializer(graph.Int8Tensor("qhi", nil, []int8{7}))
		m.Op("Clip", "", []string{"q", "qlo", "qhi"}, []string{"q4"})
		q = "q4"
	}
	m.Op("DequantizeLinear", "x/dequantize", []string{q, "scale", "zp"}, []string{"y"}, attrs...)
	m.Op("Mul", "", []string{"y", "g"}, []string{"yg"})
	m.Op("ReduceSum", "", []string{"yg"}, []string{"L"}, graph.AttrInt("keepdims", 0))
	m.AddOutput("L", graph.Float, []int64{})
	return m
}

// TestQuantizerGradients checks the straight-through gradient and the
// clip gradients (NeurST and LSQ, signed, relu, per-channel, blocked,
// 4-bit, with L2) against hand-computed values.
func TestQuantizerGradients(t *testing.T) {
	if err := ort.Init(); err != nil {
		t.Fatal(err)
	}
	for _, c := range quantCases {
		t.Run(c.name, func(t *testing.T) {
			m := quantModel(c)
			opts := autodiff.Options{Logits: "L", ClipGrad: c.clipGrad, Loss: autodiff.Loss{Kind: "scalar"}}
			if c.l2 != 0 {
				opts.Loss.ClipL2 = map[string]float32{"x_clip_max": c.l2}
			}
			tm, info, err := autodiff.Build(m, opts)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, p := range info.Params {
				names = append(names, p.Name)
			}
			if strings.Join(names, ",") != "x,x_clip_max" {
				t.Fatalf("parameters %v, want x and x_clip_max (not tiny, qmax)", names)
			}
			s, err := ort.Open(tm, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			clipShape := c.clipDims
			if len(c.clip) > 1 && clipShape == nil {
				clipShape = []int64{int64(len(c.clip))}
			}
			out, err := s.Run(map[string]*ort.Tensor{
				"x":          ort.Float32(c.xShape, append([]float32(nil), c.x...)),
				"x_clip_max": ort.Float32(clipShape, append([]float32(nil), c.clip...)),
				"g":          ort.Float32(c.xShape, append([]float32(nil), c.g...)),
			})
			if err != nil {
				t.Fatal(err)
			}
			expect(t, "dx", out["x_grad"].Float32s(), c.dx, 1e-6)
			expect(t, "dclip", out["x_clip_max_grad"].Float32s(), c.dclip, 1e-5)
		})
	}
}

func expect(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range want {
		if math.Abs(float64(got[i]-want[i])) > tol*(1+math.Abs(float64(want[i]))) {
			t.Errorf("%s = %v, want %v", what, got, want)
			return
		}
	}
}

// TestNoRule checks that an op without a gradient rule on a gradient path
// is an error naming the node, and that the same op off the path is not.
func TestNoRule(t *testing.T) {
	m := graph.New("norule", 17)
	m.AddInitializer(graph.FloatTensor("w", []int64{2, 2}, []float32{1, 2, 3, 4}))
	m.AddInput("x", graph.Float, []int64{2, 2})
	m.Op("HardSigmoid", "layer3/odd_activation", []string{"w"}, []string{"h"})
	m.Op("Mul", "", []string{"h", "x"}, []string{"p"})
	m.Op("ReduceSum", "", []string{"p"}, []string{"L"}, graph.AttrInt("keepdims", 0))
	m.AddOutput("L", graph.Float, []int64{})
	_, _, err := autodiff.Build(m, autodiff.Options{Logits: "L", Loss: autodiff.Loss{Kind: "scalar"}})
	if err == nil || !strings.Contains(err.Error(), "layer3/odd_activation") || !strings.Contains(err.Error(), "HardSigmoid") {
		t.Fatalf("error %v, want one naming node layer3/odd_activation (HardSigmoid)", err)
	}
	// Off the gradient path (only the input x flows through it) it is fine.
	m2 := graph.New("offpath", 17)
	m2.AddInitializer(graph.FloatTensor("w", []int64{2, 2}, []float32{1, 2, 3, 4}))
	m2.AddInput("x", graph.Float, []int64{2, 2})
	m2.Op("HardSigmoid", "odd", []string{"x"}, []string{"h"})
	m2.Op("Mul", "", []string{"h", "w"}, []string{"p"})
	m2.Op("ReduceSum", "", []string{"p"}, []string{"L"}, graph.AttrInt("keepdims", 0))
	m2.AddOutput("L", graph.Float, []int64{})
	if _, _, err := autodiff.Build(m2, autodiff.Options{Logits: "L", Loss: autodiff.Loss{Kind: "scalar"}}); err != nil {
		t.Fatalf("op off the gradient path: %v", err)
	}
}

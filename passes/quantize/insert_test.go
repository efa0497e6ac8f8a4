package quantize_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/passes/quantize"
)

func TestInsertErrors(t *testing.T) {
	params := func(edit func(p *quantize.Params)) quantize.Params {
		p := quantize.DefaultParams()
		edit(p2(&p))
		return p
	}
	recipe := func(s string) *quantize.Recipe {
		r, err := quantize.ParseRecipe([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	tests := []struct {
		name  string
		opset int
		p     quantize.Params
		want  string
	}{
		{"include matches nothing", 17, params(func(p *quantize.Params) { p.Include = []string{"encoder/layers.7/linear1"} }),
			`--include "encoder/layers.7/linear1" matches no quantizable tensor or node; close candidates: /tf/encoder/layers.0/linear1/MatMul`},
		{"exclude matches nothing", 17, params(func(p *quantize.Params) { p.Exclude = []string{"sel_attn"} }),
			`--exclude "sel_attn" matches no quantizable tensor or node; close candidates:`},
		{"bad include", 17, params(func(p *quantize.Params) { p.Include = []string{"("} }), `bad regular expression "("`},
		{"weight clip 0", 17, params(func(p *quantize.Params) { p.WeightClipMax = 0 }), "weight clip max 0 must be a positive finite number"},
		{"act clip < 0", 17, params(func(p *quantize.Params) { p.ActClipMax = -1 }), "activation clip max -1 must be a positive finite number"},
		{"bits 9", 17, params(func(p *quantize.Params) { p.WeightBits = 9 }), "weight bits 9 out of range: use 2 to 8"},
		{"bits 1", 17, params(func(p *quantize.Params) { p.ActBits = 1 }), "activation bits 1 out of range: use 2 to 8"},
		{"strategy", 17, params(func(p *quantize.Params) { p.Strategy = "kl" }), `unknown quantization strategy "kl": only min/max exists`},
		{"block size does not divide", 17, params(func(p *quantize.Params) { p.Granularity, p.BlockSize = "block", 48 }),
			"block size 48 does not divide its input dimension 64"},
		{"block on opset 14", 14, params(func(p *quantize.Params) { p.Granularity, p.BlockSize = "block", 32 }),
			"block granularity needs opset 21 (DequantizeLinear block_size): the model is opset 14 and its ReduceMean node"},
		{"block without size", 17, params(func(p *quantize.Params) { p.Granularity = "block" }), "block granularity needs a block size"},
		{"unknown granularity", 17, params(func(p *quantize.Params) { p.Granularity = "row" }), `unknown weight granularity "row"`},
		{"unknown init", 17, params(func(p *quantize.Params) { p.WeightInit = "kl" }), `unknown weight clip init "kl"`},
		{"recipe weight kind on act", 17, params(func(p *quantize.Params) { p.Recipe = recipe("rules:\n  - match: Relu_output\n    kind: weight\n") }),
			`recipe rule 1 (match "Relu_output"): kind weight for activation /tf/encoder/layers.0/Relu_output_0`},
		{"recipe act kind on weight", 17, params(func(p *quantize.Params) { p.Recipe = recipe("rules:\n  - match: '^emb\\.weight$'\n    kind: relu\n") }),
			"kind relu for weight emb.weight: use kind weight (or skip)"},
		{"recipe matches nothing", 17, params(func(p *quantize.Params) { p.Recipe = recipe("rules:\n  - match: lineaer1\n    bits: 4\n") }),
			`recipe rule 1 (match "lineaer1") matches no quantizable tensor or node; close candidates: /tf/decoder/layers.0/linear1/MatMul`},
		{"recipe splits a tie", 17, params(func(p *quantize.Params) { p.Recipe = recipe("rules:\n  - match: '^emb\\.weight$'\n    bits: 4\n") }),
			"weight onnx::MatMul_1092 is a copy of emb.weight (tied) but the parameters give them different bits"},
	}
	for _, tt := range tests {
		m := loadTorch(t, tt.opset)
		before, _ := m.Marshal()
		_, err := quantize.Insert(m, tt.p)
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %v\nwant one line containing %q", tt.name, err, tt.want)
		}
		if after, _ := m.Marshal(); string(after) != string(before) {
			t.Errorf("%s: the failed insert changed the model", tt.name)
		}
	}
	// A quantized model is refused.
	m := loadTorch(t, 17)
	if _, err := quantize.Insert(m, quantize.DefaultParams()); err != nil {
		t.Fatal(err)
	}
	_, err := quantize.Insert(m, quantize.DefaultParams())
	if want := "model already has 68 quantizers; run insert on the fp32 model"; err == nil || err.Error() != want {
		t.Errorf("second insert: %v, want %q", err, want)
	}
}

func p2(p *quantize.Params) *quantize.Params { return p }

// TestGranularity checks the axes per-channel and block clips take on the
// exporter's layouts, and that onnxruntime runs the results.
func TestGranularity(t *testing.T) {
	tests := []struct {
		name    string
		p       func(p *quantize.Params)
		axes    map[string]int     // weight → Quantizer.Axis
		clips   map[string][]int64 // clip initializer → dims
		opset   int64
		maxRel  float64
		lowBits bool
	}{
		{"channel", func(p *quantize.Params) { p.PerChannel, p.WeightInit = true, "max" },
			map[string]int{
				"emb.weight":        0, // Gather: a clip per token row
				"onnx::MatMul_1092": 1, // its transpose: the vocabulary is axis 1
				"onnx::MatMul_1044": 1, // MatMul [in, out]
				"tf.encoder.layers.0.self_attn.out_proj.weight":     0, // Gemm transB=1: [out, in]
				"tf.decoder.layers.0.multihead_attn.in_proj_weight": 0, // sliced, then transposed into [in, out]
			},
			map[string][]int64{"emb.weight_clip_max": {512}, "onnx::MatMul_1044_clip_max": {192}}, 17, 0.2, false},
		{"block32", func(p *quantize.Params) { p.Granularity, p.BlockSize, p.WeightInit = "block", 32, "max" },
			map[string]int{
				"emb.weight":        1, // blocks along d
				"onnx::MatMul_1092": 0, // [d, vocab]: blocks along axis 0
				"onnx::MatMul_1052": 0, // [128, 64]: input axis 0
				"tf.encoder.layers.0.self_attn.out_proj.weight": 1,
			},
			map[string][]int64{"emb.weight_clip_max": {512, 2}, "onnx::MatMul_1052_clip_max": {64, 4}}, 21, 0.2, false},
		{"w4 tensor", func(p *quantize.Params) { p.WeightBits, p.WeightInit = 4, "mse" }, nil, nil, 17, 0.5, true},
		{"w4 block percentile", func(p *quantize.Params) {
			p.WeightBits, p.Granularity, p.BlockSize, p.WeightInit, p.Percentile = 4, "block", 16, "percentile", 99.9
		}, nil, map[string][]int64{"onnx::MatMul_1051_clip_max": {128, 4}}, 21, 0.5, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := loadTorch(t, 17)
			p := quantize.DefaultParams()
			tt.p(&p)
			rec, err := quantize.Insert(m, p)
			if err != nil {
				t.Fatal(err)
			}
			for w, ax := range tt.axes {
				q := rec.Lookup(w)
				if q == nil || q.Axis == nil || *q.Axis != ax {
					t.Errorf("%s: quantizer %+v, want axis %d", w, q, ax)
				}
			}
			for name, dims := range tt.clips {
				c := m.Initializer(name)
				if c == nil || !slices.Equal(c.Dims, dims) {
					t.Errorf("clip %s: %v, want dims %v", name, c, dims)
				}
			}
			if got := m.Opset(""); got != tt.opset {
				t.Errorf("opset %d, want %d", got, tt.opset)
			}
			clipNodes := 0
			for _, n := range m.Graph().Node {
				if n.OpType == "Clip" {
					clipNodes++
				}
			}
			if want := map[bool]int{true: 22, false: 0}[tt.lowBits]; clipNodes != want {
				t.Errorf("%d Clip nodes, want %d (one per 4-bit weight)", clipNodes, want)
			}
			found, err := quantize.Find(m)
			if err != nil || len(found) != 68 {
				t.Fatalf("Find: %d quantizers, %v", len(found), err)
			}
			for _, q := range found {
				if r := rec.Lookup(q.Tensor); axisOf(r) != axisOf(&q) || q.Bits != r.Bits || q.BlockSize != r.BlockSize {
					t.Errorf("Find %s: %+v, record %+v", q.Tensor, q, r)
				}
			}
			// Blocked weights too run at onnxruntime's default level
			// (see quantize.BlockView).
			rel := runTorch(t, m, 17)
			t.Logf("%s: relative logits error %.4f (activation clips 16.0)", tt.name, rel)
			if !(rel < tt.maxRel) {
				t.Errorf("relative logits error %.4f ≥ %g", rel, tt.maxRel)
			}
		})
	}
}

func axisOf(q *quantize.Quantizer) int {
	if q == nil || q.Axis == nil {
		return -1
	}
	return *q.Axis
}

// TestPlan checks Plan against Insert and that it leaves the model alone.
func TestPlan(t *testing.T) {
	m := loadTorch(t, 17)
	before, _ := m.Marshal()
	p := quantize.DefaultParams()
	p.Include = []string{"decoder/layers.1/"}
	p.Exclude = []string{"Softmax"}
	plan, err := quantize.Plan(m, p)
	if err != nil {
		t.Fatal(err)
	}
	if after, _ := m.Marshal(); string(after) != string(before) {
		t.Errorf("Plan changed the model")
	}
	rec, err := quantize.Insert(m, p)
	if err != nil {
		t.Fatal(err)
	}
	// Decoder layer 1: 20 operands, less its two softmax inputs, plus the
	// shared memory transpose its K/V projection reads.
	planned := plan.Quantizers
	if len(planned) != 19 || len(rec.Quantizers) != 19 {
		t.Errorf("planned %d, inserted %d, want 19", len(planned), len(rec.Quantizers))
	}
	for _, q := range planned {
		r := rec.Lookup(q.Tensor)
		if r == nil || r.Kind != q.Kind || strings.Join(r.Consumers, ",") != strings.Join(q.Consumers, ",") {
			t.Errorf("planned %+v, inserted %+v", q, r)
		}
		if strings.Contains(q.Tensor, "Softmax") {
			t.Errorf("excluded %s planned", q.Tensor)
		}
	}
}

// TestRecipe checks that recipe rules change kinds, bits and clips.
func TestRecipe(t *testing.T) {
	m := loadTorch(t, 17)
	r, err := quantize.ParseRecipe([]byte(`
rules:
  - match: 'encoder/layers\.0/Relu'
    kind: act
    clip: 4
    bits: 6
  - match: 'encoder/layers\.1/linear1'
    per_channel: true
  - match: 'Softmax'
    kind: skip
`))
	if err != nil {
		t.Fatal(err)
	}
	p := quantize.DefaultParams()
	p.Recipe = r
	rec, err := quantize.Insert(m, p)
	if err != nil {
		t.Fatal(err)
	}
	relu := rec.Lookup("/tf/encoder/layers.0/Relu_output_0")
	if relu == nil || relu.Kind != "act" || relu.Bits != 6 {
		t.Fatalf("relu quantizer %+v, want act 6 bits", relu)
	}
	if v, _ := graph.Floats(m.Initializer(relu.Clip)); len(v) != 1 || v[0] != 4 {
		t.Errorf("clip %v, want 4", v)
	}
	// The rule matched linear1's MatMul node, so both its operands follow it;
	// the activation one keeps a scalar clip since granularity is for weights.
	w := rec.Lookup("onnx::MatMul_1060")
	if w == nil || w.Axis == nil || *w.Axis != 1 {
		t.Errorf("linear1 weight %+v, want per-channel axis 1", w)
	}
	for _, q := range rec.Quantizers {
		if q.Kind == "softmax" {
			t.Errorf("softmax %s quantized despite the skip rule", q.Tensor)
		}
	}
	if len(rec.Quantizers) != 68-6 {
		t.Errorf("%d quantizers, want 62 (68 less 6 softmax)", len(rec.Quantizers))
	}
}

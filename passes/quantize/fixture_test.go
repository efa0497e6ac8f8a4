package quantize_test

import (
	"fmt"
	"math"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
)

func loadTorch(t testing.TB, opset int) *graph.Model {
	t.Helper()
	m, err := graph.Load(fixture.Torch(t, fmt.Sprintf("transformer_opset%d.onnx", opset)))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// torchExpected lists, by hand from the exported graphs, the quantizers
// NeurST's placement gives the reference transformer: per layer the
// operands of every MatMul/Gemm (see the graph dumps in the comments).
func torchExpected(opset int) map[string]string {
	// The exporter's names for the transposed weight copies.
	w := map[int][]string{
		17: {"onnx::MatMul_1044", "onnx::MatMul_1051", "onnx::MatMul_1052", "onnx::MatMul_1053", "onnx::MatMul_1060", "onnx::MatMul_1061",
			"onnx::MatMul_1062", "onnx::MatMul_1075", "onnx::MatMul_1076", "onnx::MatMul_1077", "onnx::MatMul_1090", "onnx::MatMul_1091", "onnx::MatMul_1092"},
		14: {"onnx::MatMul_1164", "onnx::MatMul_1171", "onnx::MatMul_1172", "onnx::MatMul_1173", "onnx::MatMul_1180", "onnx::MatMul_1181",
			"onnx::MatMul_1182", "onnx::MatMul_1195", "onnx::MatMul_1196", "onnx::MatMul_1197", "onnx::MatMul_1210", "onnx::MatMul_1211", "onnx::MatMul_1212"},
	}[opset]
	// LayerNorm's output: LayerNormalization at 17, the decomposition's
	// final Add at 14.
	ln := map[int]string{17: "LayerNormalization_output_0", 14: "Add_1_output_0"}[opset]
	want := map[string]string{
		"emb.weight":             "weight", // Gather table, tied with w[12]
		w[12]:                    "weight", // logits projection (transposed copy of emb.weight)
		"/tf/decoder/norm/" + ln: "act",    // final LayerNorm into the logits MatMul
		// encoder memory, transposed once and read by both decoder layers' K/V projection
		"/tf/decoder/layers.0/multihead_attn/Transpose_1_output_0": "act",
	}
	selfAttn := func(p string, l int, qkv string) {
		a := p + fmt.Sprintf("layers.%d/self_attn/", l)
		want[a+"Transpose_output_0"] = "act"                                                        // LN1 output (transposed) into the in_proj MatMul
		want[qkv] = "weight"                                                                        // fused in_proj, stored transposed
		want[a+"Div_2_output_0"] = "act"                                                            // scaled Q of Q·Kᵀ
		want[a+"Transpose_4_output_0"] = "act"                                                      // Kᵀ of Q·Kᵀ
		want[a+"Softmax_output_0"] = "softmax"                                                      // probs of probs·V
		want[a+"Transpose_3_output_0"] = "act"                                                      // V of probs·V
		want[a+"Reshape_5_output_0"] = "act"                                                        // context into out_proj Gemm
		want[fmt.Sprintf("tf.%s.layers.%d.self_attn.out_proj.weight", p[4:len(p)-1], l)] = "weight" // Gemm transB=1
	}
	ffn := func(p string, l int, norm, w1, w2 string) {
		a := p + fmt.Sprintf("layers.%d/", l)
		want[a+norm+"/"+ln] = "act"
		want[w1] = "weight"
		want[a+"Relu_output_0"] = "relu"
		want[w2] = "weight"
	}
	for l := 0; l < 2; l++ {
		selfAttn("/tf/encoder/", l, w[3*l])
		ffn("/tf/encoder/", l, "norm2", w[3*l+1], w[3*l+2])
		selfAttn("/tf/decoder/", l, w[6+3*l])
		ffn("/tf/decoder/", l, "norm3", w[6+3*l+1], w[6+3*l+2])
		a := fmt.Sprintf("/tf/decoder/layers.%d/multihead_attn/", l)
		want[a+"Transpose_output_0"] = "act"                                                  // LN2 output into the Q projection
		want[fmt.Sprintf("tf.decoder.layers.%d.multihead_attn.in_proj_weight", l)] = "weight" // sliced and transposed
		want[a+"Div_2_output_0"] = "act"
		want[a+"Softmax_output_0"] = "softmax"
		want[a+"Reshape_5_output_0"] = "act"
		want[fmt.Sprintf("tf.decoder.layers.%d.multihead_attn.out_proj.weight", l)] = "weight"
		// The exporter numbers the K and V transposes one lower in layer 1,
		// whose memory transpose is shared with layer 0.
		want[a+fmt.Sprintf("Transpose_%d_output_0", 7-l)] = "act" // Kᵀ
		want[a+fmt.Sprintf("Transpose_%d_output_0", 6-l)] = "act" // V
	}
	return want
}

// layoutOps pass values through unchanged up to layout.
var layoutOps = map[string]bool{"Transpose": true, "Reshape": true, "Slice": true, "Identity": true, "Cast": true,
	"Squeeze": true, "Unsqueeze": true, "Dropout": true, "QuantizeLinear": true, "Clip": true}

// dequantizeCount counts the DequantizeLinear nodes on the layout-only path
// from v back to the op that computed it.
func dequantizeCount(m *graph.Model, v string) int {
	n := 0
	for {
		p := m.Producer(v)
		if p == nil {
			return n
		}
		if p.OpType == "DequantizeLinear" {
			n++
		} else if !layoutOps[p.OpType] {
			return n
		}
		v = p.Input[0]
	}
}

func TestTorchPlacement(t *testing.T) {
	for _, opset := range []int{14, 17} {
		t.Run(fmt.Sprint("opset", opset), func(t *testing.T) {
			m := loadTorch(t, opset)
			rec, err := quantize.Insert(m, quantize.DefaultParams())
			if err != nil {
				t.Fatal(err)
			}
			want := torchExpected(opset)
			got := map[string]string{}
			for _, q := range rec.Quantizers {
				if _, dup := got[q.Tensor]; dup {
					t.Errorf("tensor %s quantized twice", q.Tensor)
				}
				got[q.Tensor] = q.Kind
			}
			for tensor, kind := range want {
				if got[tensor] != kind {
					t.Errorf("%s: kind %q, want %q", tensor, got[tensor], kind)
				}
			}
			for tensor, kind := range got {
				if _, ok := want[tensor]; !ok {
					t.Errorf("unexpected %s quantizer on %s", kind, tensor)
				}
			}
			if len(want) != 68 || len(rec.Quantizers) != len(want) {
				t.Errorf("%d quantizers, want %d (table has %d)", len(rec.Quantizers), 68, len(want))
			}
			// Every MatMul/Gemm reads both operands through exactly one DQ.
			mm := 0
			for _, n := range m.Graph().Node {
				if n.OpType != "MatMul" && n.OpType != "Gemm" {
					continue
				}
				mm++
				for i := 0; i < 2; i++ {
					if c := dequantizeCount(m, n.Input[i]); c != 1 {
						t.Errorf("%s operand %d (%s) passes %d quantizers, want 1", n.Name, i, n.Input[i], c)
					}
				}
				if n.OpType == "Gemm" && len(n.Input) > 2 && dequantizeCount(m, n.Input[2]) != 0 {
					t.Errorf("%s: bias %s quantized", n.Name, n.Input[2])
				}
			}
			if mm != 35 {
				t.Errorf("%d MatMul/Gemm nodes, want 35", mm)
			}
			// The tied table and its transposed copy share one clip.
			emb := rec.Lookup("emb.weight")
			var proj *quantize.Quantizer
			for i, q := range rec.Quantizers {
				if q.TiedTo != "" {
					proj = &rec.Quantizers[i]
				}
			}
			if proj == nil || proj.TiedTo != "emb.weight" || !proj.Transposed || proj.Clip != emb.Clip {
				t.Errorf("logits projection not tied to emb.weight: %+v (emb clip %s)", proj, emb.Clip)
			}
			// The logits stay a MatMul output, unquantized.
			if p := m.Producer("logits"); p == nil || p.OpType != "MatMul" {
				t.Errorf("logits produced by %v, want the MatMul", p)
			}
			rel := runTorch(t, m, opset)
			t.Logf("opset %d, NeurST init clips (weights 1.0, activations 16.0): relative logits error %.4f", opset, rel)
			if math.IsNaN(rel) || rel > 1 {
				t.Errorf("relative logits error %.4f with NeurST's init clips", rel)
			}
		})
	}
}

// runTorch runs m on the reference inputs and returns ||y − ref|| / ||ref||
// against PyTorch's logits.
func runTorch(t testing.TB, m *graph.Model, opset int, opts ...*ort.Options) float64 {
	t.Helper()
	feeds := map[string]*ort.Tensor{}
	for _, name := range []string{"src_ids", "tgt_ids"} {
		x, err := ort.ReadNpy(fixture.Torch(t, "transformer_"+name+".npy"))
		if err != nil {
			t.Fatal(err)
		}
		feeds[name] = x
	}
	ref, err := ort.ReadNpy(fixture.Torch(t, fixture.TransformerLogits))
	if err != nil {
		t.Fatal(err)
	}
	var o *ort.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	s, err := ort.Open(m, o)
	if err != nil {
		t.Fatalf("opset %d: onnxruntime refuses the quantized model: %v", opset, err)
	}
	defer s.Close()
	out, err := s.Run(feeds, "logits")
	if err != nil {
		t.Fatal(err)
	}
	return relErr(out["logits"].Float32s(), ref.Float32s())
}

func relErr(y, ref []float32) float64 {
	var num, den float64
	for i := range ref {
		d := float64(y[i] - ref[i])
		num += d * d
		den += float64(ref[i]) * float64(ref[i])
	}
	return math.Sqrt(num / den)
}

// BenchmarkInsert measures Insert (no calibration) on the reference
// transformer, loading included.
func BenchmarkInsert(b *testing.B) {
	path := fixture.Torch(b, fixture.Transformer17)
	for i := 0; i < b.N; i++ {
		m, err := graph.Load(path)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := quantize.Insert(m, quantize.DefaultParams()); err != nil {
			b.Fatal(err)
		}
	}
}

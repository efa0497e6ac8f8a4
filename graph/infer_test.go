package graph

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qatc/qatc/onnx"
)

// shapeCase builds a small graph; want maps values to TensorInfo.String().
type shapeCase struct {
	name  string
	opset int64
	build func(m *Model)
	want  map[string]string
}

// seqInput adds x: float32[batch, seq, 64].
func seqInput(m *Model) {
	m.AddInput("x", Float, []int64{-1, -1, 64}, "batch", "seq")
}

func i64(m *Model, name string, dims []int64, vals ...int64) string {
	return m.AddInitializer(Int64Tensor(name, dims, vals))
}

func TestInferShapes(t *testing.T) {
	tests := []shapeCase{
		{"matmul", 17, func(m *Model) {
			seqInput(m)
			m.AddInitializer(FloatTensor("w", []int64{64, 256}, make([]float32, 64*256)))
			m.Op("MatMul", "", []string{"x", "w"}, []string{"y"})
			m.AddInput("v", Float, []int64{64})
			m.Op("MatMul", "", []string{"x", "v"}, []string{"xv"})
			m.AddInput("q", Float, []int64{-1, 4, -1, 16}, "batch", "", "seq")
			m.AddInput("k", Float, []int64{1, 4, 16, 9})
			m.Op("MatMul", "", []string{"q", "k"}, []string{"qk"})
		}, map[string]string{"y": "float32[batch,seq,256]", "xv": "float32[batch,seq]", "qk": "float32[batch,4,seq,9]"}},
		{"onehot and topk", 17, func(m *Model) {
			m.AddInput("ids", Int64, []int64{-1, -1}, "batch", "seq")
			i64(m, "depth", nil, 512)
			m.AddInitializer(FloatTensor("vals", []int64{2}, []float32{0, 1}))
			m.Op("OneHot", "", []string{"ids", "depth", "vals"}, []string{"hot"})
			m.Op("OneHot", "", []string{"ids", "depth", "vals"}, []string{"hot0"}, AttrInt("axis", 0))
			seqInput(m)
			i64(m, "k", []int64{1}, 5)
			m.Op("TopK", "", []string{"x", "k"}, []string{"top", "idx"})
		}, map[string]string{"hot": "float32[batch,seq,512]", "hot0": "float32[512,batch,seq]", "top": "float32[batch,seq,5]", "idx": "int64[batch,seq,5]"}},
		{"gemm", 17, func(m *Model) {
			m.AddInput("a", Float, []int64{-1, 64}, "n")
			m.AddInitializer(FloatTensor("w", []int64{32, 64}, make([]float32, 32*64)))
			m.Op("Gemm", "", []string{"a", "w"}, []string{"y"}, AttrInt("transB", 1))
			m.Op("Gemm", "", []string{"w", "a"}, []string{"z"}, AttrInt("transA", 1), AttrInt("transB", 1))
		}, map[string]string{"y": "float32[n,32]", "z": "float32[64,n]"}},
		{"elementwise", 17, func(m *Model) {
			seqInput(m)
			m.AddInput("mask", Bool, []int64{-1, 1, -1}, "batch", "", "seq")
			m.AddInitializer(FloatTensor("one", nil, []float32{1}))
			m.Op("Add", "", []string{"x", "one"}, []string{"a"})
			m.Op("Where", "", []string{"mask", "one", "x"}, []string{"w"})
			m.Op("Equal", "", []string{"x", "one"}, []string{"e"})
			m.Op("Not", "", []string{"e"}, []string{"ne"})
			m.Op("Pow", "", []string{"x", "one"}, []string{"p"})
			m.Op("Max", "", []string{"x", "one", "a"}, []string{"mx"})
			m.Op("Erf", "", []string{"x"}, []string{"erf"})
			m.Op("Softmax", "", []string{"x"}, []string{"sm"}, AttrInt("axis", -1))
			m.Op("Clip", "", []string{"x", "", "one"}, []string{"clip"})
			m.Op("Trilu", "", []string{"x"}, []string{"tri"})
			m.Op("Dropout", "", []string{"x"}, []string{"dr", "drm"})
			m.Op("Cast", "", []string{"x"}, []string{"c"}, AttrInt("to", int64(Int8)))
		}, map[string]string{
			"a": "float32[batch,seq,64]", "w": "float32[batch,seq,64]", "e": "bool[batch,seq,64]",
			"ne": "bool[batch,seq,64]", "p": "float32[batch,seq,64]", "mx": "float32[batch,seq,64]",
			"erf": "float32[batch,seq,64]", "sm": "float32[batch,seq,64]", "clip": "float32[batch,seq,64]",
			"tri": "float32[batch,seq,64]", "dr": "float32[batch,seq,64]", "drm": "bool[batch,seq,64]",
			"c": "int8[batch,seq,64]",
		}},
		{"broadcast", 17, func(m *Model) {
			m.AddInput("a", Float, []int64{-1, 1, 5}, "n")
			m.AddInput("b", Float, []int64{3, -1}, "", "")
			m.AddInput("c", Float, []int64{-1}, "m")
			m.Op("Add", "", []string{"a", "b"}, []string{"ab"})
			m.Op("Mul", "", []string{"a", "c"}, []string{"ac"})
		}, map[string]string{"ab": "float32[n,3,5]", "ac": "float32[n,1,5]"}},
		{"reshape-from-shape", 17, func(m *Model) {
			// The Shape/Gather/Unsqueeze/Concat chain exporters write.
			seqInput(m)
			m.Op("Shape", "", []string{"x"}, []string{"sh"})
			m.Op("Gather", "", []string{"sh", i64(m, "zero", nil, 0)}, []string{"b"}, AttrInt("axis", 0))
			m.Op("Gather", "", []string{"sh", i64(m, "one", nil, 1)}, []string{"s"}, AttrInt("axis", 0))
			m.Op("Unsqueeze", "", []string{"b", i64(m, "ax0", []int64{1}, 0)}, []string{"bu"})
			m.Op("Unsqueeze", "", []string{"s", "ax0"}, []string{"su"})
			m.Op("Concat", "", []string{"bu", "su", i64(m, "heads", []int64{2}, 4, 16)}, []string{"target"}, AttrInt("axis", 0))
			m.Op("Reshape", "", []string{"x", "target"}, []string{"y"})
			m.Op("Mul", "", []string{"b", i64(m, "four", nil, 4)}, []string{"b4"})
			m.Op("Unsqueeze", "", []string{"b4", "ax0"}, []string{"b4u"})
			m.Op("Concat", "", []string{"b4u", "su", i64(m, "hd", []int64{1}, 16)}, []string{"t2"}, AttrInt("axis", 0))
			m.Op("Reshape", "", []string{"x", "t2"}, []string{"z"})
		}, map[string]string{
			"sh": "int64[3]", "b": "int64[]", "bu": "int64[1]", "target": "int64[4]",
			"y": "float32[batch,seq,4,16]", "z": "float32[?,seq,16]",
		}},
		{"reshape-constant", 17, func(m *Model) {
			seqInput(m)
			m.AddInput("s", Float, []int64{2, 3, 4})
			m.Op("Reshape", "", []string{"x", i64(m, "t1", []int64{4}, 0, 0, -1, 16)}, []string{"a"})
			m.Op("Reshape", "", []string{"x", i64(m, "t2", []int64{2}, -1, 64)}, []string{"b"})
			m.Op("Reshape", "", []string{"s", i64(m, "t3", []int64{2}, -1, 4)}, []string{"c"})
			m.Op("Reshape", "", []string{"x", i64(m, "t4", []int64{3}, 0, -1, 64)}, []string{"d"})
			m.AddInput("dyn", Int64, []int64{3})
			m.Op("Reshape", "", []string{"x", "dyn"}, []string{"e"})
		}, map[string]string{"a": "float32[batch,seq,4,16]", "b": "float32[?,64]", "c": "float32[6,4]", "d": "float32[batch,seq,64]", "e": "float32[?,?,?]"}},
		{"squeeze-unsqueeze-attr", 11, func(m *Model) {
			m.AddInput("x", Float, []int64{-1, 1, 8}, "n")
			m.Op("Squeeze", "", []string{"x"}, []string{"s"}, AttrInts("axes", 1))
			m.Op("Unsqueeze", "", []string{"s"}, []string{"u"}, AttrInts("axes", 0, -1))
		}, map[string]string{"s": "float32[n,8]", "u": "float32[1,n,8,1]"}},
		{"squeeze-unsqueeze-input", 13, func(m *Model) {
			m.AddInput("x", Float, []int64{-1, 1, 8}, "n")
			m.Op("Squeeze", "", []string{"x", i64(m, "a1", []int64{1}, -2)}, []string{"s"})
			m.Op("Unsqueeze", "", []string{"s", i64(m, "a2", []int64{2}, 1, 3)}, []string{"u"})
			m.AddInput("y", Float, []int64{1, 3, 1})
			m.Op("Squeeze", "", []string{"y"}, []string{"all"})
		}, map[string]string{"s": "float32[n,8]", "u": "float32[n,1,8,1]", "all": "float32[3]"}},
		{"reduce-attr", 17, func(m *Model) {
			seqInput(m)
			m.Op("ReduceMean", "", []string{"x"}, []string{"mean"}, AttrInts("axes", -1))
			m.Op("ReduceMax", "", []string{"x"}, []string{"max"}, AttrInts("axes", 0, 2), AttrInt("keepdims", 0))
			m.Op("ReduceSum", "", []string{"x", i64(m, "ax", []int64{1}, 1)}, []string{"sum"})
			m.Op("ReduceL2", "", []string{"x"}, []string{"l2"}, AttrInt("keepdims", 0))
		}, map[string]string{"mean": "float32[batch,seq,1]", "max": "float32[seq]", "sum": "float32[batch,1,64]", "l2": "float32[]"}},
		{"reduce-input", 18, func(m *Model) {
			seqInput(m)
			m.Op("ReduceMean", "", []string{"x", i64(m, "ax", []int64{1}, -1)}, []string{"mean"})
			m.Op("ReduceMax", "", []string{"x", "ax"}, []string{"max"}, AttrInt("keepdims", 0))
			m.AddInput("dynax", Int64, []int64{1})
			m.Op("ReduceSum", "", []string{"x", "dynax"}, []string{"sum"})
		}, map[string]string{"mean": "float32[batch,seq,1]", "max": "float32[batch,seq]", "sum": "float32[?,?,?]"}},
		{"transpose-concat-split", 17, func(m *Model) {
			seqInput(m)
			m.Op("Transpose", "", []string{"x"}, []string{"t"}, AttrInts("perm", 1, 0, 2))
			m.Op("Transpose", "", []string{"x"}, []string{"rev"})
			m.Op("Concat", "", []string{"x", "x"}, []string{"c"}, AttrInt("axis", -1))
			m.Op("Concat", "", []string{"x", "x"}, []string{"c1"}, AttrInt("axis", 1))
			m.Op("Split", "", []string{"x"}, []string{"s0", "s1"}, AttrInt("axis", 2))
			m.Op("Split", "", []string{"x", i64(m, "sizes", []int64{3}, 16, 16, 32)}, []string{"p0", "p1", "p2"}, AttrInt("axis", -1))
		}, map[string]string{
			"t": "float32[seq,batch,64]", "rev": "float32[64,seq,batch]", "c": "float32[batch,seq,128]", "c1": "float32[batch,?,64]",
			"s0": "float32[batch,seq,32]", "s1": "float32[batch,seq,32]", "p0": "float32[batch,seq,16]", "p2": "float32[batch,seq,32]",
		}},
		{"slice-gather", 17, func(m *Model) {
			seqInput(m)
			m.AddInitializer(FloatTensor("pe", []int64{100, 64}, make([]float32, 6400)))
			m.Op("Slice", "", []string{"pe", i64(m, "st", []int64{1}, 10), i64(m, "en", []int64{1}, -10), i64(m, "ax", []int64{1}, 0)}, []string{"a"})
			m.Op("Slice", "", []string{"x", i64(m, "st2", []int64{1}, 0), i64(m, "en2", []int64{1}, 32), i64(m, "ax2", []int64{1}, 2)}, []string{"b"})
			m.Op("Slice", "", []string{"pe", i64(m, "st3", []int64{1}, -1), i64(m, "en3", []int64{1}, -1000), "ax", i64(m, "step", []int64{1}, -3)}, []string{"c"})
			// pe[:seq]
			m.Op("Shape", "", []string{"x"}, []string{"sh"})
			m.Op("Slice", "", []string{"sh", i64(m, "one", []int64{1}, 1), i64(m, "two", []int64{1}, 2)}, []string{"seqlen"})
			m.Op("Slice", "", []string{"pe", i64(m, "zero", []int64{1}, 0), "seqlen", "ax"}, []string{"d"})
			m.AddInput("ids", Int64, []int64{-1, -1}, "batch", "seq")
			m.AddInitializer(FloatTensor("emb", []int64{1000, 64}, make([]float32, 64000)))
			m.Op("Gather", "", []string{"emb", "ids"}, []string{"e"})
			m.Op("Gather", "", []string{"x", i64(m, "i", nil, 0)}, []string{"g"}, AttrInt("axis", 1))
		}, map[string]string{
			"a": "float32[80,64]", "b": "float32[batch,seq,32]", "c": "float32[34,64]", "seqlen": "int64[1]",
			"d": "float32[seq,64]", "e": "float32[batch,seq,64]", "g": "float32[batch,64]",
		}},
		{"expand-where-pattern", 17, func(m *Model) {
			// Expand to a shape computed as Where(Equal(shape, -1), 1, shape).
			m.AddInput("mask", Bool, []int64{-1, -1}, "batch", "seq")
			m.Op("Unsqueeze", "", []string{"mask", i64(m, "ax", []int64{2}, 1, 2)}, []string{"m4"})
			m.Op("Shape", "", []string{"mask"}, []string{"sh"})
			m.Op("Gather", "", []string{"sh", i64(m, "zero", nil, 0)}, []string{"b"})
			m.Op("Gather", "", []string{"sh", i64(m, "one", nil, 1)}, []string{"s"})
			m.Op("Unsqueeze", "", []string{"b", i64(m, "a0", []int64{1}, 0)}, []string{"bu"})
			m.Op("Unsqueeze", "", []string{"s", "a0"}, []string{"su"})
			m.Op("Concat", "", []string{"bu", i64(m, "h", []int64{2}, 4, 1), "su"}, []string{"want"}, AttrInt("axis", 0))
			m.Op("ConstantOfShape", "", []string{i64(m, "four", []int64{1}, 4)}, []string{"ones"},
				AttrTensor("value", Int64Tensor("", []int64{1}, []int64{1})))
			m.Op("Mul", "", []string{"ones", i64(m, "neg", nil, -1)}, []string{"negs"})
			m.Op("Equal", "", []string{"want", "negs"}, []string{"eq"})
			m.Op("Where", "", []string{"eq", "ones", "want"}, []string{"shape"})
			m.Op("Expand", "", []string{"m4", "shape"}, []string{"y"})
		}, map[string]string{"m4": "bool[batch,1,1,seq]", "ones": "int64[4]", "eq": "bool[4]", "shape": "int64[4]", "y": "bool[batch,4,1,seq]"}},
		{"constants-and-ranges", 17, func(m *Model) {
			seqInput(m)
			m.Op("Constant", "", nil, []string{"k"}, AttrTensor("value", FloatTensor("", []int64{2, 3}, make([]float32, 6))))
			m.Op("Constant", "", nil, []string{"ki"}, &onnx.AttributeProto{Name: "value_ints", Type: onnx.AttributeProto_INTS, Ints: []int64{1, 2, 3}})
			m.Op("Constant", "", nil, []string{"kf"}, &onnx.AttributeProto{Name: "value_float", Type: onnx.AttributeProto_FLOAT, F: 1})
			m.Op("ConstantOfShape", "", []string{"ki"}, []string{"cos"})
			m.Op("Shape", "", []string{"x"}, []string{"sh"})
			m.Op("Gather", "", []string{"sh", i64(m, "one", nil, 1)}, []string{"s"})
			m.Op("Range", "", []string{i64(m, "r0", nil, 0), "s", i64(m, "r1", nil, 1)}, []string{"pos"})
			m.Op("Range", "", []string{i64(m, "r2", nil, 2), i64(m, "r10", nil, 10), i64(m, "r3", nil, 3)}, []string{"r"})
			m.Op("Shape", "", []string{"x"}, []string{"tail"}, AttrInt("start", -2))
			m.Op("Identity", "", []string{"x"}, []string{"id"})
			m.Op("CumSum", "", []string{"x", i64(m, "cax", nil, 1)}, []string{"cs"})
		}, map[string]string{
			"k": "float32[2,3]", "ki": "int64[3]", "kf": "float32[]", "cos": "float32[1,2,3]",
			"pos": "int64[seq]", "r": "int64[3]", "tail": "int64[2]", "id": "float32[batch,seq,64]", "cs": "float32[batch,seq,64]",
		}},
		{"layernorm", 17, func(m *Model) {
			seqInput(m)
			m.AddInitializer(FloatTensor("g", []int64{64}, make([]float32, 64)))
			m.Op("LayerNormalization", "", []string{"x", "g", "g"}, []string{"y", "mean", "inv"})
		}, map[string]string{"y": "float32[batch,seq,64]", "mean": "float32[batch,seq,1]", "inv": "float32[batch,seq,1]"}},
		{"quantization", 17, func(m *Model) {
			seqInput(m)
			m.AddInitializer(FloatTensor("scale", nil, []float32{0.1}))
			m.AddInitializer(Int8Tensor("zp", nil, []int8{0}))
			m.AddInitializer(Uint8Tensor("uzp", nil, []uint8{0}))
			m.Op("QuantizeLinear", "", []string{"x", "scale", "zp"}, []string{"q"})
			m.Op("QuantizeLinear", "", []string{"x", "scale"}, []string{"qu"})
			m.Op("DequantizeLinear", "", []string{"q", "scale", "zp"}, []string{"dq"})
			m.Op("DynamicQuantizeLinear", "", []string{"x"}, []string{"dy", "dys", "dyz"})
			m.AddInitializer(Int8Tensor("wq", []int64{64, 32}, make([]int8, 64*32)))
			m.Op("MatMulInteger", "", []string{"dy", "wq", "dyz", "zp"}, []string{"mi"})
			m.Op("QLinearMatMul", "", []string{"q", "scale", "zp", "wq", "scale", "zp", "scale", "uzp"}, []string{"ql"})
			m.SetOpset("com.microsoft", 1)
			m.AddNode(&onnx.NodeProto{OpType: "MatMulNBits", Domain: "com.microsoft", Input: []string{"x", "wq"}, Output: []string{"nb"},
				Attribute: []*onnx.AttributeProto{AttrInt("K", 64), AttrInt("N", 128)}})
		}, map[string]string{
			"q": "int8[batch,seq,64]", "qu": "uint8[batch,seq,64]", "dq": "float32[batch,seq,64]",
			"dy": "uint8[batch,seq,64]", "dys": "float32[]", "dyz": "uint8[]", "mi": "int32[batch,seq,32]",
			"ql": "uint8[batch,seq,32]", "nb": "float32[batch,seq,128]",
		}},
		{"unknown-op", 17, func(m *Model) {
			seqInput(m)
			m.Op("NotAnOnnxOp", "", []string{"x"}, []string{"u"})
			m.Op("Relu", "", []string{"u"}, []string{"r"})
			m.Op("Shape", "", []string{"u"}, []string{"sh"})
			m.Op("Transpose", "", []string{"u"}, []string{"t"})
		}, map[string]string{"u": "dtype(0)[...]", "r": "dtype(0)[...]", "sh": "int64[?]", "t": "dtype(0)[...]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New(tt.name, tt.opset)
			tt.build(m)
			if err := m.Validate(); err != nil {
				t.Fatalf("test graph invalid: %v", err)
			}
			info, err := m.InferShapes()
			if err != nil {
				t.Fatal(err)
			}
			for v, want := range tt.want {
				if got := info[v].String(); got != want {
					t.Errorf("%s: %s, want %s", v, got, want)
				}
			}
		})
	}
}

func TestInferShapesCycle(t *testing.T) {
	m := New("c", 17)
	m.AddInput("x", Float, []int64{2})
	m.Op("Add", "a", []string{"x", "c"}, []string{"b"})
	m.Op("Neg", "n", []string{"b"}, []string{"c"})
	if _, err := m.InferShapes(); err == nil || !strings.Contains(err.Error(), "cycle through node") {
		t.Fatalf("error %v", err)
	}
}

// TestInferShapesTorch checks the reference models: every value gets a
// rank, the named dimensions reach the logits, and a sample of
// intermediate values have the shapes onnxruntime reports for them.
func TestInferShapesTorch(t *testing.T) {
	want := map[string]map[string]string{
		"transformer_opset14.onnx": {
			"logits":               "float32[batch,tgt_len,512]",
			"/emb/Gather_output_0": "float32[batch,src_len,64]",
			"/Trilu_output_0":      "float32[tgt_len,tgt_len]",
			"/Equal_output_0":      "bool[batch,src_len]",
			"/tf/encoder/layers.0/self_attn/Reshape_output_0": "float32[src_len,?,16]",
		},
		"transformer_opset17.onnx": {
			"logits":                 "float32[batch,tgt_len,512]",
			"/emb_1/Gather_output_0": "float32[batch,tgt_len,64]",
			"/tf/encoder/layers.0/norm1/LayerNormalization_output_0": "float32[batch,src_len,64]",
			"/tf/encoder/layers.0/self_attn/Reshape_output_0":        "float32[src_len,?,16]",
		},
	}
	for _, path := range torchModelPaths(t) {
		base := filepath.Base(path)
		t.Run(base, func(t *testing.T) {
			m, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			info, err := m.InferShapes()
			if err != nil {
				t.Fatal(err)
			}
			names, err := m.ValueNames()
			if err != nil {
				t.Fatal(err)
			}
			if len(names) < len(m.Proto.Graph.Node) {
				t.Fatalf("%d values for %d nodes", len(names), len(m.Proto.Graph.Node))
			}
			for _, v := range names {
				if !info[v].RankKnown || info[v].Elem == Undefined {
					t.Errorf("%s (%s): %s", v, m.Producer(v).OpType, info[v])
				}
			}
			for v, w := range want[base] {
				if got := info[v].String(); got != w {
					t.Errorf("%s: %s, want %s", v, got, w)
				}
			}
		})
	}
}

func TestValueNamesOrder(t *testing.T) {
	m := New("o", 17)
	m.AddInput("x", Float, []int64{2})
	m.Op("Neg", "b", []string{"a"}, []string{"b"})
	m.Op("Neg", "a", []string{"x"}, []string{"a"})
	names, err := m.ValueNames()
	if got := strings.Join(names, ","); err != nil || got != "a,b" {
		t.Fatalf("ValueNames %s, %v; want a,b", got, err)
	}
	// A cycle has no order: an error naming a node on it, not file order.
	c := New("c", 17)
	c.AddInput("x", Float, []int64{2})
	c.Op("Add", "first", []string{"x", "b"}, []string{"a"})
	c.Op("Neg", "second", []string{"a"}, []string{"b"})
	c.AddOutput("b", Float, []int64{2})
	names, err = c.ValueNames()
	if err == nil || names != nil || !strings.Contains(err.Error(), "cycle through node") {
		t.Fatalf("ValueNames of a cycle: %v, %v; want no names and the cycle named", names, err)
	}
	if _, err := c.InferShapes(); err == nil || !strings.Contains(err.Error(), "cycle through node") {
		t.Fatalf("InferShapes of a cycle: %v", err)
	}
}

func TestKnownInts(t *testing.T) {
	m := New("k", 17)
	m.AddInput("x", Float, []int64{-1, 6, 64}, "batch")
	m.Op("Shape", "", []string{"x"}, []string{"sh"})
	m.Op("Gather", "", []string{"sh", i64(m, "idx", []int64{2}, 1, 2)}, []string{"tail"})
	m.Op("Mul", "", []string{"tail", i64(m, "two", nil, 2)}, []string{"twice"})
	m.Op("Gather", "", []string{"sh", i64(m, "zero", nil, 0)}, []string{"batch"})
	got, err := m.KnownInts()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"tail": "[6 64]", "twice": "[12 128]", "idx": "[1 2]"}
	for k, w := range want {
		if g := fmt.Sprint(got[k]); g != w {
			t.Errorf("%s: %s, want %s", k, g, w)
		}
	}
	for _, k := range []string{"sh", "batch"} {
		if v, ok := got[k]; ok {
			t.Errorf("%s depends on the batch size, got %v", k, v)
		}
	}
}

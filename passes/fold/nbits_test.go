package fold_test

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/fold"
	"github.com/qatc/qatc/passes/quantize"
)

// blockedQuantizer inserts a weight quantizer with one clip per block of
// block rows of W [K, N] and column (clip [ceil(K/block), N], as
// DequantizeLinear lays out blocked scales along axis 0).
func blockedQuantizer(m *graph.Model, W string, bits int, clip []float32, nb, n, block int64) {
	qmax := float32(int(1)<<(bits-1) - 1)
	dims := []int64{nb, n}
	c := m.AddInitializer(graph.FloatTensor(m.UniqueName(W+"_clip_max"), dims, clip))
	tiny := m.AddInitializer(graph.FloatTensor(m.UniqueName(W+"_tiny"), nil, []float32{1e-8}))
	qm := m.AddInitializer(graph.FloatTensor(m.UniqueName(W+"_qmax"), nil, []float32{qmax}))
	mx, scale := m.UniqueName(W+"_pos"), m.UniqueName(W+"_scale")
	m.Op("Max", "", []string{c, tiny}, []string{mx})
	m.Op("Div", "", []string{mx, qm}, []string{scale})
	zp := m.AddInitializer(graph.Int8Tensor(m.UniqueName(W+"_zp"), dims, make([]int8, len(clip))))
	attrs := []*onnx.AttributeProto{graph.AttrInt("axis", 0), graph.AttrInt("block_size", block)}
	q, iv, d := m.UniqueName(W+"_q"), m.UniqueName(W+"_clipped"), m.UniqueName(W+"_dq")
	qn := m.Op("QuantizeLinear", W+"/quantize", []string{W, scale, zp}, []string{q}, attrs...)
	lo := m.AddInitializer(graph.Int8Tensor(m.UniqueName(W+"_lo"), nil, []int8{int8(-(1 << (bits - 1)))}))
	hi := m.AddInitializer(graph.Int8Tensor(m.UniqueName(W+"_hi"), nil, []int8{int8(1<<(bits-1) - 1)}))
	m.Op("Clip", "", []string{q, lo, hi}, []string{iv})
	m.Op("DequantizeLinear", W+"/dequantize", []string{iv, scale, zp}, []string{d}, attrs...)
	m.ReplaceUses(W, d, qn)
}

// weightCase describes the weight of a one-product QAT model
// y = DQ(x) · B(W) (B reads W directly, through a Transpose, or as Gemm's
// transposed B).
type weightCase struct {
	name       string
	k, n       int64
	bits       int
	gran       string // tensor, channel (output axis), input (input axis), block
	block      int64
	read       string // matmul, transpose, gemm
	actBits    int
	opset      int64
	reduceAxes bool // add a ReduceMean with an axes attribute (opset < 18)
}

// productModel builds the QAT model of c.
func productModel(t *testing.T, c weightCase) (*graph.Model, map[string]*ort.Tensor) {
	t.Helper()
	r := rand.New(rand.NewPCG(3, uint64(c.k*c.n)))
	opset := c.opset
	if opset == 0 {
		opset = 21
	}
	m := graph.New("product", opset)
	if opset >= 21 {
		m.Proto.IrVersion = 10
	}
	m.AddInput("x", graph.Float, []int64{2, 3, c.k})
	stored := []int64{c.k, c.n}
	if c.read != "matmul" {
		stored = []int64{c.n, c.k}
	}
	m.AddInitializer(graph.FloatTensor("W", stored, randn(r, int(c.k*c.n), 0.5)))
	switch c.read {
	case "matmul":
		m.Op("MatMul", "mm", []string{"x", "W"}, []string{"y"})
	case "transpose":
		m.Op("Transpose", "wt", []string{"W"}, []string{"Wt"}, graph.AttrInts("perm", 1, 0))
		m.Op("MatMul", "mm", []string{"x", "Wt"}, []string{"y"})
	case "gemm":
		m.AddInitializer(graph.FloatTensor("bias", []int64{c.n}, randn(r, int(c.n), 1)))
		m.AddInitializer(graph.Int64Tensor("flat", []int64{2}, []int64{-1, c.k}))
		m.Op("Reshape", "flatten", []string{"x", "flat"}, []string{"x2"})
		m.Op("Gemm", "mm", []string{"x2", "W", "bias"}, []string{"y"}, graph.AttrInt("transB", 1), graph.AttrFloat("alpha", 0.5), graph.AttrFloat("beta", 2))
	}
	m.AddOutput("y", graph.Float, nil)
	if c.reduceAxes {
		m.Op("ReduceMean", "mean", []string{"x"}, []string{"xm"}, graph.AttrInts("axes", -1))
		m.AddOutput("xm", graph.Float, nil)
	}
	xin := "x"
	if c.read == "gemm" {
		xin = "x2"
	}
	actBits := c.actBits
	if actBits == 0 {
		actBits = 8
	}
	quantizer(m, xin, quantize.KindAct, actBits, []float32{2.5}, 1)
	outAxis := int64(1) // N in W's stored layout
	if c.read != "matmul" {
		outAxis = 0
	}
	switch c.gran {
	case "tensor":
		quantizer(m, "W", quantize.KindWeight, c.bits, []float32{1.2}, 1)
	case "channel", "input":
		axis := outAxis
		if c.gran == "input" {
			axis = 1 - outAxis
		}
		clip := make([]float32, stored[axis])
		for i := range clip {
			clip[i] = 0.8 + 0.05*float32(i%9)
		}
		quantizer(m, "W", quantize.KindWeight, c.bits, clip, axis)
	case "block":
		if c.read != "matmul" {
			t.Fatalf("%s: blocked test weights are stored [K, N]", c.name)
		}
		nb := (c.k + c.block - 1) / c.block
		clip := make([]float32, nb*c.n)
		for i := range clip {
			clip[i] = 0.6 + 0.1*float32(i%7)
		}
		blockedQuantizer(m, "W", c.bits, clip, nb, c.n, c.block)
	}
	m.SetMetadata(fold.RecordKey, `{"version":1}`)
	if err := m.TopoSort(); err != nil {
		t.Fatal(err)
	}
	return m, map[string]*ort.Tensor{"x": ort.Float32([]int64{2, 3, c.k}, randn(r, int(6*c.k), 1))}
}

var weightCases = []weightCase{
	{name: "tensor-4", k: 64, n: 24, bits: 4, gran: "tensor", read: "matmul"},
	{name: "channel-4", k: 64, n: 24, bits: 4, gran: "channel", read: "matmul"},
	{name: "channel-4-transposed", k: 48, n: 20, bits: 4, gran: "channel", read: "transpose"},
	{name: "channel-3-gemm", k: 40, n: 16, bits: 3, gran: "channel", read: "gemm"},
	{name: "block-16", k: 64, n: 24, bits: 4, gran: "block", block: 16, read: "matmul"},
	{name: "block-32", k: 96, n: 8, bits: 4, gran: "block", block: 32, read: "matmul"},
	{name: "block-32-odd", k: 32, n: 7, bits: 4, gran: "block", block: 32, read: "matmul"},
	{name: "tensor-2", k: 64, n: 8, bits: 2, gran: "tensor", read: "matmul"},
	{name: "channel-8", k: 64, n: 24, bits: 8, gran: "channel", read: "matmul"},
	{name: "channel-6-transposed", k: 48, n: 20, bits: 6, gran: "channel", read: "transpose"},
}

// TestInt4 folds each 4-bit weight into an INT4 initializer and checks the
// packing (two a byte, low nibble first, the integers Fold stores in int8)
// and that onnxruntime computes what the QAT model computes.
func TestInt4(t *testing.T) {
	for _, c := range weightCases {
		if c.bits > 4 {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			qat, in := productModel(t, c)
			ref := runAll(t, qat, in, &ort.Options{Optimization: ort.OptimizeBasic})
			m8 := clone(t, qat)
			res8, err := fold.Fold(m8)
			if err != nil {
				t.Fatal(err)
			}
			m := clone(t, qat)
			res, err := fold.Fold(m)
			if err != nil {
				t.Fatal(err)
			}
			ir, err := fold.Int4(m, res)
			if err != nil || ir.Unraised != nil || len(ir.Converted) != 1 || ir.Converted[0] != "W" {
				t.Fatalf("Int4: %+v, %v; want W converted", ir, err)
			}
			t4, t8 := m.Initializer(intOf(res, "W")), m8.Initializer(intOf(res8, "W"))
			if graph.TensorType(t4) != graph.Int4 {
				t.Fatalf("W stored as %s, want int4", graph.TensorType(t4))
			}
			if n := graph.NumElements(t4.Dims); len(t4.RawData) != int(n+1)/2 {
				t.Errorf("%d bytes for %d int4 values, want %d", len(t4.RawData), n, (n+1)/2)
			}
			for i, b := range t8.RawData {
				nib := t4.RawData[i/2] >> (4 * (i % 2)) & 0xF
				if want := byte(b) & 0xF; nib != want {
					t.Fatalf("value %d: nibble %#x, want %#x (int8 %d)", i, nib, want, int8(b))
				}
			}
			for _, d := range m.Consumers(t4.Name) {
				if len(d.Input) > 2 {
					t.Errorf("%s keeps a zero point %q beside int4 integers", d.Name, d.Input[2])
				}
			}
			got := runAll(t, m, in, nil)
			if d := maxDiff(ref["y"].Float32s(), got["y"].Float32s()); d > 1e-5 {
				t.Errorf("y differs from the QAT model by %g", d)
			}
		})
	}
}

// intOf returns the integer initializer Fold stored for weight w.
func intOf(r *fold.Result, w string) string {
	for _, f := range r.Quantizers {
		if f.Tensor == w {
			return f.Int
		}
	}
	return ""
}

// TestInt4Opset checks the opset rule: a model below 21 is raised unless a
// node changed meaning on the way (ReduceMean's axes at 18); then nothing
// changes and Unraised names the node.
func TestInt4Opset(t *testing.T) {
	for _, tc := range []struct {
		name  string
		c     weightCase
		opset int64 // after Int4
		want  string
	}{
		{"raised", weightCase{name: "17", k: 32, n: 8, bits: 4, gran: "channel", read: "matmul", opset: 17}, 21, ""},
		{"stuck", weightCase{name: "17-reduce", k: 32, n: 8, bits: 4, gran: "channel", read: "matmul", opset: 17, reduceAxes: true}, 17, "ReduceMean node mean changed meaning at opset 18"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			qat, in := productModel(t, tc.c)
			m := clone(t, qat)
			res, err := fold.Fold(m)
			if err != nil {
				t.Fatal(err)
			}
			ir, err := fold.Int4(m, res)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.Opset(""); got != tc.opset {
				t.Errorf("opset %d, want %d", got, tc.opset)
			}
			if tc.want == "" {
				if ir.Unraised != nil || len(ir.Converted) != 1 || m.Proto.IrVersion < 10 {
					t.Fatalf("got %+v (IR %d), want W converted at IR ≥ 10", ir, m.Proto.IrVersion)
				}
			} else {
				if ir.Unraised == nil || !strings.Contains(ir.Unraised.Error(), tc.want) || len(ir.Converted) != 0 {
					t.Fatalf("got %+v, want nothing converted and a reason containing %q", ir, tc.want)
				}
				for _, f := range res.Quantizers {
					if f.Int != "" && graph.TensorType(m.Initializer(f.Int)) != graph.Int8 {
						t.Errorf("%s stored as %s, want int8", f.Tensor, graph.TensorType(m.Initializer(f.Int)))
					}
				}
			}
			ref := runAll(t, qat, in, &ort.Options{Optimization: ort.OptimizeBasic})
			got := runAll(t, m, in, nil)
			if d := maxDiff(ref["y"].Float32s(), got["y"].Float32s()); d > 1e-5 {
				t.Errorf("y differs from the QAT model by %g", d)
			}
		})
	}
}

// TestMatMulNBits rewrites each weight product into MatMulNBits. With
// accuracy level 0 (fp32 compute) and the activation quantizer kept, the
// result must be the QAT model's to float rounding: the packed integers,
// zero point and scales dequantize to exactly its weights. At accuracy
// level 4 (int8 activations per block) it stays within a fraction of the
// output's scale.
func TestMatMulNBits(t *testing.T) {
	for _, c := range weightCases {
		t.Run(c.name, func(t *testing.T) {
			qat, in := productModel(t, c)
			ref := runAll(t, qat, in, &ort.Options{Optimization: ort.OptimizeBasic})
			var amax float64
			for _, v := range ref["y"].Float32s() {
				amax = max(amax, float64(v), -float64(v))
			}
			for _, o := range []fold.NBitsOptions{{}, {AccuracyLevel: 4, ChannelBlock: 16}, {DropActQuant: true}} {
				m := clone(t, qat)
				res, err := fold.Fold(m)
				if err != nil {
					t.Fatal(err)
				}
				nr, err := fold.MatMulNBits(m, res, o)
				if err != nil {
					t.Fatal(err)
				}
				if len(nr.Converted) != 1 || len(nr.Kept) != 0 {
					t.Fatalf("converted %v, kept %v; want W converted", nr.Converted, nr.Kept)
				}
				ops := map[string]int{}
				for _, n := range m.Graph().Node {
					ops[n.OpType]++
					if n.OpType == "MatMulNBits" {
						wantBits := map[int]int64{2: 2, 3: 4, 4: 4, 6: 8, 8: 8}[c.bits]
						if b := graph.IntAttr(n, "bits", 0); b != wantBits {
							t.Errorf("bits %d, want %d", b, wantBits)
						}
						if c.block > 0 && graph.IntAttr(n, "block_size", 0) != c.block {
							t.Errorf("block_size %d, want %d", graph.IntAttr(n, "block_size", 0), c.block)
						}
					}
				}
				if ops["MatMulNBits"] != 1 || ops["MatMul"]+ops["Gemm"] != 0 {
					t.Errorf("ops %v, want one MatMulNBits and no MatMul/Gemm", ops)
				}
				if o.DropActQuant && ops["QuantizeLinear"] != 0 {
					t.Errorf("%d QuantizeLinear left, want the activation quantizer dropped", ops["QuantizeLinear"])
				}
				got := runAll(t, m, in, nil)
				d := maxDiff(ref["y"].Float32s(), got["y"].Float32s())
				tol := 1e-5 * max(amax, 1)
				switch {
				case o.DropActQuant:
					// x is no longer held to its clip (2.5, below its
					// largest values): only the op structure is checked.
					continue
				case o.AccuracyLevel == 4:
					tol = 0.05 * amax
				}
				t.Logf("accuracy level %d: max abs diff %.3g (|y| ≤ %.3g)", o.AccuracyLevel, d, amax)
				if d > tol {
					t.Errorf("accuracy level %d: y differs from the QAT model by %g (> %g)", o.AccuracyLevel, d, tol)
				}
			}
		})
	}
}

// TestMatMulNBitsRefuses checks the weights and activations MatMulNBits
// cannot carry: some fail with the fix named, some stay in the qdq form.
func TestMatMulNBitsRefuses(t *testing.T) {
	for _, tc := range []struct {
		c    weightCase
		o    fold.NBitsOptions
		want string // error; "" when the weight is kept
		kept string
	}{
		{weightCase{name: "block not dividing K", k: 40, n: 8, bits: 4, gran: "block", block: 16, read: "matmul"}, fold.NBitsOptions{}, "block size 16 does not divide its input dimension 40", ""},
		{weightCase{name: "block of 8", k: 64, n: 8, bits: 4, gran: "block", block: 8, read: "matmul"}, fold.NBitsOptions{}, "MatMulNBits takes blocks of 16, 32, 64, 128 or 256: re-insert with --block-size", ""},
		{weightCase{name: "4-bit activations", k: 64, n: 8, bits: 4, gran: "channel", read: "matmul", actBits: 4}, fold.NBitsOptions{}, "matmulnbits carries 8-bit activations only (MatMulNBits computes with int8 activations): re-insert with --act-bits 8", ""},
		{weightCase{name: "channel block", k: 64, n: 8, bits: 4, gran: "channel", read: "matmul"}, fold.NBitsOptions{ChannelBlock: 48}, "MatMulNBits block size 48: use 16, 32, 64, 128 or 256", ""},
		{weightCase{name: "input channels", k: 64, n: 8, bits: 4, gran: "input", read: "matmul"}, fold.NBitsOptions{}, "", "W (quantized per input channel; MatMulNBits scales output channels and blocks of the input axis)"},
	} {
		t.Run(tc.c.name, func(t *testing.T) {
			qat, _ := productModel(t, tc.c)
			m := clone(t, qat)
			res, err := fold.Fold(m)
			if err != nil {
				t.Fatal(err)
			}
			nr, err := fold.MatMulNBits(m, res, tc.o)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
					t.Fatalf("got %v, want one line containing %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(nr.Converted) != 0 || len(nr.Kept) != 1 || nr.Kept[0] != tc.kept {
				t.Fatalf("converted %v, kept %q; want kept %q", nr.Converted, nr.Kept, tc.kept)
			}
		})
	}
}

// TestMatMulNBitsLookups checks that lookups of tables whose
// DequantizeLinear stays before the Gather (one scale per row, or blocks
// along the other axis) gather the integers and scales instead of
// dequantizing the table, with the QAT model's values.
func TestMatMulNBitsLookups(t *testing.T) {
	for _, tc := range []struct {
		name string
		dims []int64 // the table's
		axis int64   // gather axis
		add  func(m *graph.Model)
	}{
		{"rows", []int64{10, 32}, 0, func(m *graph.Model) {
			clip := make([]float32, 10)
			for i := range clip {
				clip[i] = 0.5 + 0.1*float32(i)
			}
			quantizer(m, "E", quantize.KindWeight, 4, clip, 0)
		}},
		{"blocks", []int64{32, 10}, 1, func(m *graph.Model) {
			clip := make([]float32, 2*10)
			for i := range clip {
				clip[i] = 0.5 + 0.1*float32(i%6)
			}
			blockedQuantizer(m, "E", 4, clip, 2, 10, 16)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := weightCase{name: tc.name, k: 32, n: 8, bits: 4, gran: "channel", read: "matmul"}
			qat, in := productModel(t, c)
			r := rand.New(rand.NewPCG(5, 6))
			qat.AddInitializer(graph.FloatTensor("E", tc.dims, randn(r, 320, 1)))
			qat.AddInput("ids", graph.Int64, []int64{2, 3})
			qat.Op("Gather", "lookup", []string{"E", "ids"}, []string{"emb"}, graph.AttrInt("axis", tc.axis))
			qat.AddOutput("emb", graph.Float, nil)
			tc.add(qat)
			if err := qat.TopoSort(); err != nil {
				t.Fatal(err)
			}
			in["ids"] = ort.Int64([]int64{2, 3}, []int64{9, 0, 3, 3, 7, 1})
			ref := runAll(t, qat, in, &ort.Options{Optimization: ort.OptimizeBasic})
			m := clone(t, qat)
			res, err := fold.Fold(m)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := fold.MatMulNBits(m, res, fold.NBitsOptions{}); err != nil {
				t.Fatal(err)
			}
			table := intOf(res, "E")
			for _, n := range m.Consumers(table) {
				if n.OpType != "Gather" {
					t.Errorf("%s (%s) reads the whole table %q", n.Name, n.OpType, table)
				}
			}
			got := runAll(t, m, in, nil)
			for _, o := range []string{"y", "emb"} {
				if d := maxDiff(ref[o].Float32s(), got[o].Float32s()); d > 1e-6 {
					t.Errorf("%s differs from the QAT model by %g", o, d)
				}
			}
		})
	}
}

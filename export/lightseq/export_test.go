package lightseq_test

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qatc/qatc/export/lightseq"
	"github.com/qatc/qatc/export/lightseq/lspb"
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/passes/transformer"
	"github.com/qatc/qatc/testmodels"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
)

// batchOf returns a feed of a testmodel batch.
func batchOf(cfg testmodels.Config, n, srcLen, tgtLen int, seed int64) map[string]*ort.Tensor {
	src, tgt := testmodels.RandomBatch(cfg, n, srcLen, tgtLen, seed)
	return map[string]*ort.Tensor{
		testmodels.SrcInput: ort.Int64([]int64{int64(n), int64(srcLen)}, src),
		testmodels.TgtInput: ort.Int64([]int64{int64(n), int64(tgtLen)}, tgt),
	}
}

// qat inserts 8-bit per-tensor quantizers with weight clips at max|w| and
// sets every activation clip to the largest |x| the model computes on
// batch, as insert with min/max calibration does.
func qat(t testing.TB, m *graph.Model, batch map[string]*ort.Tensor, p quantize.Params) *graph.Model {
	t.Helper()
	rec, err := quantize.Insert(m, p)
	if err != nil {
		t.Fatal(err)
	}
	setMaxClips(t, m, rec, runActs(t, m, rec.Quantizers, batch))
	return m
}

// runActs runs m on batch and returns the tensors of qs's activation
// quantizers (act and relu kinds).
func runActs(t testing.TB, m *graph.Model, qs []quantize.Quantizer, batch map[string]*ort.Tensor) map[string]*ort.Tensor {
	t.Helper()
	var acts []string
	for _, q := range qs {
		if q.Kind == quantize.KindAct || q.Kind == quantize.KindReLU {
			acts = append(acts, q.Tensor)
		}
	}
	s, err := ort.Open(m, &ort.Options{Outputs: acts})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.Run(batch, acts...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// setMaxClips sets each activation quantizer's clip to the largest |x| of
// its tensor in out.
func setMaxClips(t testing.TB, m *graph.Model, rec *quantize.Record, out map[string]*ort.Tensor) {
	t.Helper()
	for _, q := range rec.Quantizers {
		if v, ok := out[q.Tensor]; ok {
			var mx float32
			for _, x := range v.Float32s() {
				mx = max(mx, float32(math.Abs(float64(x))))
			}
			if err := graph.SetFloats(m.Initializer(q.Clip), []float32{mx}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func maxParams() quantize.Params {
	p := quantize.DefaultParams()
	p.WeightInit = quantize.InitMax
	return p
}

func tinyQAT(t testing.TB, cfg testmodels.Config) (*graph.Model, map[string]*ort.Tensor) {
	m, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b := batchOf(cfg, 8, 12, 10, 7)
	return qat(t, m, b, maxParams()), b
}

// parseWithDescriptor decodes data with the message descriptor alone
// (dynamicpb), as any reader of the .proto would, and returns how many
// fields the top message holds.
func parseWithDescriptor(t *testing.T, data []byte) protoreflect.Message {
	t.Helper()
	desc := (&lspb.QuantTransformer{}).ProtoReflect().Descriptor()
	msg := dynamicpb.NewMessage(desc)
	if err := proto.Unmarshal(data, msg); err != nil {
		t.Fatalf("descriptor parse: %v", err)
	}
	return msg
}

// fakeQuant returns w as the QAT graph computes it: round-half-even of
// w/s clamped to [−128, 127], times s = clip/127.
func fakeQuant(w, clip float32) float32 {
	s := float64(clip) / 127
	return float32(math.Max(-128, math.Min(127, math.RoundToEven(float64(w)/s))) * s)
}

// checkWeights compares every kernel in the file with the QAT model's
// fake-quantized weights: within one quantization step of the file clip.
func checkWeights(t *testing.T, m *graph.Model, tm *transformer.Model, qt *lspb.QuantTransformer) int {
	t.Helper()
	clips := map[string]float32{}
	qs, err := quantize.Find(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		if q.Kind == quantize.KindWeight {
			v, _ := graph.Floats(m.Initializer(q.Clip))
			clips[q.Tensor] = v[0]
		}
	}
	checked := 0
	cmp := func(what string, b []byte, c float32, ps ...transformer.Projection) {
		got := lightseq.Decode(b, c)
		width := 0
		for _, p := range ps {
			width += p.Out.Len()
		}
		col := 0
		for _, p := range ps {
			w, _ := graph.Floats(m.Initializer(p.Weight))
			d := m.Initializer(p.Weight).Dims
			wc := clips[p.Weight]
			in := int(d[0])
			if p.Transposed {
				in = int(d[1])
			}
			for i := range in {
				for j := range p.Out.Len() {
					var x float32
					if p.Transposed {
						x = w[(p.Out.Lo+j)*int(d[1])+i]
					} else {
						x = w[i*int(d[1])+p.Out.Lo+j]
					}
					want := fakeQuant(x, wc)
					if diff := math.Abs(float64(got[i*width+col+j] - want)); diff > float64(c)/127*1.0001 {
						t.Fatalf("%s [%d,%d]: file %g, fake-quantized %g: more than one step (%g) apart", what, i, col+j, got[i*width+col+j], want, c/127)
					}
					checked++
				}
			}
			col += p.Out.Len()
		}
	}
	for i, l := range tm.Encoder {
		e := qt.EncoderStack[i]
		a := l.SelfAttn
		cmp("encoder qkv", e.MultiheadProjectKernelQkv, e.MultiheadProjectKernelQkvClipMax, a.Q, a.K, a.V)
		cmp("encoder out", e.MultiheadProjectKernelOutput, e.MultiheadProjectKernelOutputClipMax, a.Out)
		cmp("encoder ffn1", e.FfnFirstKernel, e.FfnFirstKernelClipMax, l.FFN.Dense1)
		cmp("encoder ffn2", e.FfnSecondKernel, e.FfnSecondKernelClipMax, l.FFN.Dense2)
	}
	var kvs []transformer.Projection
	for i, l := range tm.Decoder {
		d := qt.DecoderStack[i]
		cmp("decoder qkv", d.SelfProjectKernelQkv, d.SelfProjectKernelQkvClipMax, l.SelfAttn.Q, l.SelfAttn.K, l.SelfAttn.V)
		cmp("decoder encdec q", d.EncdecProjectKernelQ, d.EncdecProjectKernelQClipMax, l.CrossAttn.Q)
		cmp("decoder self out", d.SelfProjectKernelOutput, d.SelfProjectKernelOutputClipMax, l.SelfAttn.Out)
		cmp("decoder encdec out", d.EncdecProjectKernelOutput, d.EncdecProjectKernelOutputClipMax, l.CrossAttn.Out)
		cmp("decoder ffn1", d.FfnFirstKernel, d.FfnFirstKernelClipMax, l.FFN.Dense1)
		cmp("decoder ffn2", d.FfnSecondKernel, d.FfnSecondKernelClipMax, l.FFN.Dense2)
		kvs = append(kvs, l.CrossAttn.K, l.CrossAttn.V)
	}
	trg := qt.TrgEmbedding
	cmp("encoder-decoder kv [H, L, 2, H]", trg.EncodeOutputProjectKernelKv, trg.EncodeOutputProjectKernelKvClipMax[0], kvs...)
	// The target table is stored [H, V]: the logits projection's view.
	cmp("target table [H, V]", trg.TokenEmbedding, trg.EmbClipMax, tm.Logits)
	cmp("source table [V, H]", qt.SrcEmbedding.TokenEmbedding, qt.SrcEmbedding.EmbClipMax, transformer.Projection{Weight: tm.Src.Table, Out: transformer.Range{Lo: 0, Hi: tm.Hidden}})
	return checked
}

// exportAndCheck exports m, writes and reads the file back, parses it with
// the descriptor and checks sizes and weights.
func exportAndCheck(t *testing.T, m *graph.Model, opts lightseq.Options) (*lspb.QuantTransformer, *lightseq.Report) {
	t.Helper()
	qt, rep, err := lightseq.Export(m, opts)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "model.pb")
	if err := lightseq.Write(path, qt); err != nil {
		t.Fatal(err)
	}
	back, err := lightseq.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(back, qt) {
		t.Fatal("the file read back differs from what was written")
	}
	data, _ := os.ReadFile(path)
	msg := parseWithDescriptor(t, data)
	fields := 0
	msg.Range(func(protoreflect.FieldDescriptor, protoreflect.Value) bool { fields++; return true })
	if fields != 5 {
		t.Fatalf("descriptor parse found %d top-level fields, want 5", fields)
	}
	s, err := lightseq.Infer(back)
	if err != nil {
		t.Fatal(err)
	}
	tm := rep.Model
	if s.Hidden != tm.Hidden || s.Heads != tm.Heads || s.FFN != tm.FFN || s.Vocab != tm.Vocab ||
		s.EncoderLayers != len(tm.Encoder) || s.DecoderLayers != len(tm.Decoder) {
		t.Fatalf("loader infers %+v from the file; the model is H=%d heads=%d FFN=%d V=%d %d+%d layers", s, tm.Hidden, tm.Heads, tm.FFN, tm.Vocab, len(tm.Encoder), len(tm.Decoder))
	}
	n := checkWeights(t, m, tm, back)
	t.Logf("%d weights within one step; loader sizes %+v; %d clip fields (%d fallback)", n, s, len(rep.Clips), rep.Fallbacks())
	return back, rep
}

func TestExportTestmodel(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*testmodels.Config)
	}{
		{"tiny", func(*testmodels.Config) {}},
		{"fused-postnorm-gelu-opset14", func(c *testmodels.Config) { c.FusedQKV, c.PreNorm, c.Activation, c.Opset = true, false, "gelu", 14 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testmodels.Tiny()
			tc.edit(&cfg)
			m, b := tinyQAT(t, cfg)
			qt, rep := exportAndCheck(t, m, lightseq.Options{PadID: 0, BosID: testmodels.BOS, EosID: testmodels.EOS, Calib: b})
			c := qt.ModelConf
			if c.HeadNum != int32(cfg.Heads) || c.IsPostLn == cfg.PreNorm || c.UseGelu != (cfg.Activation == "gelu") || c.TrgStartId != testmodels.BOS || c.TrgEndId != testmodels.EOS || c.BeamSize != 4 {
				t.Fatalf("model_conf %v does not describe %+v", c, cfg)
			}
			if rep.Fallbacks() != 0 {
				t.Fatalf("%d clips fell back with a calibration batch given: %+v", rep.Fallbacks(), rep.Clips)
			}
			// Positions are the stored table; token tables unscaled.
			pe, _ := graph.Floats(m.Initializer(testmodels.PositionTable))
			for i, v := range qt.SrcEmbedding.PositionEmbedding {
				if v != pe[i] {
					t.Fatalf("position %d: %g, table %g", i, v, pe[i])
				}
			}
		})
	}
}

func TestExportTorch(t *testing.T) {
	src, err := ort.ReadNpy(fixture.Torch(t, fixture.TransformerSrc))
	if err != nil {
		t.Fatal(err)
	}
	tgt, err := ort.ReadNpy(fixture.Torch(t, fixture.TransformerTgt))
	if err != nil {
		t.Fatal(err)
	}
	b := map[string]*ort.Tensor{"src_ids": src, "tgt_ids": tgt}
	for _, f := range []string{fixture.Transformer14, fixture.Transformer17} {
		t.Run(f, func(t *testing.T) {
			m, err := graph.Load(fixture.Torch(t, f))
			if err != nil {
				t.Fatal(err)
			}
			m = qat(t, m, b, maxParams())
			qt, rep := exportAndCheck(t, m, lightseq.Options{BosID: 2, EosID: 3, Calib: b})
			if !rep.Model.Tied || rep.Model.Logits.Weight == rep.Model.Tgt.Table {
				t.Fatalf("PyTorch's output projection is a transposed copy of the table: tied %v, weight %s", rep.Model.Tied, rep.Model.Logits.Weight)
			}
			if len(qt.TrgEmbedding.SharedBias) != 512 || qt.TrgEmbedding.SharedBias[0] != 0 {
				t.Fatalf("PyTorch's projection has no bias: shared_bias must be 512 zeros")
			}
			if qt.ModelConf.HeadNum != 4 || len(qt.TrgEmbedding.PositionEmbedding) != 64*64 {
				t.Fatalf("heads %d, positions %d values", qt.ModelConf.HeadNum, len(qt.TrgEmbedding.PositionEmbedding))
			}
		})
	}
}

// onnxGreedy decodes src greedily with the QAT ONNX model: feed src and
// the growing target, take the argmax of the last position.
func onnxGreedy(t *testing.T, s *ort.Session, src []int64, maxLen int) []int64 {
	tgt := []int64{testmodels.BOS}
	for len(tgt) <= maxLen {
		out, err := s.Run(map[string]*ort.Tensor{
			testmodels.SrcInput: ort.Int64([]int64{1, int64(len(src))}, src),
			testmodels.TgtInput: ort.Int64([]int64{1, int64(len(tgt))}, tgt),
		}, testmodels.LogitsOutput)
		if err != nil {
			t.Fatal(err)
		}
		l := out[testmodels.LogitsOutput].Float32s()
		v := len(l) / len(tgt)
		last := l[(len(tgt)-1)*v:]
		best := 0
		for j, x := range last {
			if x > last[best] {
				best = j
			}
		}
		tgt = append(tgt, int64(best))
		if best == testmodels.EOS {
			break
		}
	}
	return tgt[1:]
}

func TestReferenceAgreesWithONNX(t *testing.T) {
	cfg := testmodels.Tiny()
	fp32, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// With the random tied table at full scale, the logits of the token
	// just read dominate and greedy decoding repeats one token; a table a
	// tenth as large lets the layers decide more of the output.
	tbl := fp32.Initializer("shared_embedding")
	w, _ := graph.Floats(tbl)
	for i := range w {
		w[i] *= 0.1
	}
	if err := graph.SetFloats(tbl, w); err != nil {
		t.Fatal(err)
	}
	b := batchOf(cfg, 8, 12, 10, 7)
	m := qat(t, fp32, b, maxParams())
	qt, _, err := lightseq.Export(m, lightseq.Options{BosID: testmodels.BOS, EosID: testmodels.EOS, Calib: b})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := lightseq.NewReference(qt)
	if err != nil {
		t.Fatal(err)
	}
	ref.Epsilon = testmodels.LayerNormEpsilon
	s, err := ort.Open(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const sentences, srcLen, maxLen = 24, 10, 16
	srcs, _ := testmodels.RandomBatch(cfg, sentences, srcLen, 2, 99)
	same, total := 0, 0
	var seen []int64
	for i := range sentences {
		src := srcs[i*srcLen : (i+1)*srcLen]
		want := onnxGreedy(t, s, src, maxLen)
		seen = append(seen, want...)
		got, err := ref.Greedy(src, maxLen)
		if err != nil {
			t.Fatal(err)
		}
		for j := range want {
			if j < len(got) && got[j] == want[j] {
				same++
			}
		}
		total += max(len(want), len(got))
	}
	agree := float64(same) / float64(total)
	distinct := map[int64]bool{}
	for _, v := range seen {
		distinct[v] = true
	}
	t.Logf("%d distinct tokens in the ONNX outputs", len(distinct))
	t.Logf("reference decoder vs QAT ONNX greedy: %d of %d tokens agree (%.1f%%)", same, total, 100*agree)
	if len(distinct) < 3 {
		t.Fatalf("the ONNX outputs hold %d distinct tokens: the comparison would show nothing", len(distinct))
	}
	if agree < 0.98 {
		t.Fatalf("agreement %.1f%% is below 98%%", 100*agree)
	}
}

func TestRefusals(t *testing.T) {
	cfg := testmodels.Tiny()
	perChannel := func() *graph.Model {
		m, _ := testmodels.Build(cfg)
		p := maxParams()
		p.PerChannel, p.Granularity = true, quantize.Channel
		if _, err := quantize.Insert(m, p); err != nil {
			t.Fatal(err)
		}
		return m
	}
	fourBit := func() *graph.Model {
		m, _ := testmodels.Build(cfg)
		p := maxParams()
		p.WeightBits = 4
		if _, err := quantize.Insert(m, p); err != nil {
			t.Fatal(err)
		}
		return m
	}
	noCross := func() *graph.Model { return withoutCross(t, cfg, false) }
	decoderOnly := func() *graph.Model { return withoutCross(t, cfg, true) }
	untied := func() *graph.Model {
		c := cfg
		c.SharedEmbeddings = false
		m, _ := testmodels.Build(c)
		if _, err := quantize.Insert(m, maxParams()); err != nil {
			t.Fatal(err)
		}
		return m
	}
	for _, tc := range []struct {
		name string
		m    func() *graph.Model
		want string
	}{
		{"per-channel", perChannel, "per channel"},
		{"4-bit", fourBit, "4 bits"},
		{"missing cross-attention", noCross, "no decoder found"},
		{"decoder-only", decoderOnly, "decoder-only"},
		{"untied output projection", untied, "not the target token table"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := lightseq.Export(tc.m(), lightseq.Options{BosID: 2, EosID: 3})
			if err == nil {
				t.Fatal("exported a model LightSeq cannot represent")
			}
			if !errors.Is(err, lightseq.ErrUnsupported) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not wrap ErrUnsupported with %q", err, tc.want)
			}
			t.Log(err)
		})
	}
}

// withoutCross returns the tiny QAT model with every cross-attention made
// to attend over the decoder's own stream (so no decoder layer has
// cross-attention); with dropEncoder, the then unused encoder and source
// input are removed too, leaving a decoder-only model.
func withoutCross(t *testing.T, cfg testmodels.Config, dropEncoder bool) *graph.Model {
	m, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i := range cfg.DecoderLayers {
		s := "decoder/layer_" + string(rune('0'+i)) + "/encdec_attention/"
		for _, p := range []string{"k", "v"} {
			n := m.Producer(s + p + "/MatMul")
			m.ReplaceInput(n, 0, s+"ln/output")
		}
		// The source padding bias no longer matches the keys.
		n := m.Producer(s + "logits_masked")
		m.ReplaceInput(n, 1, "decoder/causal/bias")
	}
	if dropEncoder {
		for {
			var dead []*onnx.NodeProto
			for _, n := range m.Graph().Node {
				used := false
				for _, o := range n.Output {
					if len(m.Consumers(o)) > 0 || m.IsGraphOutput(o) {
						used = true
					}
				}
				if !used {
					dead = append(dead, n)
				}
			}
			if len(dead) == 0 {
				break
			}
			m.RemoveNodes(dead...)
		}
		g := m.Graph()
		for i, in := range g.Input {
			if in.Name == testmodels.SrcInput {
				g.Input = append(g.Input[:i], g.Input[i+1:]...)
				break
			}
		}
		m.Reindex()
	}
	if _, err := quantize.Insert(m, maxParams()); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestVerify holds correct files and broken ones to Verify's bounds on a
// check batch other than the calibration batch: the correct files pass
// with the figures measured when the bounds were chosen, and each break
// fails on the bound it exceeds.
func TestVerify(t *testing.T) {
	fused := func(c *testmodels.Config) { c.FusedQKV, c.PreNorm, c.Activation, c.Opset = true, false, "gelu", 14 }
	// swapQK swaps Q and K in encoder layer 1's fused kernel.
	swapQK := func(qt *lspb.QuantTransformer, h int) {
		k := qt.EncoderStack[1].MultiheadProjectKernelQkv
		for i := range h {
			row := k[i*3*h : (i+1)*3*h]
			for j := range h {
				row[j], row[h+j] = row[h+j], row[j]
			}
		}
	}
	// transposeFFN2 transposes encoder layer 0's square part of dense2.
	transposeFFN2 := func(qt *lspb.QuantTransformer, h int) {
		k := qt.EncoderStack[0].FfnSecondKernel
		for i := range h {
			for j := i + 1; j < h; j++ {
				k[i*h+j], k[j*h+i] = k[j*h+i], k[i*h+j]
			}
		}
	}
	doubleClip := func(qt *lspb.QuantTransformer, _ int) { qt.DecoderStack[0].FfnFirstKernelClipMax *= 2 }
	for _, tc := range []struct {
		name      string
		edit      func(*testmodels.Config)
		brk       func(*lspb.QuantTransformer, int)
		top1, rms float64 // expected, ±0.005 and ±0.003
		fail      string  // expected error text
	}{
		{"tiny", func(*testmodels.Config) {}, nil, 0.9866, 0.0291, ""},
		{"fused-postnorm-gelu", fused, nil, 0.9597, 0.0311, ""},
		{"tiny-ffn-transposed", func(*testmodels.Config) {}, transposeFFN2, 0.8456, 0.2346, "more than the 15%"},
		{"tiny-clip-doubled", func(*testmodels.Config) {}, doubleClip, 0.8389, 0.2120, "more than the 15%"},
		{"fused-qk-swapped", fused, swapQK, 0.8926, 0.1339, "below the 90%"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testmodels.Tiny()
			tc.edit(&cfg)
			m, b := tinyQAT(t, cfg)
			qt, rep, err := lightseq.Export(m, lightseq.Options{BosID: testmodels.BOS, EosID: testmodels.EOS, Calib: b})
			if err != nil {
				t.Fatal(err)
			}
			if tc.brk != nil {
				tc.brk(qt, cfg.Hidden)
			}
			r, err := lightseq.Verify(m, rep.Model, qt, batchOf(cfg, 16, 12, 12, 99))
			t.Log(r)
			if r.Positions != 149 || math.Abs(r.Top1-tc.top1) > 0.005 || math.Abs(r.RMSErr-tc.rms) > 0.003 {
				t.Errorf("%d positions, top-1 %.4f, RMS error %.4f; want 149, %.4f, %.4f", r.Positions, r.Top1, r.RMSErr, tc.top1, tc.rms)
			}
			switch {
			case tc.fail == "" && err != nil:
				t.Errorf("a correct file fails: %v", err)
			case tc.fail != "" && (err == nil || !strings.Contains(err.Error(), tc.fail)):
				t.Errorf("error %v, want one saying %q", err, tc.fail)
			}
		})
	}
}

// TestVerifyNoPositions: a check batch of padding alone, or without the
// model's inputs, is an error, not a division by zero.
func TestVerifyNoPositions(t *testing.T) {
	cfg := testmodels.Tiny()
	m, b := tinyQAT(t, cfg)
	qt, rep, err := lightseq.Export(m, lightseq.Options{BosID: testmodels.BOS, EosID: testmodels.EOS, Calib: b})
	if err != nil {
		t.Fatal(err)
	}
	pads := make([]int64, 3*5)
	for i := range pads {
		pads[i] = cfg.PadID
	}
	for name, batch := range map[string]map[string]*ort.Tensor{
		"all padding": {
			testmodels.SrcInput: ort.Int64([]int64{3, 5}, pads),
			testmodels.TgtInput: ort.Int64([]int64{3, 5}, pads),
		},
		"no rows": {
			testmodels.SrcInput: ort.Int64([]int64{0, 5}, nil),
			testmodels.TgtInput: ort.Int64([]int64{0, 5}, nil),
		},
		"no target": {testmodels.SrcInput: ort.Int64([]int64{3, 5}, pads)},
	} {
		r, err := lightseq.Verify(m, rep.Model, qt, batch)
		if err == nil || strings.Contains(err.Error(), "\n") || math.IsNaN(r.Top1) || r.Positions != 0 {
			t.Errorf("%s: error %v, report %+v; want one line and no positions", name, err, r)
		}
	}
}

// TestComputedPositions makes the positions a computed value (twice the
// table, summed in the graph): the exporter evaluates it with onnxruntime.
func TestComputedPositions(t *testing.T) {
	cfg := testmodels.Tiny()
	m, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.Op("Add", "positions/doubled", []string{testmodels.PositionTable, testmodels.PositionTable}, []string{"positions/doubled"})
	for _, n := range []string{"encoder/positions", "decoder/positions"} {
		m.ReplaceInput(m.Producer(n), 0, "positions/doubled")
	}
	if err := m.TopoSort(); err != nil {
		t.Fatal(err)
	}
	m = qat(t, m, batchOf(cfg, 4, 8, 8, 3), maxParams())
	qt, rep, err := lightseq.Export(m, lightseq.Options{BosID: 2, EosID: 3, MaxStep: cfg.MaxLen})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Model.Src.Positions != "encoder/positions" || rep.Model.Src.PositionTable != "" {
		t.Fatalf("positions recognised as %q / table %q", rep.Model.Src.Positions, rep.Model.Src.PositionTable)
	}
	pe, _ := graph.Floats(m.Initializer(testmodels.PositionTable))
	for _, got := range [][]float32{qt.SrcEmbedding.PositionEmbedding, qt.TrgEmbedding.PositionEmbedding} {
		if len(got) != len(pe) {
			t.Fatalf("%d position values, want %d", len(got), len(pe))
		}
		for i := range pe {
			if got[i] != 2*pe[i] {
				t.Fatalf("position value %d: %g, want %g", i, got[i], 2*pe[i])
			}
		}
	}
	// Without a calibration batch the dense-output clips fall back, and
	// the report says so.
	if rep.Fallbacks() == 0 || !strings.Contains(rep.Format(), "fallback: Params.ActClipMax") {
		t.Fatalf("no fallback reported:\n%s", rep.Format())
	}
	// More steps than the graph accepts is an error naming the option.
	_, _, err = lightseq.Export(m, lightseq.Options{BosID: 2, EosID: 3, MaxStep: 2 * cfg.MaxLen})
	if err == nil || !strings.Contains(err.Error(), "over 128 steps (Options.MaxStep)") {
		t.Fatalf("got %v, want an error naming MaxStep", err)
	}
}

// TestCheck shows the loader's rules rejecting broken messages.
func TestCheck(t *testing.T) {
	cfg := testmodels.Tiny()
	m, b := tinyQAT(t, cfg)
	for _, tc := range []struct {
		name string
		edit func(*lspb.QuantTransformer)
		want string
	}{
		{"odd head size", func(q *lspb.QuantTransformer) { q.ModelConf.HeadNum = 32 }, "head size 1 (hidden 32 / 32 heads) is odd"},
		{"heads not dividing", func(q *lspb.QuantTransformer) { q.ModelConf.HeadNum = 5 }, "does not divide"},
		{"hidden not multiple of 4", func(q *lspb.QuantTransformer) {
			q.TrgEmbedding.NormScale = q.TrgEmbedding.NormScale[:30]
		}, "not a multiple of 4"},
		{"short field", func(q *lspb.QuantTransformer) {
			q.DecoderStack[1].EncdecProjectBiasQ = q.DecoderStack[1].EncdecProjectBiasQ[:31]
		}, "decoder_stack[1].encdec_project_bias_q has 31 values; the loader expects 32"},
		{"kv clips", func(q *lspb.QuantTransformer) {
			q.TrgEmbedding.EncodeOutputProjectKernelKvClipMax = q.TrgEmbedding.EncodeOutputProjectKernelKvClipMax[:1]
		}, "encode_output_project_kernel_kv_clip_max has 1 values; the loader expects 2"},
		{"byte out of range", func(q *lspb.QuantTransformer) { q.EncoderStack[0].FfnFirstKernel[5] = 255 }, "outside the offset-127 range"},
		{"zero clip", func(q *lspb.QuantTransformer) { q.DecoderStack[0].SelfQkvBiasOutClipMax = 0 }, "self_qkv_bias_out_clip_max is 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			qt, _, err := lightseq.Export(m, lightseq.Options{BosID: 2, EosID: 3, Calib: b})
			if err != nil {
				t.Fatal(err)
			}
			tc.edit(qt)
			err = lightseq.Write(filepath.Join(t.TempDir(), "x.pb"), qt)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
	if err := lightseq.Write(filepath.Join(t.TempDir(), "x.bin"), &lspb.QuantTransformer{}); err == nil || !strings.Contains(err.Error(), "must end in .pb") {
		t.Fatalf("got %v", err)
	}
}

// TestReferenceCache checks the reference decoder's cached batch state
// against its teacher-forced logits: rows of different sources stepped
// together, and rows copied by Reorder (beams of one parent) that then
// take different tokens, each keep exactly the logits of their own
// history.
func TestReferenceCache(t *testing.T) {
	cfg := testmodels.Tiny()
	m, b := tinyQAT(t, cfg)
	qt, _, err := lightseq.Export(m, lightseq.Options{BosID: testmodels.BOS, EosID: testmodels.EOS, Calib: b})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := lightseq.NewReference(qt)
	if err != nil {
		t.Fatal(err)
	}
	srcs := [][]int64{{5, 6, 7, 3}, {9, 10, 3}, {11, 12, 13, 14, 15, 3}}
	st, err := ref.Start(srcs)
	if err != nil {
		t.Fatal(err)
	}
	// Three steps for all rows, then row 1 twice (parents 1, 1, 0, 2)
	// with different tokens.
	hist := [][]int64{{2, 20, 21}, {2, 22, 23}, {2, 24, 25}}
	for j := range 3 {
		if _, _, err := st.Step([]int64{hist[0][j], hist[1][j], hist[2][j]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Reorder([]int{1, 1, 0, 2}); err != nil {
		t.Fatal(err)
	}
	next := []int64{30, 31, 32, 33}
	got, v, err := st.Step(next)
	if err != nil {
		t.Fatal(err)
	}
	for i, parent := range []int{1, 1, 0, 2} {
		tgt := append(append([]int64(nil), hist[parent]...), next[i])
		want, err := ref.TeacherForced(srcs[parent], tgt)
		if err != nil {
			t.Fatal(err)
		}
		w := want[len(want)-1]
		for k := range w {
			if got[i*v+k] != w[k] {
				t.Fatalf("row %d (parent %d): logit %d is %g, teacher-forced %g", i, parent, k, got[i*v+k], w[k])
			}
		}
	}
}

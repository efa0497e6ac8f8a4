package transformer_test

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/passes/transformer"
	"github.com/qatc/qatc/testmodels"
)

// rename gives every initializer an exporter-style name onnx::MatMul_N
// and returns old → new.
func rename(m *graph.Model) map[string]string {
	names := map[string]string{}
	for i, t := range m.Graph().Initializer {
		names[t.Name] = fmt.Sprintf("onnx::MatMul_%d", 1000+i)
		t.Name = names[t.Name]
	}
	for _, n := range m.Graph().Node {
		for i, in := range n.Input {
			if nn, ok := names[in]; ok {
				n.Input[i] = nn
			}
		}
	}
	m.Reindex()
	return names
}

func build(t *testing.T, cfg testmodels.Config) *graph.Model {
	t.Helper()
	m, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// want checks one projection against the initializer names and ranges
// the builder wrote.
func wantProj(t *testing.T, where string, p transformer.Projection, weight string, out transformer.Range, transposed bool, bias string) {
	t.Helper()
	if p.Weight != weight || p.Out != out || p.Transposed != transposed || p.Bias != bias || (bias != "" && p.BiasOut != out) {
		t.Errorf("%s: got %s%v transposed=%v bias %s%v; want %s%v transposed=%v bias %s%v", where, p.Weight, p.Out, p.Transposed, p.Bias, p.BiasOut, weight, out, transposed, bias, out)
	}
}

func TestTestmodels(t *testing.T) {
	type variant struct {
		name    string
		edit    func(*testmodels.Config)
		renamed bool
		qat     bool
	}
	var variants []variant
	for _, v := range []variant{
		{name: "tiny", edit: func(*testmodels.Config) {}},
		{name: "unshared", edit: func(c *testmodels.Config) { c.SharedEmbeddings = false }},
		{name: "fused", edit: func(c *testmodels.Config) { c.FusedQKV = true }},
		{name: "postnorm", edit: func(c *testmodels.Config) { c.PreNorm = false }},
		{name: "gelu-erf-opset14", edit: func(c *testmodels.Config) { c.Activation, c.Opset = "gelu", 14 }},
		{name: "gelu-op-opset20", edit: func(c *testmodels.Config) { c.Activation, c.Opset = "gelu", 20 }},
		{name: "opset14-fused-postnorm-unshared", edit: func(c *testmodels.Config) {
			c.Opset, c.FusedQKV, c.PreNorm, c.SharedEmbeddings = 14, true, false, false
		}},
	} {
		variants = append(variants, v)
		r := v
		r.name, r.renamed = v.name+"-renamed", true
		variants = append(variants, r)
		q := v
		q.name, q.qat = v.name+"-qat", true
		variants = append(variants, q)
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			cfg := testmodels.Tiny()
			v.edit(&cfg)
			m := build(t, cfg)
			name := func(s string) string { return s }
			if v.renamed {
				names := rename(m)
				name = func(s string) string { return names[s] }
			}
			var rec *quantize.Record
			if v.qat {
				var err error
				if rec, err = quantize.Insert(m, quantize.DefaultParams()); err != nil {
					t.Fatal(err)
				}
			}
			tm, err := transformer.Recognize(m, transformer.Options{})
			if err != nil {
				t.Fatal(err)
			}
			checkTestmodel(t, cfg, tm, name)
			if rec != nil {
				// Every GEMM input the exporter reads a clip for is a
				// quantized tensor.
				for i, l := range tm.Decoder {
					for _, in := range []string{l.SelfAttn.Q.Input, l.SelfAttn.Context, l.CrossAttn.Q.Input, l.CrossAttn.K.Input, l.FFN.Dense1.Input, l.FFN.Hidden, l.SelfAttn.KOperand} {
						if rec.Lookup(in) == nil {
							t.Errorf("decoder layer %d: %s has no quantizer", i, in)
						}
					}
				}
			}
		})
	}
}

// checkTestmodel compares the recognised structure with what
// testmodels.Build writes for cfg.
func checkTestmodel(t *testing.T, cfg testmodels.Config, tm *transformer.Model, name func(string) string) {
	t.Helper()
	d := cfg.Hidden
	if tm.Hidden != d || tm.Heads != cfg.Heads || tm.FFN != cfg.FFN || tm.Vocab != cfg.Vocab ||
		len(tm.Encoder) != cfg.EncoderLayers || len(tm.Decoder) != cfg.DecoderLayers ||
		tm.PreNorm != cfg.PreNorm || tm.Activation != cfg.Activation {
		t.Fatalf("got H=%d heads=%d FFN=%d V=%d %d+%d layers pre=%v act=%s; want %+v", tm.Hidden, tm.Heads, tm.FFN, tm.Vocab, len(tm.Encoder), len(tm.Decoder), tm.PreNorm, tm.Activation, cfg)
	}
	if tm.SrcInput != testmodels.SrcInput || tm.TgtInput != testmodels.TgtInput || tm.LogitsOutput != testmodels.LogitsOutput {
		t.Errorf("inputs %s, %s, output %s", tm.SrcInput, tm.TgtInput, tm.LogitsOutput)
	}
	src, tgt := "shared_embedding", "shared_embedding"
	if !cfg.SharedEmbeddings {
		src, tgt = "encoder/embedding", "decoder/embedding"
	}
	if tm.Src.Table != name(src) || tm.Tgt.Table != name(tgt) || tm.Src.PositionTable != name(testmodels.PositionTable) || tm.Tgt.PositionTable != name(testmodels.PositionTable) {
		t.Errorf("tables %s, %s, positions %s, %s", tm.Src.Table, tm.Tgt.Table, tm.Src.PositionTable, tm.Tgt.PositionTable)
	}
	if math.Abs(float64(tm.Src.Scale)-math.Sqrt(float64(d))) > 1e-5 || tm.Tgt.Scale != tm.Src.Scale {
		t.Errorf("embedding scales %g, %g; want √%d", tm.Src.Scale, tm.Tgt.Scale, d)
	}
	full := transformer.Range{Lo: 0, Hi: d}
	part := func(i int) transformer.Range { return transformer.Range{Lo: i * d, Hi: (i + 1) * d} }
	attn := func(where, scope string, a transformer.Attention, self bool) {
		if a.Self != self {
			t.Errorf("%s: self=%v", where, a.Self)
		}
		if math.Abs(a.Scale-1/math.Sqrt(float64(d/cfg.Heads))) > 1e-6 {
			t.Errorf("%s: score scale %g", where, a.Scale)
		}
		switch {
		case !cfg.FusedQKV:
			for _, p := range []struct {
				n string
				p transformer.Projection
			}{{"q", a.Q}, {"k", a.K}, {"v", a.V}} {
				wantProj(t, where+" "+p.n, p.p, name(scope+"/"+p.n+"/kernel"), full, false, name(scope+"/"+p.n+"/bias"))
			}
		case self:
			for i, p := range []transformer.Projection{a.Q, a.K, a.V} {
				wantProj(t, where+" fused", p, name(scope+"/qkv/kernel"), part(i), false, name(scope+"/qkv/bias"))
			}
		default:
			wantProj(t, where+" q", a.Q, name(scope+"/q/kernel"), full, false, name(scope+"/q/bias"))
			wantProj(t, where+" k", a.K, name(scope+"/kv/kernel"), part(0), false, name(scope+"/kv/bias"))
			wantProj(t, where+" v", a.V, name(scope+"/kv/kernel"), part(1), false, name(scope+"/kv/bias"))
		}
		wantProj(t, where+" out", a.Out, name(scope+"/output/kernel"), full, false, name(scope+"/output/bias"))
		if a.Norm == nil || a.Norm.Scale != name(scope+"/ln/gamma") || a.Norm.Bias != name(scope+"/ln/beta") || a.Norm.Epsilon != testmodels.LayerNormEpsilon {
			t.Errorf("%s: LayerNorm %+v", where, a.Norm)
		}
	}
	ffn := func(where, scope string, f transformer.FFN) {
		wantProj(t, where+" dense1", f.Dense1, name(scope+"/dense1/kernel"), transformer.Range{Lo: 0, Hi: cfg.FFN}, false, name(scope+"/dense1/bias"))
		wantProj(t, where+" dense2", f.Dense2, name(scope+"/dense2/kernel"), full, false, name(scope+"/dense2/bias"))
		if f.Norm == nil || f.Norm.Scale != name(scope+"/ln/gamma") {
			t.Errorf("%s: LayerNorm %+v", where, f.Norm)
		}
	}
	for i, l := range tm.Encoder {
		s := fmt.Sprintf("encoder/layer_%d", i)
		attn(s+" self", s+"/self_attention", l.SelfAttn, true)
		ffn(s, s+"/ffn", l.FFN)
	}
	for i, l := range tm.Decoder {
		s := fmt.Sprintf("decoder/layer_%d", i)
		attn(s+" self", s+"/self_attention", l.SelfAttn, true)
		attn(s+" cross", s+"/encdec_attention", l.CrossAttn, false)
		ffn(s, s+"/ffn", l.FFN)
	}
	if cfg.PreNorm {
		if tm.EncoderNorm == nil || tm.EncoderNorm.Scale != name("encoder/ln/gamma") || tm.DecoderNorm == nil || tm.DecoderNorm.Scale != name("decoder/ln/gamma") {
			t.Errorf("final LayerNorms %+v, %+v", tm.EncoderNorm, tm.DecoderNorm)
		}
	} else if tm.EncoderNorm != nil || tm.DecoderNorm != nil {
		t.Errorf("post-norm model with final LayerNorms %+v, %+v", tm.EncoderNorm, tm.DecoderNorm)
	}
	v := transformer.Range{Lo: 0, Hi: cfg.Vocab}
	if cfg.SharedEmbeddings {
		wantProj(t, "logits", tm.Logits, name("shared_embedding"), v, true, name("softmax/bias"))
	} else {
		wantProj(t, "logits", tm.Logits, name("softmax/kernel"), v, false, name("softmax/bias"))
	}
	if tm.Tied != cfg.SharedEmbeddings {
		t.Errorf("tied %v", tm.Tied)
	}
}

// loadTorch loads the PyTorch fixture f, with quantizers inserted when
// qat is set.
func loadTorch(t *testing.T, f string, qat bool) *graph.Model {
	t.Helper()
	m, err := graph.Load(fixture.Torch(t, f))
	if err != nil {
		t.Fatal(err)
	}
	if qat {
		if _, err := quantize.Insert(m, quantize.DefaultParams()); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

func TestTorch(t *testing.T) {
	for _, f := range []string{fixture.Transformer14, fixture.Transformer17} {
		for _, qat := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/qat=%v", f, qat), func(t *testing.T) {
				m := loadTorch(t, f, qat)
				tm, err := transformer.Recognize(m, transformer.Options{})
				if err != nil {
					t.Fatal(err)
				}
				checkTorch(t, m, tm)
			})
		}
	}
}

// checkTorch compares the recognised structure with nn.Transformer's:
// fused in_proj for self-attention (one [64, 192] MatMul weight whose
// output PyTorch slices with Shape arithmetic), cross-attention slicing
// in_proj_weight's rows, Gemm output projections with transB, tied
// output projection through a transposed copy.
func checkTorch(t *testing.T, m *graph.Model, tm *transformer.Model) {
	t.Helper()
	if tm.Hidden != 64 || tm.Heads != 4 || tm.FFN != 128 || tm.Vocab != 512 || len(tm.Encoder) != 2 || len(tm.Decoder) != 2 || !tm.PreNorm || tm.Activation != "relu" {
		t.Fatalf("H=%d heads=%d FFN=%d V=%d %d+%d pre=%v %s", tm.Hidden, tm.Heads, tm.FFN, tm.Vocab, len(tm.Encoder), len(tm.Decoder), tm.PreNorm, tm.Activation)
	}
	if tm.Src.Table != "emb.weight" || tm.Tgt.Table != "emb.weight" || tm.Src.PositionTable != "pe" || tm.Src.Scale != 8 {
		t.Errorf("embedding %s/%s positions %s scale %g", tm.Src.Table, tm.Tgt.Table, tm.Src.PositionTable, tm.Src.Scale)
	}
	part := func(i int) transformer.Range { return transformer.Range{Lo: 64 * i, Hi: 64 * (i + 1)} }
	full := part(0)
	fused := map[string]bool{}
	self := func(where, prefix string, a transformer.Attention) {
		w := a.Q.Weight
		if !strings.HasPrefix(w, "onnx::MatMul_") || fused[w] {
			t.Errorf("%s: fused weight %s (seen %v)", where, w, fused[w])
		}
		fused[w] = true
		if d := m.Initializer(w).Dims; d[0] != 64 || d[1] != 192 {
			t.Errorf("%s: %s is %v", where, w, d)
		}
		for i, p := range []transformer.Projection{a.Q, a.K, a.V} {
			wantProj(t, where, p, w, part(i), false, prefix+".self_attn.in_proj_bias")
		}
		wantProj(t, where+" out", a.Out, prefix+".self_attn.out_proj.weight", full, true, prefix+".self_attn.out_proj.bias")
		if a.Norm.Scale != prefix+".norm1.weight" {
			t.Errorf("%s: norm %s", where, a.Norm.Scale)
		}
	}
	ffn := func(where, prefix, norm string, f transformer.FFN) {
		if f.Dense1.Bias != prefix+".linear1.bias" || f.Dense2.Bias != prefix+".linear2.bias" || f.Dense1.Transposed || f.Norm.Scale != prefix+"."+norm+".weight" {
			t.Errorf("%s: ffn %+v", where, f)
		}
	}
	for i, l := range tm.Encoder {
		p := fmt.Sprintf("tf.encoder.layers.%d", i)
		self(p, p, l.SelfAttn)
		ffn(p, p, "norm2", l.FFN)
	}
	for i, l := range tm.Decoder {
		p := fmt.Sprintf("tf.decoder.layers.%d", i)
		self(p, p, l.SelfAttn)
		x := l.CrossAttn
		w, b := p+".multihead_attn.in_proj_weight", p+".multihead_attn.in_proj_bias"
		for i, q := range []transformer.Projection{x.Q, x.K, x.V} {
			wantProj(t, p+" cross", q, w, part(i), true, b)
		}
		if x.Self || x.Norm.Scale != p+".norm2.weight" {
			t.Errorf("%s: cross-attention self=%v norm %s", p, x.Self, x.Norm.Scale)
		}
		ffn(p, p, "norm3", l.FFN)
	}
	if tm.EncoderNorm.Scale != "tf.encoder.norm.weight" || tm.DecoderNorm.Scale != "tf.decoder.norm.weight" {
		t.Errorf("final norms %s, %s", tm.EncoderNorm.Scale, tm.DecoderNorm.Scale)
	}
	if !tm.Tied || tm.Logits.Weight == "emb.weight" || tm.Logits.Bias != "" || tm.Logits.Transposed {
		t.Errorf("logits %+v tied=%v: want the transposed copy of emb.weight, no bias", tm.Logits, tm.Tied)
	}
}

func TestFailureNamesLayerAndPart(t *testing.T) {
	m := build(t, testmodels.Tiny())
	// Make cross-attention K of decoder layer 1 read a weight that is a
	// graph input: nothing a LightSeq file could hold.
	k := m.Producer("decoder/layer_1/encdec_attention/k/MatMul")
	m.AddInput("k_weight", graph.Float, []int64{32, 32})
	m.ReplaceInput(k, 1, "k_weight")
	_, err := transformer.Recognize(m, transformer.Options{})
	if err == nil {
		t.Fatal("recognised a graph whose K weight is an input")
	}
	msg := err.Error()
	for _, want := range []string{"decoder layer 1 cross-attention: K projection not found", "nodes around", "MatMul decoder/layer_1/encdec_attention/k/MatMul", "--map decoder.layer.1.cross_attn.k.weight"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	t.Log(msg)
	// Naming the weight with the map the message suggests recovers the
	// model.
	kernel := "decoder/layer_1/encdec_attention/k/kernel"
	tm, err := transformer.Recognize(m, transformer.Options{Map: map[string]string{"decoder.layer.1.cross_attn.k.weight": kernel}})
	if err != nil {
		t.Fatal(err)
	}
	checkTestmodel(t, testmodels.Tiny(), tm, func(s string) string { return s })
}

func TestNotATransformer(t *testing.T) {
	m := graph.New("mlp", 17)
	m.AddInput("x", graph.Float, []int64{1, 4})
	m.AddInitializer(graph.FloatTensor("w", []int64{4, 4}, make([]float32, 16)))
	m.Op("MatMul", "mm", []string{"x", "w"}, []string{"y"})
	m.AddOutput("y", graph.Float, []int64{1, 4})
	_, err := transformer.Recognize(m, transformer.Options{})
	if err == nil || !strings.Contains(err.Error(), "not a transformer") {
		t.Fatalf("got %v", err)
	}
}

func TestMap(t *testing.T) {
	m := build(t, testmodels.Tiny())
	other := "decoder/layer_0/ffn/dense2/kernel"
	tm, err := transformer.Recognize(m, transformer.Options{Map: map[string]string{"decoder.layer.1.ffn.dense2.weight": other}})
	if err != nil {
		t.Fatal(err)
	}
	if tm.Decoder[1].FFN.Dense2.Weight != other || tm.Decoder[0].FFN.Dense2.Weight != other {
		t.Fatalf("map not applied: %s", tm.Decoder[1].FFN.Dense2.Weight)
	}
	if n := len(tm.Roles()); n != 6+4+2*(10+6)+2*(2*10+6) {
		t.Errorf("%d roles", n)
	}
	for _, bad := range []struct {
		mp   map[string]string
		want string
	}{
		{map[string]string{"decoder.layer.9.ffn.dense2.weight": other}, "unknown role"},
		{map[string]string{"decoder.layer.1.ffn.dense2.weight": "nope"}, "not an initializer"},
		{map[string]string{"decoder.layer.1.ffn.dense2.weight": "decoder/layer_0/ffn/dense1/bias"}, "not a matrix"},
		{map[string]string{"decoder.layer.1.ffn.dense1.bias": "decoder/layer_0/ffn/dense2/bias"}, "want [64]"},
	} {
		_, err := transformer.Recognize(m, transformer.Options{Map: bad.mp})
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("map %v: got %v, want an error with %q", bad.mp, err, bad.want)
		}
	}
}

func TestReadMap(t *testing.T) {
	dir := t.TempDir()
	for name, text := range map[string]string{
		"map.yaml": "decoder.layer.1.ffn.dense2.weight: W123\nsrc.table: 'emb'\n",
		"map.json": `{"decoder.layer.1.ffn.dense2.weight": "W123", "src.table": "emb"}`,
	} {
		path := dir + "/" + name
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		mp, err := transformer.ReadMap(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(mp) != 2 || mp["decoder.layer.1.ffn.dense2.weight"] != "W123" || mp["src.table"] != "emb" {
			t.Errorf("%s: got %v", name, mp)
		}
	}
	bad := dir + "/bad.yaml"
	os.WriteFile(bad, []byte("- a\n- b\n"), 0o644)
	if _, err := transformer.ReadMap(bad); err == nil || !strings.Contains(err.Error(), "role: tensor name") {
		t.Errorf("list accepted as a map: %v", err)
	}
}

// TestScalings: the recogniser sees through the constant scalings of
// testmodels.Rescale (q and k by Pow(head size, −¼) computed from their
// shapes, V, the context and the hidden activation by literals) and
// reports each factor; the softmax temperature stays 1/√head size.
func TestScalings(t *testing.T) {
	cfg := testmodels.Tiny()
	m, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := testmodels.Rescale(m); err != nil {
		t.Fatal(err)
	}
	tm, err := transformer.Recognize(m, transformer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	quarter := math.Pow(float64(cfg.Hidden/cfg.Heads), -0.25)
	check := func(where string, a transformer.Attention) {
		got := []float64{a.Scale, a.QScale, a.KScale, a.ScoreScale, a.VScale, a.ContextScale}
		want := []float64{quarter * quarter, quarter, quarter, 1, 2, 0.5}
		for i := range got {
			if math.Abs(got[i]-want[i]) > 1e-6 {
				t.Errorf("%s: scale, q, k, scores, v, context = %v, want %v", where, got, want)
				break
			}
		}
	}
	for i, l := range tm.Encoder {
		check(fmt.Sprintf("encoder layer %d", i), l.SelfAttn)
		if l.FFN.HiddenScale != 4 {
			t.Errorf("encoder layer %d: hidden scale %g, want 4", i, l.FFN.HiddenScale)
		}
	}
	for i, l := range tm.Decoder {
		check(fmt.Sprintf("decoder layer %d self", i), l.SelfAttn)
		check(fmt.Sprintf("decoder layer %d cross", i), l.CrossAttn)
		if l.FFN.HiddenScale != 4 {
			t.Errorf("decoder layer %d: hidden scale %g, want 4", i, l.FFN.HiddenScale)
		}
	}
	// The original model: q by the literal, nothing else.
	plain, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if tm, err = transformer.Recognize(plain, transformer.Options{}); err != nil {
		t.Fatal(err)
	}
	a := tm.Decoder[1].CrossAttn
	if got := []float64{a.Scale, a.QScale, a.KScale, a.ScoreScale, a.VScale, a.ContextScale, tm.Decoder[1].FFN.HiddenScale}; math.Abs(got[0]-quarter*quarter) > 1e-6 || math.Abs(got[1]-quarter*quarter) > 1e-6 || got[2] != 1 || got[3] != 1 || got[4] != 1 || got[5] != 1 || got[6] != 1 {
		t.Errorf("plain model: scale, q, k, scores, v, context, hidden = %v", got)
	}
}

// TestTiedCopy: an output projection reading an exact copy of the target
// table (stored [vocab, hidden], read through a Transpose) is tied; a copy
// that differs in one value is not.
func TestTiedCopy(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit bool
		tied bool
	}{{"copy", false, true}, {"near copy", true, false}} {
		m, err := testmodels.Build(testmodels.Tiny())
		if err != nil {
			t.Fatal(err)
		}
		tr := m.Producer("softmax/shared_embedding_transposed")
		table := m.Initializer(tr.Input[0])
		vals, err := graph.Floats(table)
		if err != nil {
			t.Fatal(err)
		}
		cp := append([]float32(nil), vals...)
		if tc.edit {
			cp[7] += 1e-3
		}
		m.AddInitializer(graph.FloatTensor("projection_copy", table.Dims, cp))
		m.ReplaceInput(tr, 0, "projection_copy")
		tm, err := transformer.Recognize(m, transformer.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if tm.Logits.Weight != "projection_copy" || tm.Tied != tc.tied {
			t.Errorf("%s: logits weight %s, tied %v; want projection_copy, %v", tc.name, tm.Logits.Weight, tm.Tied, tc.tied)
		}
	}
}

// TestScaledResidual: a sublayer output scaled before its residual Add is
// an error naming the factor, not a layer read without it.
func TestScaledResidual(t *testing.T) {
	m, err := testmodels.Build(testmodels.Tiny())
	if err != nil {
		t.Fatal(err)
	}
	y := "encoder/layer_0/ffn/dense2/BiasAdd"
	uses := m.Consumers(y)
	if len(uses) != 1 || uses[0].OpType != "Add" {
		t.Fatalf("%s is read by %v", y, uses)
	}
	m.AddInitializer(graph.FloatTensor("three", nil, []float32{3}))
	m.Op("Mul", "scaled_branch", []string{y, "three"}, []string{"scaled_branch"})
	m.ReplaceInput(uses[0], slices.Index(uses[0].Input, y), "scaled_branch")
	if err := m.TopoSort(); err != nil {
		t.Fatal(err)
	}
	_, err = transformer.Recognize(m, transformer.Options{})
	if err == nil || !strings.Contains(err.Error(), "scaled by 3 before the residual Add") {
		t.Errorf("error %v, want one naming the scaled residual branch", err)
	}
}

// TestTorchExportPaths: one trained post-norm GELU model exported by
// PyTorch through nn.Transformer (fused in_proj) and through a functional
// path (separate q/k/v, q and k each scaled by Pow(head_dim, −0.25)
// computed from the runtime shape, k after its transpose) is recognised
// the same both ways, fp32 and QAT: the same sizes, softmax temperature
// 1/√16, a source table apart from the target table, the output
// projection tied to the target table (its transposed copy), and every
// projection, bias, LayerNorm and table holding the same values.
func TestTorchExportPaths(t *testing.T) {
	for _, qat := range []bool{false, true} {
		var models []*graph.Model
		var tms []*transformer.Model
		for _, f := range []string{fixture.PostNormNN, fixture.PostNormFn} {
			m := loadTorch(t, f, qat)
			tm, err := transformer.Recognize(m, transformer.Options{})
			if err != nil {
				t.Fatalf("%s (qat %v): %v", f, qat, err)
			}
			if tm.Hidden != 64 || tm.Heads != 4 || tm.FFN != 128 || tm.Vocab != 512 || len(tm.Encoder) != 2 || len(tm.Decoder) != 2 || tm.PreNorm || tm.Activation != "gelu" {
				t.Fatalf("%s: H=%d heads=%d FFN=%d V=%d %d+%d pre=%v %s", f, tm.Hidden, tm.Heads, tm.FFN, tm.Vocab, len(tm.Encoder), len(tm.Decoder), tm.PreNorm, tm.Activation)
			}
			if !tm.Tied || tm.Src.Table == tm.Tgt.Table || tm.Logits.Weight == tm.Tgt.Table {
				t.Errorf("%s: tables %s and %s, output projection %s (tied %v); want two tables, the target one projecting through its transposed copy", f, tm.Src.Table, tm.Tgt.Table, tm.Logits.Weight, tm.Tied)
			}
			models, tms = append(models, m), append(tms, tm)
		}
		nn, fn := tms[0], tms[1]
		same := func(where string, a, b []float32) {
			t.Helper()
			if !slices.Equal(a, b) {
				t.Errorf("qat %v: %s differs between the two export paths", qat, where)
			}
		}
		proj := func(where string, a, b transformer.Projection) {
			t.Helper()
			same(where+" kernel", kernelOf(t, models[0], a), kernelOf(t, models[1], b))
			same(where+" bias", biasOf(t, models[0], a), biasOf(t, models[1], b))
		}
		attn := func(where string, a, b transformer.Attention) {
			t.Helper()
			if math.Abs(a.Scale-0.25) > 1e-7 || math.Abs(b.Scale-0.25) > 1e-7 || math.Abs(b.QScale-0.5) > 1e-7 || math.Abs(b.KScale-0.5) > 1e-7 {
				t.Errorf("%s: temperature %g and %g (functional q %g, k %g), want 1/4 (½ each)", where, a.Scale, b.Scale, b.QScale, b.KScale)
			}
			proj(where+" Q", a.Q, b.Q)
			proj(where+" K", a.K, b.K)
			proj(where+" V", a.V, b.V)
			proj(where+" output", a.Out, b.Out)
			same(where+" LayerNorm", floatsOf(t, models[0], a.Norm.Scale), floatsOf(t, models[1], b.Norm.Scale))
		}
		for i := range nn.Encoder {
			attn(fmt.Sprintf("encoder %d self", i), nn.Encoder[i].SelfAttn, fn.Encoder[i].SelfAttn)
			proj(fmt.Sprintf("encoder %d dense1", i), nn.Encoder[i].FFN.Dense1, fn.Encoder[i].FFN.Dense1)
			proj(fmt.Sprintf("encoder %d dense2", i), nn.Encoder[i].FFN.Dense2, fn.Encoder[i].FFN.Dense2)
		}
		for i := range nn.Decoder {
			attn(fmt.Sprintf("decoder %d self", i), nn.Decoder[i].SelfAttn, fn.Decoder[i].SelfAttn)
			attn(fmt.Sprintf("decoder %d cross", i), nn.Decoder[i].CrossAttn, fn.Decoder[i].CrossAttn)
			proj(fmt.Sprintf("decoder %d dense2", i), nn.Decoder[i].FFN.Dense2, fn.Decoder[i].FFN.Dense2)
		}
		same("target table", floatsOf(t, models[0], nn.Tgt.Table), floatsOf(t, models[1], fn.Tgt.Table))
		proj("logits", nn.Logits, fn.Logits)
	}
}

// kernelOf returns projection p's weight as [in, out] values.
func kernelOf(t *testing.T, m *graph.Model, p transformer.Projection) []float32 {
	t.Helper()
	w := floatsOf(t, m, p.Weight)
	d := m.Initializer(p.Weight).Dims
	rows, cols := int(d[0]), int(d[1])
	in := rows
	if p.Transposed {
		in = cols
	}
	out := make([]float32, 0, in*p.Out.Len())
	for i := range in {
		for j := p.Out.Lo; j < p.Out.Hi; j++ {
			if p.Transposed {
				out = append(out, w[j*cols+i])
			} else {
				out = append(out, w[i*cols+j])
			}
		}
	}
	return out
}

// biasOf returns projection p's bias part (nil if none).
func biasOf(t *testing.T, m *graph.Model, p transformer.Projection) []float32 {
	t.Helper()
	if p.Bias == "" {
		return nil
	}
	return floatsOf(t, m, p.Bias)[p.BiasOut.Lo:p.BiasOut.Hi]
}

func floatsOf(t *testing.T, m *graph.Model, name string) []float32 {
	t.Helper()
	init := m.Initializer(name)
	if init == nil {
		t.Fatalf("no initializer %s", name)
	}
	v, err := graph.Floats(init)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestTorchD256: nn.Transformer's defaults with the logits computed by a
// 2-D Gemm (transB) on the token table itself, its output reshaped back
// to [batch, len, vocab]: the output projection is found through the
// Reshape, tied, the whole vocabulary wide; post-norm with final
// LayerNorms.
func TestTorchD256(t *testing.T) {
	m, err := graph.Load(fixture.Torch(t, fixture.D256))
	if err != nil {
		t.Fatal(err)
	}
	tm, err := transformer.Recognize(m, transformer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l := tm.Logits
	if tm.Hidden != 256 || tm.Heads != 4 || tm.FFN != 512 || tm.Vocab != 4000 || tm.PreNorm || tm.EncoderNorm == nil || tm.DecoderNorm == nil {
		t.Errorf("H=%d heads=%d FFN=%d V=%d pre=%v final norms %v %v", tm.Hidden, tm.Heads, tm.FFN, tm.Vocab, tm.PreNorm, tm.EncoderNorm != nil, tm.DecoderNorm != nil)
	}
	if l.Node.OpType != "Gemm" || l.Weight != tm.Tgt.Table || !l.Transposed || l.Out != (transformer.Range{Lo: 0, Hi: 4000}) || l.Bias == "" || l.BiasOut.Len() != 4000 || !tm.Tied || tm.LogitsOutput != "logits" {
		t.Errorf("logits %s %s weight %s transposed %v out %v bias %s %v, tied %v, output %s", l.Node.OpType, graph.NodeName(l.Node), l.Weight, l.Transposed, l.Out, l.Bias, l.BiasOut, tm.Tied, tm.LogitsOutput)
	}
}

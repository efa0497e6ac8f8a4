package testmodels_test

import (
	"bytes"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/testmodels"
)

var bigModel = flag.Bool("bigmodel", false, "build, save and run the transformer-big model (also QATC_BIG=1)")

func wantBig(tb testing.TB) {
	tb.Helper()
	if !*bigModel && os.Getenv("QATC_BIG") != "1" {
		tb.Skip("transformer-big is built only with -bigmodel or QATC_BIG=1")
	}
}

func build(tb testing.TB, cfg testmodels.Config) *graph.Model {
	tb.Helper()
	m, err := testmodels.Build(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := m.Validate(); err != nil {
		tb.Fatalf("built model does not validate: %v", err)
	}
	return m
}

// runLogits runs m in onnxruntime and returns logits [batch, tgtLen, Vocab].
func runLogits(tb testing.TB, m *graph.Model, src, tgt []int64, batch, srcLen, tgtLen int) []float32 {
	tb.Helper()
	s, err := ort.Open(m, nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer s.Close()
	return runSession(tb, s, src, tgt, batch, srcLen, tgtLen)
}

func runSession(tb testing.TB, s *ort.Session, src, tgt []int64, batch, srcLen, tgtLen int) []float32 {
	tb.Helper()
	out, err := s.Run(map[string]*ort.Tensor{
		testmodels.SrcInput: ort.Int64([]int64{int64(batch), int64(srcLen)}, src),
		testmodels.TgtInput: ort.Int64([]int64{int64(batch), int64(tgtLen)}, tgt),
	}, testmodels.LogitsOutput)
	if err != nil {
		tb.Fatal(err)
	}
	logits := out[testmodels.LogitsOutput]
	if logits.DType() != graph.Float {
		tb.Fatalf("logits are %s, want float32", logits.DType())
	}
	return logits.Float32s()
}

// checkLogits checks the shape and finiteness of ORT's logits and returns
// the largest difference from the reference implementation.
func checkLogits(t *testing.T, cfg testmodels.Config, m *graph.Model, batch, srcLen, tgtLen int, seed int64) (maxErr float64) {
	t.Helper()
	src, tgt := testmodels.RandomBatch(cfg, batch, srcLen, tgtLen, seed)
	s, err := ort.Open(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.Run(map[string]*ort.Tensor{
		testmodels.SrcInput: ort.Int64([]int64{int64(batch), int64(srcLen)}, src),
		testmodels.TgtInput: ort.Int64([]int64{int64(batch), int64(tgtLen)}, tgt),
	})
	if err != nil {
		t.Fatal(err)
	}
	logits := out[testmodels.LogitsOutput]
	want := []int64{int64(batch), int64(tgtLen), int64(cfg.Vocab)}
	if fmt.Sprint(logits.Shape) != fmt.Sprint(want) {
		t.Fatalf("logits shape %v, want %v", logits.Shape, want)
	}
	got := logits.Float32s()
	for i, v := range got {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			t.Fatalf("logits[%d] = %v", i, v)
		}
	}
	ref := (&reference{t: t, cfg: cfg, m: m}).forward(src, tgt, batch, srcLen, tgtLen)
	worst := 0
	for i := range ref {
		if e := math.Abs(float64(got[i]) - ref[i]); e > maxErr {
			maxErr, worst = e, i
		}
	}
	if maxErr > 1e-4 {
		t.Errorf("logits differ from the reference by %.3g at %d (ort %v, reference %v)", maxErr, worst, got[worst], ref[worst])
	}
	return maxErr
}

// variants lists every combination of the options on Tiny, plus the
// opsets where GELU is an op.
func variants() map[string]testmodels.Config {
	out := map[string]testmodels.Config{}
	for _, shared := range []bool{true, false} {
		for _, fused := range []bool{false, true} {
			for _, pre := range []bool{true, false} {
				for _, act := range []string{"relu", "gelu"} {
					for _, opset := range []int64{14, 17} {
						c := testmodels.Tiny()
						c.SharedEmbeddings, c.FusedQKV, c.PreNorm, c.Activation, c.Opset = shared, fused, pre, act, opset
						name := fmt.Sprintf("shared=%v/fused=%v/prenorm=%v/%s/opset%d", shared, fused, pre, act, opset)
						out[name] = c
					}
				}
			}
		}
	}
	for _, opset := range []int64{20, 21} {
		c := testmodels.Tiny()
		c.Activation, c.Opset, c.FusedQKV = "gelu", opset, true
		out[fmt.Sprintf("shared=true/fused=true/prenorm=true/gelu/opset%d", opset)] = c
	}
	return out
}

func TestVariantsMatchReference(t *testing.T) {
	var worst float64
	for name, cfg := range variants() {
		t.Run(name, func(t *testing.T) {
			m := build(t, cfg)
			if got := m.Opset(""); got != cfg.Opset {
				t.Errorf("opset %d, want %d", got, cfg.Opset)
			}
			worst = max(worst, checkLogits(t, cfg, m, 3, 7, 5, 11))
		})
	}
	t.Logf("largest difference from the float64 reference over %d variants: %.3g", len(variants()), worst)
}

// Options that only change how the graph computes must not change what it
// computes: fused Q/K/V draws the same weights as separate ones, and the
// decomposed LayerNorm and GELU equal the ops.
func TestEquivalentVariants(t *testing.T) {
	base := testmodels.Tiny()
	base.Activation = "gelu"
	fused := base
	fused.FusedQKV = true
	decomposed := base
	decomposed.Opset = 14
	geluOp := base
	geluOp.Opset = 20
	src, tgt := testmodels.RandomBatch(base, 2, 6, 6, 3)
	want := runLogits(t, build(t, base), src, tgt, 2, 6, 6)
	for name, cfg := range map[string]testmodels.Config{"fused": fused, "opset14": decomposed, "opset20": geluOp} {
		got := runLogits(t, build(t, cfg), src, tgt, 2, 6, 6)
		if d := maxDiff(got, want); d > 1e-5 {
			t.Errorf("%s: logits differ from the default variant's by %.3g", name, d)
		}
	}
}

func maxDiff(a, b []float32) float64 {
	var d float64
	for i := range a {
		d = max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

func TestDeterministic(t *testing.T) {
	marshal := func(cfg testmodels.Config) []byte {
		b, err := build(t, cfg).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for name, cfg := range map[string]testmodels.Config{"default": testmodels.Tiny(), "unshared fused post-norm": func() testmodels.Config {
		c := testmodels.Tiny()
		c.SharedEmbeddings, c.FusedQKV, c.PreNorm = false, true, false
		return c
	}()} {
		a, b := marshal(cfg), marshal(cfg)
		if !bytes.Equal(a, b) {
			t.Errorf("%s: two builds with seed %d differ", name, cfg.Seed)
		}
		other := cfg
		other.Seed++
		if bytes.Equal(a, marshal(other)) {
			t.Errorf("%s: seeds %d and %d give the same model", name, cfg.Seed, other.Seed)
		}
		// Every parameter depends on the seed.
		m1, m2 := build(t, cfg), build(t, other)
		for _, n := range m1.InitializerNames() {
			if n == testmodels.PositionTable {
				continue
			}
			if bytes.Equal(m1.Initializer(n).RawData, m2.Initializer(n).RawData) {
				t.Errorf("%s: initializer %s is the same for seeds %d and %d", name, n, cfg.Seed, other.Seed)
			}
		}
	}
}

// The source padding must not matter: a padded sentence gives the logits
// it gives alone, and whatever the padded positions hold is ignored.
func TestPaddingMask(t *testing.T) {
	for _, shared := range []bool{true, false} {
		t.Run(fmt.Sprintf("shared=%v", shared), func(t *testing.T) {
			cfg := testmodels.Tiny()
			cfg.SharedEmbeddings = shared
			const batch, srcLen, tgtLen = 2, 8, 5
			eos, bos, pad := int64(testmodels.EOS), int64(testmodels.BOS), cfg.PadID
			src := []int64{
				5, 6, 7, 8, 9, 10, 11, eos,
				12, 13, 14, eos, pad, pad, pad, pad,
			}
			tgt := []int64{ // no target padding, so the pad row is read by the source only
				bos, 20, 21, 22, 23,
				bos, 24, 25, 26, 27,
			}
			row := tgtLen * cfg.Vocab
			m := build(t, cfg)
			want := runLogits(t, m, src, tgt, batch, srcLen, tgtLen)

			alone := runLogits(t, m, src[srcLen:srcLen+4], tgt[tgtLen:], 1, 4, tgtLen)
			if d := maxDiff(alone, want[row:]); d > 1e-5 {
				t.Errorf("the padded sentence's logits differ from its logits alone by %.3g", d)
			}

			// Move the pad token's embedding: the padded positions' encoder
			// states change, but attention never reads them.
			table := "shared_embedding"
			if !shared {
				table = "encoder/embedding"
			}
			moved := build(t, cfg)
			w, err := graph.Floats(moved.Initializer(table))
			if err != nil {
				t.Fatal(err)
			}
			for j := range cfg.Hidden {
				w[int(pad)*cfg.Hidden+j] += 3
			}
			if err := graph.SetFloats(moved.Initializer(table), w); err != nil {
				t.Fatal(err)
			}
			got := runLogits(t, moved, src, tgt, batch, srcLen, tgtLen)
			if shared {
				// The tied output projection's pad column moved too.
				for i := int(pad); i < len(got); i += cfg.Vocab {
					got[i] = want[i]
				}
			}
			if d := maxDiff(got, want); d > 1e-6 {
				t.Errorf("changing what the source padding holds changed the logits by %.3g", d)
			}

			// Control: real tokens in those positions do change row 1 (and
			// only row 1).
			unpadded := append([]int64(nil), src...)
			copy(unpadded[srcLen+4:], []int64{40, 41, 42, 43})
			got = runLogits(t, m, unpadded, tgt, batch, srcLen, tgtLen)
			if d := maxDiff(got[row:], want[row:]); d < 1e-3 {
				t.Errorf("replacing the padding with tokens changed row 1's logits by only %.3g", d)
			}
			if d := maxDiff(got[:row], want[:row]); d > 1e-6 {
				t.Errorf("changing row 1 changed row 0's logits by %.3g", d)
			}
		})
	}
}

// A target token must not influence the logits of earlier positions.
func TestCausalMask(t *testing.T) {
	cfg := testmodels.Tiny()
	const batch, srcLen, tgtLen, j = 2, 6, 7, 3
	src, tgt := testmodels.RandomBatch(cfg, batch, srcLen, tgtLen, 9)
	for i := range batch { // full-length targets
		for p := 1; p < tgtLen; p++ {
			tgt[i*tgtLen+p] = int64(10 + i + p)
		}
	}
	m := build(t, cfg)
	want := runLogits(t, m, src, tgt, batch, srcLen, tgtLen)
	changed := append([]int64(nil), tgt...)
	for i := range batch {
		changed[i*tgtLen+j] = 50
	}
	got := runLogits(t, m, src, changed, batch, srcLen, tgtLen)
	v := cfg.Vocab
	for i := range batch {
		for p := range tgtLen {
			off := (i*tgtLen + p) * v
			d := maxDiff(got[off:off+v], want[off:off+v])
			switch {
			case p < j && d > 1e-6:
				t.Errorf("row %d: changing target %d changed the logits at position %d by %.3g", i, j, p, d)
			case p >= j && d < 1e-4:
				t.Errorf("row %d: changing target %d changed the logits at position %d by only %.3g", i, j, p, d)
			}
		}
	}
	// A prefix alone gives the same logits as within the full sequence:
	// what incremental decoding relies on.
	prefix := make([]int64, 0, batch*j)
	for i := range batch {
		prefix = append(prefix, tgt[i*tgtLen:i*tgtLen+j]...)
	}
	short := runLogits(t, m, src, prefix, batch, srcLen, j)
	for i := range batch {
		if d := maxDiff(short[i*j*v:(i+1)*j*v], want[i*tgtLen*v:(i*tgtLen+j)*v]); d > 1e-5 {
			t.Errorf("row %d: the %d-token prefix's logits differ from the full run's by %.3g", i, j, d)
		}
	}
}

// countParams sums the elements of the float initializers other than the
// position table.
func countParams(m *graph.Model) int64 {
	var n int64
	for _, name := range m.InitializerNames() {
		init := m.Initializer(name)
		if name != testmodels.PositionTable && graph.TensorType(init) == graph.Float {
			n += graph.NumElements(init.Dims)
		}
	}
	return n
}

func TestNumParams(t *testing.T) {
	// Worked by hand: per encoder layer 4d²+4d (attention) + 2df+f+d (FFN)
	// + 4d (LayerNorms); per decoder layer twice the attention and 6d;
	// 2·2d final LayerNorms; Vocab·d per table; Vocab output bias.
	tests := []struct {
		name string
		cfg  testmodels.Config
		want int64
	}{
		{"tiny", testmodels.Tiny(), 44_992},
		{"base", testmodels.Base(), 48_244_544},
		{"big", testmodels.Big(), 209_161_472},
	}
	for _, tc := range tests {
		if got := tc.cfg.NumParams(); got != tc.want {
			t.Errorf("%s: NumParams() = %d, want %d", tc.name, got, tc.want)
		}
	}
	for name, cfg := range variants() {
		if got, want := countParams(build(t, cfg)), cfg.NumParams(); got != want {
			t.Errorf("%s: the graph has %d parameters, NumParams says %d", name, got, want)
		}
	}
	t.Logf("parameters: tiny %d, base %d, big %d", testmodels.Tiny().NumParams(), testmodels.Base().NumParams(), testmodels.Big().NumParams())
}

// The shared table is one initializer read by both lookups and the output
// projection; unshared models have three.
func TestEmbeddingTables(t *testing.T) {
	readers := func(m *graph.Model, name string) []string {
		var ops []string
		for _, n := range m.Consumers(name) {
			ops = append(ops, n.OpType)
		}
		return ops
	}
	m := build(t, testmodels.Tiny())
	if got := strings.Join(readers(m, "shared_embedding"), ","); got != "Gather,Gather,Transpose" {
		t.Errorf("shared_embedding is read by %s, want Gather,Gather,Transpose", got)
	}
	proj := m.Producer("softmax/MatMul").Input[1]
	if p := m.Producer(proj); p == nil || p.OpType != "Transpose" || p.Input[0] != "shared_embedding" {
		t.Errorf("the output projection reads %s, not the transposed shared_embedding", proj)
	}
	cfg := testmodels.Tiny()
	cfg.SharedEmbeddings = false
	m = build(t, cfg)
	for name, want := range map[string]string{"encoder/embedding": "Gather", "decoder/embedding": "Gather", "softmax/kernel": "MatMul"} {
		if got := strings.Join(readers(m, name), ","); got != want {
			t.Errorf("unshared: %s is read by %q, want %q", name, got, want)
		}
	}
	if m.Initializer("shared_embedding") != nil {
		t.Error("unshared model has a shared_embedding")
	}
}

func TestNames(t *testing.T) {
	cfg := testmodels.Tiny()
	cfg.FusedQKV = true
	m := build(t, cfg)
	for _, name := range []string{
		"shared_embedding", testmodels.PositionTable, "softmax/bias",
		"encoder/layer_0/self_attention/qkv/kernel", "encoder/layer_1/self_attention/output/bias",
		"encoder/layer_0/self_attention/ln/gamma", "encoder/layer_1/ffn/dense1/kernel", "encoder/layer_1/ffn/dense2/bias",
		"encoder/ln/beta", "decoder/layer_1/encdec_attention/q/kernel", "decoder/layer_1/encdec_attention/kv/kernel",
		"decoder/layer_0/self_attention/qkv/bias", "decoder/layer_0/ffn/ln/gamma", "decoder/ln/gamma",
	} {
		if m.Initializer(name) == nil {
			t.Errorf("no initializer %s", name)
		}
	}
	for _, name := range []string{"encoder/layer_0/self_attention/probs", "decoder/layer_1/encdec_attention/probs", "decoder/causal/bias", "encoder/padding/attention_bias"} {
		if m.Producer(name) == nil {
			t.Errorf("no value %s", name)
		}
	}
	in := m.Graph().Input
	if len(in) != 2 || in[0].Name != "src_ids" || in[1].Name != "tgt_ids" {
		t.Fatalf("inputs %v, want src_ids, tgt_ids", in)
	}
	for i, want := range []string{"batch src_len", "batch tgt_len"} {
		var dims []string
		for _, d := range in[i].Type.GetTensorType().Shape.Dim {
			dims = append(dims, d.GetDimParam())
		}
		if got := strings.Join(dims, " "); got != want {
			t.Errorf("%s dims %q, want %q", in[i].Name, got, want)
		}
	}
	if _, ok := m.Metadata(testmodels.MetadataKey); !ok {
		t.Errorf("no %s metadata", testmodels.MetadataKey)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		change func(*testmodels.Config)
		want   string
	}{
		{func(c *testmodels.Config) { c.Heads = 5 }, "Hidden 32 is not a multiple of Heads 5"},
		{func(c *testmodels.Config) { c.Hidden, c.Heads = 33, 3 }, "Hidden 33 is odd"},
		{func(c *testmodels.Config) { c.Vocab = 0 }, "Vocab is 0"},
		{func(c *testmodels.Config) { c.Vocab = 5 }, "Vocab 5 is too small"},
		{func(c *testmodels.Config) { c.EncoderLayers = 0 }, "EncoderLayers is 0"},
		{func(c *testmodels.Config) { c.MaxLen = -1 }, "MaxLen is -1"},
		{func(c *testmodels.Config) { c.PadID = 64 }, "PadID 64 is outside the vocabulary"},
		{func(c *testmodels.Config) { c.PadID = testmodels.EOS }, "PadID 3 is also the BOS or EOS id"},
		{func(c *testmodels.Config) { c.Activation = "swish" }, `Activation "swish" is not supported`},
		{func(c *testmodels.Config) { c.Opset = 13 }, "Opset 13 is not supported"},
	}
	for _, tc := range tests {
		c := testmodels.Tiny()
		tc.change(&c)
		_, err := testmodels.Build(c)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("Build(%+v) error %v, want one line containing %q", c, err, tc.want)
		}
	}
	c := testmodels.Tiny()
	c.Opset, c.Activation = 0, ""
	if _, err := testmodels.Build(c); err != nil {
		t.Errorf("zero Opset and Activation should mean the defaults: %v", err)
	}
	if _, err := testmodels.Preset("huge"); err == nil {
		t.Error("Preset(huge) did not fail")
	}
}

func TestRandomBatch(t *testing.T) {
	cfg := testmodels.Tiny()
	cfg.PadID = 1
	const batch, srcLen, tgtLen = 16, 9, 7
	src, tgt := testmodels.RandomBatch(cfg, batch, srcLen, tgtLen, 4)
	src2, tgt2 := testmodels.RandomBatch(cfg, batch, srcLen, tgtLen, 4)
	if fmt.Sprint(src, tgt) != fmt.Sprint(src2, tgt2) {
		t.Error("same seed, different batches")
	}
	if src3, _ := testmodels.RandomBatch(cfg, batch, srcLen, tgtLen, 5); fmt.Sprint(src3) == fmt.Sprint(src) {
		t.Error("different seeds, same batch")
	}
	check := func(name string, ids []int64, width int, bos bool) {
		paddedRows := 0
		for i := range batch {
			row := ids[i*width : (i+1)*width]
			n := width
			for n > 0 && row[n-1] == cfg.PadID {
				n--
			}
			if n < width {
				paddedRows++
			}
			if i == 0 && n != width {
				t.Errorf("%s row 0 is padded: %v", name, row)
			}
			if n == 0 {
				t.Errorf("%s row %d is all padding", name, i)
			}
			for j, id := range row[:n] {
				switch {
				case id < 0 || id >= int64(cfg.Vocab) || id == cfg.PadID:
					t.Errorf("%s row %d position %d: id %d", name, i, j, id)
				case bos && j == 0 && id != testmodels.BOS:
					t.Errorf("%s row %d starts with %d, not BOS", name, i, id)
				case !bos && j == n-1 && id != testmodels.EOS:
					t.Errorf("%s row %d ends with %d, not EOS", name, i, id)
				}
			}
		}
		if paddedRows == 0 {
			t.Errorf("no %s row is padded", name)
		}
	}
	check("src", src, srcLen, false)
	check("tgt", tgt, tgtLen, true)
}

// Base runs in onnxruntime and matches the reference.
func TestBase(t *testing.T) {
	if testing.Short() {
		t.Skip("builds transformer-base (48M parameters)")
	}
	start := time.Now()
	cfg := testmodels.Base()
	m := build(t, cfg)
	built := time.Since(start)
	if got := countParams(m); got != cfg.NumParams() {
		t.Errorf("base has %d parameters, want %d", got, cfg.NumParams())
	}
	maxErr := checkLogits(t, cfg, m, 2, 8, 8, 1)
	t.Logf("base: built in %v, ran and checked in %v; largest difference from the reference %.3g", built.Round(time.Millisecond), (time.Since(start) - built).Round(time.Millisecond), maxErr)
}

// TestBigExternalData builds transformer-big, saves it with external data,
// loads it back and runs it.
func TestBigExternalData(t *testing.T) {
	wantBig(t)
	cfg := testmodels.Big()
	start := time.Now()
	m := build(t, cfg)
	t.Logf("built big in %v", time.Since(start).Round(time.Millisecond))
	n := countParams(m)
	if n != cfg.NumParams() || n < 205e6 || n > 215e6 {
		t.Fatalf("big has %d parameters, want %d (about 210M)", n, cfg.NumParams())
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "big.onnx")
	start = time.Now()
	if err := m.SaveWith(path, &graph.SaveOptions{ExternalData: true}); err != nil {
		t.Fatal(err)
	}
	t.Logf("saved in %v", time.Since(start).Round(time.Millisecond))
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.Stat(path + ".data")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("big: %d parameters; %s %d bytes + %s %d bytes", n, filepath.Base(path), st.Size(), filepath.Base(path)+".data", data.Size())
	if st.Size() > 1<<20 || data.Size() < 4*n {
		t.Errorf("model file %d bytes, data file %d bytes: the weights are not external", st.Size(), data.Size())
	}
	src, tgt := testmodels.RandomBatch(cfg, 1, 8, 8, 1)
	want := runLogits(t, m, src, tgt, 1, 8, 8)
	m = nil
	s, err := ort.OpenFile(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if d := maxDiff(runSession(t, s, src, tgt, 1, 8, 8), want); d > 1e-5 {
		t.Errorf("the saved model's logits differ from the built model's by %.3g", d)
	}
}

func BenchmarkBuild(b *testing.B) {
	for _, name := range []string{"tiny", "base", "big"} {
		b.Run(name, func(b *testing.B) {
			if name == "big" {
				wantBig(b)
			}
			cfg, err := testmodels.Preset(name)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(4 * cfg.NumParams())
			for b.Loop() {
				if _, err := testmodels.Build(cfg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSaveBig writes transformer-big with external data.
func BenchmarkSaveBig(b *testing.B) {
	wantBig(b)
	m, err := testmodels.Build(testmodels.Big())
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "big.onnx")
	b.SetBytes(4 * testmodels.Big().NumParams())
	for b.Loop() {
		if err := m.SaveWith(path, &graph.SaveOptions{ExternalData: true}); err != nil {
			b.Fatal(err)
		}
	}
}

// The graph package's shape inference must agree with what onnxruntime
// computes for every value of every variant, symbolic dims included.
func TestInferredShapes(t *testing.T) {
	const batch, srcLen, tgtLen = 3, 7, 5
	params := map[string]int64{"batch": batch, "src_len": srcLen, "tgt_len": tgtLen}
	for name, cfg := range variants() {
		m := build(t, cfg)
		info, err := m.InferShapes()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var values []string
		for _, n := range m.Graph().Node {
			for _, o := range n.Output {
				if !m.IsGraphOutput(o) && n.OpType != "Constant" {
					values = append(values, o)
				}
			}
		}
		s, err := ort.Open(m, &ort.Options{Outputs: values})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		src, tgt := testmodels.RandomBatch(cfg, batch, srcLen, tgtLen, 2)
		out, err := s.Run(map[string]*ort.Tensor{
			testmodels.SrcInput: ort.Int64([]int64{batch, srcLen}, src),
			testmodels.TgtInput: ort.Int64([]int64{batch, tgtLen}, tgt),
		})
		s.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, v := range append(values, testmodels.LogitsOutput) {
			got, ok := info[v]
			actual := out[v]
			switch {
			case !ok || !got.RankKnown:
				t.Errorf("%s: %s: rank not inferred (onnxruntime: %v)", name, v, actual.Shape)
				continue
			case got.Elem != actual.DType() || got.Rank() != len(actual.Shape):
				t.Errorf("%s: %s: inferred %v, onnxruntime %s%v", name, v, got, actual.DType(), actual.Shape)
				continue
			}
			for i, d := range got.Dims {
				want, known := d.Value, d.Static()
				if !known {
					want, known = params[d.Param]
				}
				if !known || want != actual.Shape[i] {
					t.Errorf("%s: %s: inferred %v, onnxruntime %v", name, v, got, actual.Shape)
					break
				}
			}
		}
	}
}

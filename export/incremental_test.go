package export

import (
	"github.com/qatc/qatc/decode"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qatc/qatc/passes/incremental"
	"github.com/qatc/qatc/seq2seq"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/testmodels"
)

// checkBatch is a check batch of the tiny model.
func checkBatchOf(cfg testmodels.Config) (src, tgt *ort.Tensor) {
	s, g := testmodels.RandomBatch(cfg, 6, 9, 7, 4)
	return ort.Int64([]int64{6, 9}, s), ort.Int64([]int64{6, 7}, g)
}

// TestIncremental exports QAT models of the tiny testmodel in every
// format (and an fp32 model in fp32), writes each directory, and checks
// that every file opens in onnxruntime with default options, that the
// directory decodes, and the report: the check within its bound, integer
// kernels in every file of an integer format.
func TestIncremental(t *testing.T) {
	cfg := testmodels.Tiny()
	src, tgt := checkBatchOf(cfg)
	w8 := quantize.DefaultParams()
	w4 := w8
	w4.WeightBits, w4.WeightInit, w4.Granularity, w4.BlockSize = 4, quantize.InitMax, quantize.Block, 16
	for _, tc := range []struct {
		format string
		params *quantize.Params // nil: the fp32 model
	}{
		{"fp32", nil}, {"fp32", &w8}, {"qdq", &w8}, {"qoperator", &w8}, {"dynamic", &w8}, {"qdq", &w4}, {"matmulnbits", &w4},
	} {
		m, err := testmodels.Build(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if tc.params != nil {
			if _, err := quantize.Insert(m, *tc.params); err != nil {
				t.Fatal(err)
			}
		}
		name := tc.format
		if tc.params != nil {
			name += "/W" + string(rune('0'+tc.params.WeightBits))
		}
		set, rep, err := Incremental(m, tc.format, IncrementalOptions{Source: "tiny.onnx", BOS: 2, EOS: 3, Src: src, Tgt: tgt})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		c := rep.Check
		t.Logf("%s: max abs error %.3g (bound %.3g), top-1 %.3f over %d positions", name, c.MaxAbsErr, c.Bound, c.Top1, c.Positions)
		if c.Positions != 42 || c.MaxAbsErr > c.Bound || c.Top1 < c.MinTop1 || set.Config.Qatc.Format != tc.format {
			t.Errorf("%s: report %+v", name, rep)
		}
		ints := 0
		for _, f := range rep.Files {
			ints += f.IntKernels
			if tc.format != "fp32" && f.IntWeights == 0 {
				t.Errorf("%s: %s holds no integer weights", name, f.File)
			}
			// qoperator's encoder runs every product in integers.
			if tc.format == "qoperator" && f.FloatMatMuls > 0 && f.File == seq2seq.EncoderFile {
				t.Errorf("%s: %s runs %d float products", name, f.File, f.FloatMatMuls)
			}
		}
		if tc.format != "fp32" && ints == 0 {
			t.Errorf("%s: no integer kernel ran", name)
		}
		dir := filepath.Join(t.TempDir(), "inc")
		if err := set.Write(dir); err != nil {
			t.Fatal(err)
		}
		for _, f := range seq2seq.Files {
			s, err := ort.OpenFile(filepath.Join(dir, f), nil)
			if err != nil {
				t.Errorf("%s: %s does not open with default options: %v", name, f, err)
				continue
			}
			s.Close()
		}
		l, err := decode.Load(decode.ModelSpec{Path: dir}, seq2seq.DefaultSpecial(), 1)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := decode.Decode(l.Model, [][]int64{{5, 6, 3}, {7, 3}}, decode.Options{MaxExtra: 4}); err != nil {
			t.Errorf("%s: decode: %v", name, err)
		}
		l.Close()
	}
}

// TestIncrementalRefuses checks the errors of models and formats the
// incremental export cannot take.
func TestIncrementalRefuses(t *testing.T) {
	cfg := testmodels.Tiny()
	src, tgt := checkBatchOf(cfg)
	fp32, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	opts := IncrementalOptions{BOS: 2, EOS: 3, Src: src, Tgt: tgt}
	for _, tc := range []struct {
		name, format string
		m            *graph.Model
		want         string
	}{
		{"unknown format", "lightseq", fp32, `unknown incremental format "lightseq"`},
		{"no quantizers", "qoperator", fp32, "no quantizers"},
		{"not a transformer", "fp32", notTransformer(), "recognise transformer"},
	} {
		_, _, err := Incremental(tc.m, tc.format, opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}

// notTransformer is a seq2seq graph without attention.
func notTransformer() *graph.Model {
	m := graph.New("lookup", 17)
	m.AddInput("src_ids", graph.Int64, []int64{-1, -1})
	m.AddInput("tgt_ids", graph.Int64, []int64{-1, -1})
	m.AddInitializer(graph.FloatTensor("next", []int64{8, 8}, make([]float32, 64)))
	m.Op("Gather", "", []string{"next", "tgt_ids"}, []string{"logits"}, graph.AttrInt("axis", 0))
	m.AddOutput("logits", graph.Float, []int64{-1, -1, 8})
	return m
}

// TestIncrementalIntegerCache checks the integer cache of the formats that
// keep the attention operands' quantizers (qdq, qoperator): every cache
// tensor of the files is int8, the config says so, onnxruntime runs
// every product of qoperator's decoder step in integers, and greedy and
// beam decoding (whose beams reorder the cache's rows) give the
// translations of the same export with a float cache; the other formats
// keep float caches.
func TestIncrementalIntegerCache(t *testing.T) {
	cfg := testmodels.Tiny()
	src, tgt := checkBatchOf(cfg)
	w8 := quantize.DefaultParams()
	w4 := w8
	w4.WeightBits, w4.WeightInit, w4.Granularity, w4.BlockSize = 4, quantize.InitMax, quantize.Block, 16
	noV := w8
	noV.Exclude = []string{"v_transposed"}
	var srcs [][]int64
	for i, n := range []int{3, 9, 5, 12, 7, 4, 10, 6} {
		s, _ := testmodels.RandomBatch(cfg, 1, n, 1, int64(40+i))
		srcs = append(srcs, append(s[:n-1], testmodels.EOS))
	}
	for _, tc := range []struct {
		name, format string
		params       quantize.Params
		cache        graph.DataType
	}{
		{"qoperator", "qoperator", w8, graph.Int8},
		{"qdq", "qdq", w8, graph.Int8},
		{"qdq/W4", "qdq", w4, graph.Int8},
		{"dynamic", "dynamic", w8, graph.Float},
		{"matmulnbits", "matmulnbits", w4, graph.Float},
		{"fp32", "fp32", w8, graph.Float},
		// Values without a quantizer: nothing to keep as integers.
		{"qoperator/V float", "qoperator", noV, graph.Float},
	} {
		m, err := testmodels.Build(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := quantize.Insert(m, tc.params); err != nil {
			t.Fatal(err)
		}
		set, rep, err := Incremental(m, tc.format, IncrementalOptions{BOS: 2, EOS: 3, Src: src, Tgt: tgt})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		want := ""
		if tc.cache != graph.Float {
			want = tc.cache.String()
		}
		if set.Config.Qatc.CacheType != want {
			t.Errorf("%s: config cache_type %q, want %q", tc.name, set.Config.Qatc.CacheType, want)
		}
		if note := slices.ContainsFunc(rep.Notes, func(n string) bool { return strings.Contains(n, "cache holds floats") }); note != (want == "" && intCacheFormats[tc.format]) {
			t.Errorf("%s: notes %q", tc.name, rep.Notes)
		}
		for _, g := range []*graph.Model{set.Decoder, set.DecoderWithPast} {
			for _, io := range append(g.Inputs(), g.Outputs()...) {
				if (strings.HasPrefix(io.Name, seq2seq.PastPrefix) || strings.HasPrefix(io.Name, seq2seq.PresentPrefix)) && io.Elem != tc.cache {
					t.Errorf("%s: %s is %s, want %s", tc.name, io.Name, io.Elem, tc.cache)
				}
			}
		}
		if tc.format == "qoperator" && tc.cache != graph.Float {
			if f := rep.Files[2]; f.FloatMatMuls > 0 || f.IntKernels == 0 {
				t.Errorf("%s: %s ran %d integer and %d float products, want all integer", tc.name, f.File, f.IntKernels, f.FloatMatMuls)
			}
		}
		if tc.cache == graph.Float {
			continue
		}
		// The same export with a float cache.
		ref, err := incremental.Build(m, incremental.Options{BOS: 2, EOS: 3})
		if err != nil {
			t.Fatal(err)
		}
		refRep, err := convertDir(&ref.Dir, tc.format, "", false, false)
		if err != nil {
			t.Fatal(err)
		}
		if ref.Config.Qatc.CacheType != "" {
			t.Fatalf("%s: the reference has an integer cache", tc.name)
		}
		// Against the full-sequence model of the format, teacher-forced:
		// qoperator's full model multiplies attention's integers, as
		// the integer cache's step does.
		tm := ref.Model
		if err := checkIncremental(m, checkRoles{tm.SrcInput, tm.TgtInput, tm.LogitsOutput}, &ref.Dir, tc.format, IncrementalOptions{BOS: 2, EOS: 3, Src: src, Tgt: tgt}, refRep); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: max abs logit error against the full-sequence model %.3g with the integer cache, %.3g with a float cache", tc.name, rep.Check.MaxAbsErr, refRep.Check.MaxAbsErr)
		if rep.Check.MaxAbsErr > refRep.Check.MaxAbsErr {
			t.Errorf("%s: the integer cache is further from the full-sequence model (%.3g) than a float cache (%.3g)", tc.name, rep.Check.MaxAbsErr, refRep.Check.MaxAbsErr)
		}
		for _, beam := range []int{1, 4} {
			opts := decode.Options{Beam: beam, MaxExtra: 6, BatchSize: 3, Special: seq2seq.DefaultSpecial()}
			var hyps [2][]decode.Hypothesis
			for i, d := range []*seq2seq.Dir{&set.Dir, &ref.Dir} {
				inc, err := decode.NewIncremental(tc.name, d, nil)
				if err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				if hyps[i], err = decode.Decode(inc, srcs, opts); err != nil {
					t.Fatalf("%s beam %d: %v", tc.name, beam, err)
				}
				inc.Close()
			}
			for j := range srcs {
				a, b := hyps[0][j], hyps[1][j]
				// The same tokens; the scores differ where a product's
				// rounding moved a probability across its 8-bit grid.
				if !slices.Equal(a.IDs, b.IDs) || math.Abs(a.Score-b.Score) > 0.02*float64(len(a.IDs)+1) {
					t.Errorf("%s beam %d sentence %d: integer cache %v (%.4f), float cache %v (%.4f)", tc.name, beam, j, a.IDs, a.Score, b.IDs, b.Score)
				}
			}
		}
	}
}

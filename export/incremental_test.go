package export

import (
	"github.com/qatc/qatc/seq2seq"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qatc/qatc/eval"
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
		l, err := eval.Load(eval.ModelSpec{Path: dir}, seq2seq.DefaultSpecial(), 1)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := eval.Decode(l.Model, [][]int64{{5, 6, 3}, {7, 3}}, eval.DecodeOptions{MaxExtra: 4}); err != nil {
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

package eval

import (
	"bytes"
	"github.com/qatc/qatc/decode"
	"github.com/qatc/qatc/seq2seq"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/testmodels"
)

func saveModel(t *testing.T, m *graph.Model, name string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := m.Save(path); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestEvaluate(t *testing.T) {
	a := saveModel(t, testmodels.Bigram(false), "a.onnx")
	b := saveModel(t, testmodels.Bigram(true), "b.onnx")
	// Sources get EOS appended: [4 3] and [3] read A C (model b: A D); [8 5 3]
	// (first token E) reads F up to the limit, 3 + 2 tokens.
	src := []string{"4", "8 5", ""}
	ref := []string{"4 6", "9 9 9 9 9", "4 6"}
	var progress []string
	rows, err := Evaluate([]decode.ModelSpec{{Name: "fp32", Path: a}, {Path: b}}, src, ref, EvalOptions{
		Decode:   decode.Options{MaxExtra: 2, Beam: 2},
		Threads:  1,
		Progress: func(m string, done, total int) { progress = append(progress, m) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].Model != "fp32" || rows[1].Model != "b.onnx" {
		t.Fatalf("rows %+v", rows)
	}
	if !reflect.DeepEqual(progress, []string{"fp32", "b.onnx"}) {
		t.Errorf("progress calls %v", progress)
	}
	// Beam 2 picks B for [4 3]: B's EOS (0.4) beats A C (0.36) and A D (0.36).
	wantA := []string{"5", "9 9 9 9 9", "5"}
	wantB := []string{"5", "9 9 9 9 9", "5"}
	if !reflect.DeepEqual(rows[0].Hypotheses, wantA) || !reflect.DeepEqual(rows[1].Hypotheses, wantB) {
		t.Errorf("hypotheses %q, %q", rows[0].Hypotheses, rows[1].Hypotheses)
	}

	// Greedy: model a reads A C, b reads A D.
	rows, err = Evaluate([]decode.ModelSpec{{Path: a}, {Path: b}}, src, ref, EvalOptions{Decode: decode.Options{MaxExtra: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"4 6", "9 9 9 9 9", "4 6"}; !reflect.DeepEqual(rows[0].Hypotheses, want) {
		t.Errorf("greedy a: %q, want %q", rows[0].Hypotheses, want)
	}
	if want := []string{"4 7", "9 9 9 9 9", "4 7"}; !reflect.DeepEqual(rows[1].Hypotheses, want) {
		t.Errorf("greedy b: %q, want %q", rows[1].Hypotheses, want)
	}
	if math.Abs(rows[0].BLEU.Score-100) > 1e-9 || rows[0].DeltaBLEU != 0 {
		t.Errorf("model a: BLEU %v, ΔBLEU %v; want 100, 0", rows[0].BLEU.Score, rows[0].DeltaBLEU)
	}
	// Model b by hand: 1-grams 2+5+2 = 9 of which 7 match (the two 7s do
	// not); 2-grams 1+4+1 = 6, 4 match; 3-grams 0+3+0, 3 match; 4-grams
	// 2 of 2. BP 1. BLEU = (7/9·4/6·1·1)^¼·100.
	wantB2 := 100 * math.Pow(7.0/9*4/6, 0.25)
	if math.Abs(rows[1].BLEU.Score-wantB2) > 1e-9 || math.Abs(rows[1].DeltaBLEU-(wantB2-100)) > 1e-9 {
		t.Errorf("model b: BLEU %v ΔBLEU %v, want %v and %v", rows[1].BLEU.Score, rows[1].DeltaBLEU, wantB2, wantB2-100)
	}
	for _, r := range rows {
		fi, _ := os.Stat(r.Path)
		if r.SizeBytes != fi.Size() || r.SizeBytes == 0 {
			t.Errorf("%s: size %d, file has %d bytes", r.Model, r.SizeBytes, fi.Size())
		}
		if r.DecodeSeconds <= 0 || math.Abs(r.MsPerSentence-1000*r.DecodeSeconds/3) > 1e-9 || math.Abs(r.SentencesPerSecond*r.DecodeSeconds-3) > 1e-9 {
			t.Errorf("%s: timing %v s, %v ms/sentence, %v sentences/s", r.Model, r.DecodeSeconds, r.MsPerSentence, r.SentencesPerSecond)
		}
		if r.Roles != (seq2seq.Roles{Src: "src_ids", Tgt: "tgt_ids", Logits: "logits"}) || r.ChrF == nil {
			t.Errorf("%s: roles %+v, chrF %v", r.Model, r.Roles, r.ChrF)
		}
	}

	var buf bytes.Buffer
	if err := WriteEvalTable(&buf, rows); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(buf.String(), "\n")
	if !strings.HasPrefix(lines[0], "model  ") || !strings.Contains(lines[2], "100.00") || !strings.Contains(lines[3], "-") ||
		!strings.Contains(buf.String(), BLEUSignature) {
		t.Errorf("table:\n%s", buf.String())
	}
	t.Logf("\n%s", buf.String())
}

// pieces is a tokenizer of text with a vocabulary of its own, as a
// SentencePiece model has: one id per byte.
type pieces struct{ n int }

func (p pieces) Encode(line string) ([]int64, error) {
	ids := make([]int64, len(line))
	for i := range line {
		ids[i] = int64(line[i]) % int64(p.n)
	}
	return ids, nil
}

func (pieces) Decode(ids []int64) string { return seq2seq.IDs{}.Decode(ids) }
func (p pieces) VocabSize() int          { return p.n }

func TestEvaluateErrors(t *testing.T) {
	a := saveModel(t, testmodels.Bigram(false), "a.onnx")
	cls := graph.New("classifier", 17)
	cls.AddInput("pixels", graph.Float, []int64{-1, 4}, "batch")
	cls.AddOutput("probs", graph.Float, []int64{-1, 4}, "batch")
	cls.Op("Softmax", "", []string{"pixels"}, []string{"probs"})
	c := saveModel(t, cls, "classifier.onnx")
	var spm seq2seq.Tokenizer = pieces{11}
	for _, tc := range []struct {
		name     string
		models   []decode.ModelSpec
		src, ref []string
		opts     EvalOptions
		want     string
	}{
		{"line counts", []decode.ModelSpec{{Path: a}}, []string{"4", "5"}, []string{"4"},
			EvalOptions{SrcName: "test.src", RefName: "test.ref"}, "test.src has 2 lines but test.ref has 1"},
		{"not seq2seq", []decode.ModelSpec{{Path: c}}, []string{"4"}, []string{"4"}, EvalOptions{},
			"classifier.onnx is not a seq2seq model: it needs two int64 [batch, len] inputs and a float [batch, tgt_len, vocab] output, and has inputs pixels float32[batch,4] and outputs probs float32[batch,4]"},
		{"vocabulary", []decode.ModelSpec{{Path: a}}, []string{"ab"}, []string{"ab"},
			EvalOptions{Src: spm, Tgt: spm, TgtTokName: "demo.model"}, "demo.model has 11 pieces but " + a + " has a vocabulary of 10"},
		{"bad id", []decode.ModelSpec{{Path: a}}, []string{"4", "4 x"}, []string{"4", "4"},
			EvalOptions{SrcName: "test.src"}, `test.src:2: field 2 "x" is not a token id`},
		{"missing model", []decode.ModelSpec{{Path: filepath.Join(t.TempDir(), "nope.onnx")}}, []string{"4"}, []string{"4"}, EvalOptions{}, "nope.onnx"},
	} {
		_, err := Evaluate(tc.models, tc.src, tc.ref, tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

func TestBench(t *testing.T) {
	path := saveModel(t, testmodels.Bigram(false), "a.onnx")
	r, err := BenchFile(path, seq2seq.Roles{}, BenchOptions{Batch: 3, SrcLen: 5, TgtLen: 4, Threads: 1, Warmup: 1, Iters: 7})
	if err != nil {
		t.Fatal(err)
	}
	if r.Model != "a.onnx" || r.Batch != 3 || r.Iters != 7 || r.MedianMs <= 0 || r.P90Ms < r.MedianMs ||
		math.Abs(r.SentencesPerSec-3000/r.MedianMs) > 1e-6 || math.Abs(r.TokensPerSec-12000/r.MedianMs) > 1e-6 || r.PeakRSSBytes < 1<<20 {
		t.Errorf("bench result %+v", r)
	}
	if _, err := BenchFile(path, seq2seq.Roles{}, BenchOptions{Batch: 0, SrcLen: 5, TgtLen: 4, Iters: 1}); err == nil {
		t.Error("batch 0 accepted")
	}
	var buf bytes.Buffer
	if err := WriteBenchTable(&buf, []BenchResult{*r}); err != nil || !strings.Contains(buf.String(), "median ms") {
		t.Errorf("bench table %q, %v", buf.String(), err)
	}
}

func TestLatencyStats(t *testing.T) {
	for _, tc := range []struct {
		ms                []float64
		median, p90, mean float64
	}{
		{[]float64{5, 1, 3, 2, 4}, 3, 5, 3},
		{[]float64{4, 1, 3, 2}, 2.5, 4, 2.5},
		{[]float64{7}, 7, 7, 7},
		{[]float64{10, 1, 2, 3, 4, 5, 6, 7, 8, 9}, 5.5, 9, 5.5},
	} {
		m, p, a := latencyStats(tc.ms)
		if m != tc.median || p != tc.p90 || a != tc.mean {
			t.Errorf("latencyStats(%v) = %v, %v, %v; want %v, %v, %v", tc.ms, m, p, a, tc.median, tc.p90, tc.mean)
		}
	}
}

func TestWriteTable(t *testing.T) {
	var buf bytes.Buffer
	err := WriteTable(&buf, []string{"model", "BLEU", "size"}, [][]string{
		{"fp32", "34.10", "9.54 MiB"},
		{"qat-int8", "33.95", "2.40 MiB"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "" +
		"model      BLEU      size\n" +
		"--------  -----  --------\n" +
		"fp32      34.10  9.54 MiB\n" +
		"qat-int8  33.95  2.40 MiB\n"
	if buf.String() != want {
		t.Errorf("got\n%s\nwant\n%s", buf.String(), want)
	}
	if err := WriteTable(&buf, []string{"a"}, [][]string{{"1", "2"}}); err == nil {
		t.Error("ragged row accepted")
	}
}

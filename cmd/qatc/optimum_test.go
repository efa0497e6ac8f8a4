package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/inspect"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/seq2seq"
)

// sameLines counts the lines two outputs share at the same positions.
func sameLines(a, b string) (same, n int) {
	la, lb := strings.Split(strings.TrimSpace(a), "\n"), strings.Split(strings.TrimSpace(b), "\n")
	for i := range min(len(la), len(lb)) {
		if la[i] == lb[i] {
			same++
		}
	}
	return same, max(len(la), len(lb))
}

// TestOptimumDirectories takes the Marian-like fixture, as separate
// decoders and as a merged one, through the pipeline: the fp32 directory
// translates (greedily, with its cache) exactly as PyTorch's full model;
// insert with calibration, 20 steps of finetune and a qoperator export
// write the same layout, and the export translates ≥ 99% of the test
// sentences as the QAT directory does; inspect lists each decoder
// quantizer once, applied by both decoders with one clip; compare, eval
// and bench run the directories with their cache.
func TestOptimumDirectories(t *testing.T) {
	src := fixture.Path(t, "testdata/optimum/marian/test.src")
	ref := string(fixture.Read(t, "testdata/optimum/marian/test.greedy"))
	trainSrc, trainTgt := fixture.Path(t, "testdata/optimum/marian/train.src"), fixture.Path(t, "testdata/optimum/marian/train.tgt")
	for _, tc := range []struct {
		name, dir string
		files     []string
		decoders  []string // the names inspect gives the two decoders
	}{
		{"separate", "testdata/optimum/marian", seq2seq.Files, []string{seq2seq.DecoderFile, seq2seq.DecoderWithPastFile}},
		{"merged", "testdata/optimum/marian_merged", []string{seq2seq.EncoderFile, seq2seq.MergedFile},
			[]string{seq2seq.MergedFile + " (no past)", seq2seq.MergedFile + " (with past)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fp32 := fixture.Path(t, tc.dir)
			if got := mustQatc(t, "translate", fp32, "--src", src); got != ref {
				same, n := sameLines(got, ref)
				t.Errorf("the fp32 directory translates %d of %d lines as PyTorch's full model", same, n)
			}
			dir := t.TempDir()
			qat, tuned, int8 := filepath.Join(dir, "qat"), filepath.Join(dir, "tuned"), filepath.Join(dir, "int8")
			mustQatc(t, "insert", fp32, "-o", qat, "--calib-src", trainSrc, "--calib-tgt", trainTgt)
			mustQatc(t, "finetune", qat, "-o", tuned, "--src", trainSrc, "--tgt", trainTgt, "--steps", "20", "--batch-tokens", "1024", "--loss", "ce+kd")
			out := mustQatc(t, "export", tuned, "-o", int8, "--format", "qoperator")
			if !strings.Contains(out, "top-1 agreement 100.00%") {
				t.Errorf("export: %s", out)
			}
			for _, d := range []string{qat, tuned, int8} {
				lay, err := seq2seq.Stat(d)
				if err != nil {
					t.Fatal(err)
				}
				if got := lay.Files(); !slices.Equal(got, tc.files) {
					t.Errorf("%s holds %v, want %v", d, got, tc.files)
				}
			}
			a, b := mustQatc(t, "translate", tuned, "--src", src), mustQatc(t, "translate", int8, "--src", src)
			same, n := sameLines(a, b)
			if n != 200 || float64(same) < 0.99*float64(n) {
				t.Errorf("the qoperator directory translates %d of %d lines as the QAT directory (want ≥ 99%%)", same, n)
			}
			t.Logf("qoperator vs QAT directory: %d/%d lines the same", same, n)

			// One quantizer per logical tensor across the files.
			var rep inspect.DirSummary
			if err := json.Unmarshal([]byte(mustQatc(t, "inspect", tuned, "--json")), &rep); err != nil {
				t.Fatal(err)
			}
			both, all := 0, 0
			for _, r := range rep.Quantizers {
				switch {
				case slices.Equal(r.Files, tc.decoders):
					both++
				case slices.Equal(r.Files, append([]string{seq2seq.EncoderFile}, tc.decoders...)):
					all++ // the table encoder and decoders share
				case slices.Contains(r.Files, tc.decoders[1]):
					t.Errorf("quantizer on %s applies in %v: the decoder with past has one the decoder lacks", r.Tensor, r.Files)
				}
			}
			if len(rep.Quantizers) != 80 || both < 40 || all != 1 {
				t.Errorf("inspect: %d quantizers, %d of them in both decoders, %d in every file", len(rep.Quantizers), both, all)
			}
			d, err := seq2seq.ReadDir(tuned)
			if err != nil {
				t.Fatal(err)
			}
			clips := 0
			for _, c := range d.Decoder.Graph().Initializer {
				if w := d.DecoderWithPast.Initializer(c.Name); w != nil && strings.HasSuffix(c.Name, "_clip_max") {
					a, _ := graph.Floats(c)
					b, _ := graph.Floats(w)
					if !slices.Equal(a, b) {
						t.Errorf("clip %s differs between the decoders", c.Name)
					}
					clips++
				}
			}
			if clips < 40 {
				t.Errorf("the decoders share %d clips", clips)
			}

			if tc.name == "merged" {
				// Every other format, in the same layout.
				for _, f := range []string{"fp32", "qdq", "dynamic", "matmulnbits"} {
					o := filepath.Join(dir, f)
					mustQatc(t, "export", tuned, "-o", o, "--format", f)
					if lay, err := seq2seq.Stat(o); err != nil || !slices.Equal(lay.Files(), tc.files) {
						t.Errorf("%s export: %v %v", f, lay, err)
					}
					if got := mustQatc(t, "translate", o, "--src", src); strings.Count(got, "\n") != 200 {
						t.Errorf("%s export: %d translations", f, strings.Count(got, "\n"))
					}
				}
			}
			if out := mustQatc(t, "compare", tuned, int8); !strings.Contains(out, "logits") || !strings.Contains(out, "100.00%") {
				t.Errorf("compare: %s", out)
			}
			if out := mustQatc(t, "eval", fp32, int8, "--src", src, "--ref", fixture.Path(t, "testdata/optimum/marian/test.tgt")); !strings.Contains(out, "int8") {
				t.Errorf("eval: %s", out)
			}
			if out := mustQatc(t, "bench", int8, "--src", src, "--rounds", "1"); !strings.Contains(out, "int8") {
				t.Errorf("bench: %s", out)
			}
		})
	}
}

// TestOptimumT5 takes the T5-like fixture (relative position bias, RMS
// norms, a decoder with past that reads the encoder's states) through
// decoding, insert, finetune and a qoperator export; LightSeq's file, which
// holds no such model, is refused with the recogniser's reason.
func TestOptimumT5(t *testing.T) {
	fp32 := fixture.Path(t, "testdata/optimum/t5")
	src := fixture.Path(t, "testdata/optimum/t5/test.src")
	if got, ref := mustQatc(t, "translate", fp32, "--src", src), string(fixture.Read(t, "testdata/optimum/t5/test.greedy")); got != ref {
		same, n := sameLines(got, ref)
		t.Errorf("the fp32 directory translates %d of %d lines as PyTorch's full model", same, n)
	}
	dir := t.TempDir()
	qat, tuned, int8 := filepath.Join(dir, "qat"), filepath.Join(dir, "tuned"), filepath.Join(dir, "int8")
	train := fixture.Path(t, "testdata/optimum/t5/train.src")
	mustQatc(t, "insert", fp32, "-o", qat, "--calib-src", train, "--calib-tgt", fixture.Path(t, "testdata/optimum/t5/train.tgt"))
	mustQatc(t, "finetune", qat, "-o", tuned, "--src", train, "--tgt", fixture.Path(t, "testdata/optimum/t5/train.tgt"), "--steps", "5", "--batch-tokens", "1024")
	mustQatc(t, "export", tuned, "-o", int8, "--format", "qoperator")
	a, b := mustQatc(t, "translate", tuned, "--src", src), mustQatc(t, "translate", int8, "--src", src)
	if same, n := sameLines(a, b); float64(same) < 0.99*float64(n) {
		t.Errorf("the qoperator directory translates %d of %d lines as the QAT directory", same, n)
	}
	code, _, errOut := qatc(t, "export", tuned, "-o", filepath.Join(dir, "t5.pb"), "--format", "lightseq")
	wantError(t, code, errOut, 1, "recognise transformer")
}

// TestOptimumBadInputs checks the one-line refusals of directories that
// are not one model, and of outputs qatc may not replace; nothing is
// written.
func TestOptimumBadInputs(t *testing.T) {
	marian := fixture.Path(t, "testdata/optimum/marian")
	src := fixture.Path(t, "testdata/optimum/marian/test.src")
	dir := t.TempDir()
	noEncoder := filepath.Join(dir, "noenc")
	os.Mkdir(noEncoder, 0o755)
	for _, f := range []string{seq2seq.DecoderFile, seq2seq.DecoderWithPastFile, seq2seq.ConfigFile} {
		b, err := os.ReadFile(filepath.Join(marian, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(noEncoder, f), b, 0o644)
	}
	mixed := filepath.Join(dir, "mixed")
	os.Mkdir(mixed, 0o755)
	for _, f := range []string{seq2seq.EncoderFile, seq2seq.DecoderFile, seq2seq.ConfigFile} {
		b, _ := os.ReadFile(filepath.Join(marian, f))
		os.WriteFile(filepath.Join(mixed, f), b, 0o644)
	}
	b, _ := os.ReadFile(filepath.Join(fixture.Path(t, "testdata/optimum/t5"), seq2seq.DecoderWithPastFile))
	os.WriteFile(filepath.Join(mixed, seq2seq.DecoderWithPastFile), b, 0o644)
	notOurs := filepath.Join(dir, "notours")
	os.Mkdir(notOurs, 0o755)
	os.WriteFile(filepath.Join(notOurs, "notes.txt"), []byte("mine"), 0o644)
	out := filepath.Join(dir, "out")
	for _, tc := range []struct {
		args    []string
		code    int
		mention string
	}{
		{[]string{"translate", noEncoder, "--src", src}, 1, "encoder_model.onnx is missing"},
		{[]string{"insert", noEncoder, "-o", out}, 1, "encoder_model.onnx is missing"},
		{[]string{"insert", mixed, "-o", out}, 1, "different models"},
		{[]string{"translate", mixed, "--src", src}, 1, "decoder_with_past_model.onnx"},
		{[]string{"insert", marian, "-o", notOurs}, 1, "was not written by qatc"},
		{[]string{"insert", marian, "-o", marian}, 2, "would be replaced"},
	} {
		code, _, errOut := qatc(t, tc.args...)
		wantError(t, code, errOut, tc.code, tc.mention)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a refused command wrote its output")
	}
	if b, _ := os.ReadFile(filepath.Join(notOurs, "notes.txt")); string(b) != "mine" {
		t.Error("the refused directory was changed")
	}
}

package eval

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/qatc/qatc/decode"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/safeio"
	"github.com/qatc/qatc/seq2seq"
)

// The commands' entry points: eval, bench and translate over files.

// ReadLines reads a text file's lines, decoded and checked as UTF-8
// (safeio.ReadLines).
func ReadLines(path string) ([]string, error) {
	var lines []string
	err := safeio.ReadLines(path, func(_ int, line string) error {
		lines = append(lines, line)
		return nil
	})
	return lines, err
}

// HypFile is the file EvaluateFiles writes a model's translations to in
// dir: the model's name without .onnx or .pb (a directory keeps its whole
// name).
func HypFile(dir, model string) string {
	base := filepath.Base(model)
	if ext := filepath.Ext(base); ext == ".onnx" || ext == ".pb" {
		base = strings.TrimSuffix(base, ext)
	}
	return filepath.Join(dir, base+".hyp")
}

// EvaluateFiles is Evaluate on the sentences of the files src and ref;
// with hypDir it also writes each model's translations to HypFile(hypDir,
// model).
func EvaluateFiles(models []decode.ModelSpec, src, ref, hypDir string, opts EvalOptions) ([]Row, error) {
	srcLines, err := ReadLines(src)
	if err != nil {
		return nil, err
	}
	refLines, err := ReadLines(ref)
	if err != nil {
		return nil, err
	}
	opts.SrcName, opts.RefName = src, ref
	rows, err := Evaluate(models, srcLines, refLines, opts)
	if err != nil || hypDir == "" {
		return rows, err
	}
	if err := os.MkdirAll(hypDir, 0o755); err != nil {
		return nil, fmt.Errorf("--hyp-dir: %w", err)
	}
	for _, r := range rows {
		if err := safeio.WriteFile(HypFile(hypDir, r.Path), []byte(strings.Join(r.Hypotheses, "\n")+"\n")); err != nil {
			return nil, fmt.Errorf("--hyp-dir: %w", err)
		}
	}
	return rows, nil
}

// TranslateFile is Translate from the file src (standard input in when
// "") to the file out (w when ""), written whole once every sentence is
// translated.
func TranslateFile(path, src, out string, in io.Reader, w io.Writer, opts TranslateOptions) (*TranslateReport, error) {
	if src != "" {
		f, err := os.Open(src)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		in, opts.SrcName = f, src
	}
	var buf bytes.Buffer
	if out != "" {
		w = &buf
	}
	rep, err := Translate(path, in, w, opts)
	if err != nil || out == "" {
		return rep, err
	}
	return rep, safeio.WriteFile(out, buf.Bytes())
}

// BenchConfig configures BenchFiles.
type BenchConfig struct {
	// Roles and Rerun are ModelSpec's.
	Roles seq2seq.Roles
	Rerun bool
	// Bench times a synthetic batch; without Src.
	Bench BenchOptions
	// Src, when set, decodes its sentences instead (tokenized with
	// Tokenizer, nil: ids), Rounds times per model, with Decode.
	Src       string
	Tokenizer seq2seq.Tokenizer
	Decode    decode.Options
	Rounds    int
	// Note, when set, is told why a model decodes without a cache.
	Note func(path, note string)
}

// BenchReport is what BenchFiles measured: Steps for a synthetic batch,
// Decodes for the sentences of a file.
type BenchReport struct {
	Steps   []*BenchResult
	Decodes []DecodeBench
	// Sentences and TgtLen are what one round decodes.
	Sentences, TgtLen int
}

// BenchFiles times decoding with the models at paths, interleaved: the
// encoder, one step and a batch of cfg.Bench's sizes, or with cfg.Src the
// sentences of a file.
func BenchFiles(paths []string, cfg BenchConfig) (*BenchReport, error) {
	batch := ort.Factor{Name: "--batch", Value: int64(cfg.Bench.Batch)}
	for _, l := range []ort.Factor{{Name: "--src-len", Value: int64(cfg.Bench.SrcLen)}, {Name: "--tgt-len", Value: int64(cfg.Bench.TgtLen)}} {
		if err := ort.CheckSize("token ids", 8, batch, l); err != nil {
			return nil, err
		}
	}
	var models []BenchModel
	for _, path := range paths {
		l, err := decode.Load(decode.ModelSpec{Path: path, Roles: cfg.Roles, Rerun: cfg.Rerun}, cfg.Decode.Special, 1)
		if err != nil {
			return nil, err
		}
		defer l.Close()
		if l.Note != "" && cfg.Note != nil {
			cfg.Note(path, l.Note)
		}
		if err := ort.CheckSize("logits", 4, batch, ort.Factor{Name: "--tgt-len", Value: int64(cfg.Bench.TgtLen)}, ort.Factor{Name: "vocabulary", Value: int64(l.Vocab)}); err != nil {
			return nil, err
		}
		models = append(models, BenchModel{Name: filepath.Base(path), Model: l.Model, Vocab: l.Vocab, Cached: l.Cached})
	}
	rep := &BenchReport{TgtLen: cfg.Bench.TgtLen}
	if cfg.Src == "" {
		var err error
		rep.Steps, err = BenchAll(models, cfg.Bench)
		return rep, err
	}
	lines, err := ReadLines(cfg.Src)
	if err != nil {
		return nil, err
	}
	srcs, err := seq2seq.EncodeSources(lines, seq2seq.OrIDs(cfg.Tokenizer), cfg.Src, cfg.Decode.Special, false)
	if err != nil {
		return nil, err
	}
	opts := cfg.Decode
	for i, path := range paths {
		if err := CheckSources(path, cfg.Roles, srcs, models[i].Vocab, cfg.Src, &opts); err != nil {
			return nil, err
		}
	}
	opts.Workers = decode.Threads(cfg.Bench.Threads)
	rep.Sentences = len(srcs)
	rep.Decodes, err = BenchDecode(models, srcs, opts, cfg.Rounds)
	return rep, err
}

// MarshalJSON writes the measurements as qatc bench --json prints them.
func (r *BenchReport) MarshalJSON() ([]byte, error) {
	if r.Decodes != nil {
		return json.Marshal(r.Decodes)
	}
	return json.Marshal(r.Steps)
}

// Write prints the measurements as a table, with each model's speed-up
// against the first.
func (r *BenchReport) Write(w io.Writer) error {
	if r.Decodes != nil {
		h, cells := DecodeBenchTable(r.Decodes)
		if err := WriteTable(w, h, cells); err != nil {
			return err
		}
		_, err := fmt.Fprintf(w, "each round decodes the %d sentences with every model in turn; speed-up is against %s\n", r.Sentences, r.Decodes[0].Model)
		return err
	}
	rows := make([]BenchResult, len(r.Steps))
	for i, s := range r.Steps {
		rows[i] = *s
	}
	h, cells := BenchTable(rows)
	h = append(h, "speed-up")
	for i := range cells {
		cells[i] = append(cells[i], fmt.Sprintf("%.2fx", r.Steps[0].MedianMs/r.Steps[i].MedianMs))
	}
	if err := WriteTable(w, h, cells); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "each round decodes %d tokens for the batch with every model in turn; speed-up is against %s; peak RSS is the whole process's (all models loaded)\n", r.TgtLen, r.Steps[0].Model)
	return err
}

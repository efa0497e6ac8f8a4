package eval

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/advancedclimatesystems/gonnx/onnx"
	"github.com/qatc/qatc/runtime"
	"google.golang.org/protobuf/proto"
)

// ModelSpec names a model to evaluate.
type ModelSpec struct {
	// Name labels the model's row; empty means the file's base name.
	Name string
	// Path is the ONNX file.
	Path string
	// Roles names the model's inputs and output; empty fields are found
	// by shape (FindRoles).
	Roles Roles
}

// EvalOptions configure Evaluate.
type EvalOptions struct {
	Decode DecodeOptions
	// Threads is onnxruntime's intra-op thread count (0: its default).
	Threads int
	// Src and Tgt tokenize the source lines and detokenize the
	// translations; nil means the lines are token ids (IDs).
	Src, Tgt Tokenizer
	// SrcName, RefName and TgtTokName name the source and reference
	// files and the target tokenizer's model in errors.
	SrcName, RefName, TgtTokName string
	// NoSrcEOS feeds sources without the EOS that qatc's training
	// appends (set it for models trained on sources without EOS).
	NoSrcEOS bool
	// Progress, when set, is called as each model decodes.
	Progress func(model string, done, total int)
}

// Row is one model's evaluation.
type Row struct {
	Model string `json:"model"`
	Path  string `json:"path"`
	Roles Roles  `json:"roles"`
	BLEU  *BLEU  `json:"bleu"`
	ChrF  *ChrF  `json:"chrf"`
	// DeltaBLEU is BLEU.Score minus the first model's.
	DeltaBLEU float64 `json:"delta_bleu"`
	// SizeBytes is the model file plus its external-data files.
	SizeBytes int64 `json:"size_bytes"`
	// DecodeSeconds is the wall time of decoding all sentences.
	DecodeSeconds      float64 `json:"decode_seconds"`
	MsPerSentence      float64 `json:"ms_per_sentence"`
	SentencesPerSecond float64 `json:"sentences_per_second"`
	// Hypotheses are the detokenized translations, one per source line.
	Hypotheses []string `json:"hypotheses,omitempty"`
}

// Evaluate translates src with each model, scores the translations against
// ref, and times the decoding. Sources are tokenized once and fed with EOS
// appended (unless opts.NoSrcEOS); a one-sentence decode before timing
// lets onnxruntime allocate its buffers.
func Evaluate(models []ModelSpec, src, ref []string, opts EvalOptions) ([]Row, error) {
	srcName, refName := nameOr(opts.SrcName, "the source"), nameOr(opts.RefName, "the reference")
	if len(src) != len(ref) {
		return nil, fmt.Errorf("%s has %d lines but %s has %d: give one reference line per source line", srcName, len(src), refName, len(ref))
	}
	if len(src) == 0 {
		return nil, fmt.Errorf("%s is empty: nothing to translate", srcName)
	}
	if len(models) == 0 {
		return nil, fmt.Errorf("no model to evaluate")
	}
	dopts, err := opts.Decode.withDefaults()
	if err != nil {
		return nil, err
	}
	stok, ttok := opts.Src, opts.Tgt
	if stok == nil {
		stok = IDs{}
	}
	if ttok == nil {
		ttok = IDs{}
	}
	srcIDs := make([][]int64, len(src))
	for i, line := range src {
		ids, err := stok.Encode(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %v", srcName, i+1, err)
		}
		if !opts.NoSrcEOS {
			ids = append(ids, dopts.Special.EOS)
		}
		srcIDs[i] = ids
	}

	var rows []Row
	for _, spec := range models {
		row, err := evaluateOne(spec, srcIDs, ref, ttok, opts, dopts)
		if err != nil {
			return nil, err
		}
		row.DeltaBLEU = row.BLEU.Score
		if len(rows) > 0 {
			row.DeltaBLEU -= rows[0].BLEU.Score
		} else {
			row.DeltaBLEU = 0
		}
		rows = append(rows, *row)
	}
	return rows, nil
}

func nameOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func evaluateOne(spec ModelSpec, srcIDs [][]int64, ref []string, ttok Tokenizer, opts EvalOptions, dopts DecodeOptions) (*Row, error) {
	name := spec.Name
	if name == "" {
		name = filepath.Base(spec.Path)
	}
	size, err := ModelSize(spec.Path)
	if err != nil {
		return nil, err
	}
	sess, err := runtime.OpenFile(spec.Path, &runtime.Options{Threads: opts.Threads})
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	m, err := NewSeq2Seq(spec.Path, sess, spec.Roles)
	if err != nil {
		return nil, err
	}
	vocab, err := m.Vocab(dopts.Special)
	if err != nil {
		return nil, err
	}
	if err := CheckVocab(ttok, nameOr(opts.TgtTokName, "the SentencePiece model"), vocab, spec.Path); err != nil {
		return nil, err
	}

	warm := dopts
	warm.Progress = nil
	if _, err := Decode(m, srcIDs[:1], warm); err != nil {
		return nil, err
	}
	if opts.Progress != nil {
		dopts.Progress = func(done, total int) { opts.Progress(name, done, total) }
	}
	start := time.Now()
	hyps, err := Decode(m, srcIDs, dopts)
	if err != nil {
		return nil, err
	}
	secs := time.Since(start).Seconds()

	text := make([]string, len(hyps))
	for i, h := range hyps {
		text[i] = ttok.Decode(h.IDs)
	}
	bleu, err := CorpusBLEU(text, ref)
	if err != nil {
		return nil, err
	}
	chrf, err := CorpusChrF(text, ref)
	if err != nil {
		return nil, err
	}
	n := float64(len(hyps))
	return &Row{
		Model: name, Path: spec.Path, Roles: m.Roles,
		BLEU: bleu, ChrF: chrf, SizeBytes: size,
		DecodeSeconds: secs, MsPerSentence: 1000 * secs / n, SentencesPerSecond: n / secs,
		Hypotheses: text,
	}, nil
}

// ModelSize returns the bytes an ONNX model takes on disk: the file and
// the distinct external-data files its initializers name.
func ModelSize(path string) (int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("model: %v", err)
	}
	var p onnx.ModelProto
	if err := proto.Unmarshal(data, &p); err != nil || p.Graph == nil {
		return 0, fmt.Errorf("%s is not an ONNX model", path)
	}
	size := int64(len(data))
	seen := map[string]bool{}
	for _, t := range p.Graph.Initializer {
		if t.DataLocation != onnx.TensorProto_EXTERNAL {
			continue
		}
		for _, e := range t.ExternalData {
			if e.Key != "location" || seen[e.Value] {
				continue
			}
			seen[e.Value] = true
			fi, err := os.Stat(filepath.Join(filepath.Dir(path), filepath.Clean("/" + e.Value)[1:]))
			if err != nil {
				return 0, fmt.Errorf("%s: external data of %q: %v", path, t.Name, err)
			}
			size += fi.Size()
		}
	}
	return size, nil
}

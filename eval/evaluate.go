package eval

import (
	"fmt"
	"github.com/qatc/qatc/decode"
	"github.com/qatc/qatc/seq2seq"
	"path/filepath"
	"time"

	"github.com/qatc/qatc/ort"
)

// EvalOptions configure Evaluate.
type EvalOptions struct {
	// Decode configures decoding; Decode.Workers is set from Threads.
	Decode decode.Options
	// Threads is the number of batches decoded at once (each session runs
	// on one thread; 0: one per CPU), see Threads.
	Threads int
	// Src and Tgt tokenize the source lines and detokenize the
	// translations; nil means the lines are token ids (IDs).
	Src, Tgt seq2seq.Tokenizer
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
	Model string        `json:"model"`
	Path  string        `json:"path"`
	Roles seq2seq.Roles `json:"roles"`
	BLEU  *BLEU         `json:"bleu"`
	ChrF  *ChrF         `json:"chrf"`
	// DeltaBLEU is BLEU.Score minus the first model's.
	DeltaBLEU float64 `json:"delta_bleu"`
	// Agreement is the share of token positions where this model's
	// translations equal the first model's (position by position, over
	// the longer of each pair).
	Agreement float64 `json:"token_agreement"`
	// SizeBytes is the model file plus its external-data files.
	SizeBytes int64 `json:"size_bytes"`
	// DecodeSeconds is the wall time of decoding all sentences.
	DecodeSeconds      float64 `json:"decode_seconds"`
	MsPerSentence      float64 `json:"ms_per_sentence"`
	SentencesPerSecond float64 `json:"sentences_per_second"`
	// Cached reports decoding with a key/value cache; Note says why a
	// model decoded without one.
	Cached bool   `json:"cached"`
	Note   string `json:"note,omitempty"`
	// Hypotheses are the detokenized translations, one per source line.
	Hypotheses []string `json:"hypotheses,omitempty"`

	ids [][]int64
}

// Evaluate translates src with each model, scores the translations against
// ref, and times the decoding. Sources are tokenized once and fed with EOS
// appended (unless opts.NoSrcEOS); a one-sentence decode before timing
// lets onnxruntime allocate its buffers.
func Evaluate(models []decode.ModelSpec, src, ref []string, opts EvalOptions) ([]Row, error) {
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
	dopts, err := opts.Decode.WithDefaults()
	if err != nil {
		return nil, err
	}
	stok, ttok := seq2seq.OrIDs(opts.Src), seq2seq.OrIDs(opts.Tgt)
	srcIDs, err := seq2seq.EncodeSources(src, stok, srcName, dopts.Special, opts.NoSrcEOS)
	if err != nil {
		return nil, err
	}

	var rows []Row
	for _, spec := range models {
		row, err := evaluateOne(spec, srcIDs, ref, ttok, opts, dopts)
		if err != nil {
			return nil, err
		}
		row.DeltaBLEU, row.Agreement = 0, 1
		if len(rows) > 0 {
			row.DeltaBLEU = row.BLEU.Score - rows[0].BLEU.Score
			row.Agreement = TokenAgreement(rows[0].ids, row.ids)
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

func evaluateOne(spec decode.ModelSpec, srcIDs [][]int64, ref []string, ttok seq2seq.Tokenizer, opts EvalOptions, dopts decode.Options) (*Row, error) {
	name := spec.Name
	if name == "" {
		name = filepath.Base(spec.Path)
	}
	l, err := decode.Load(spec, dopts.Special, 1)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	m, roles, vocab, size := l.Model, l.Roles, l.Vocab, l.SizeBytes
	dopts.Workers = decode.Threads(opts.Threads)
	if err := seq2seq.CheckVocab(ttok, nameOr(opts.TgtTokName, "the SentencePiece model"), vocab, spec.Path); err != nil {
		return nil, err
	}
	if spec.Model == nil {
		given := spec.Roles
		if given.Src == "" {
			given = roles
		}
		if err := CheckSources(spec.Path, given, srcIDs, vocab, nameOr(opts.SrcName, "the source"), &dopts); err != nil {
			return nil, err
		}
	}

	warm := dopts
	warm.Progress = nil
	if _, err := decode.Decode(m, srcIDs[:1], warm); err != nil {
		return nil, err
	}
	if opts.Progress != nil {
		dopts.Progress = func(done, total int) { opts.Progress(name, done, total) }
	}
	start := time.Now()
	hyps, err := decode.Decode(m, srcIDs, dopts)
	if err != nil {
		return nil, err
	}
	secs := time.Since(start).Seconds()

	text := make([]string, len(hyps))
	ids := make([][]int64, len(hyps))
	for i, h := range hyps {
		text[i] = ttok.Decode(h.IDs)
		ids[i] = h.IDs
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
		Model: name, Path: spec.Path, Roles: roles,
		BLEU: bleu, ChrF: chrf, SizeBytes: size,
		DecodeSeconds: secs, MsPerSentence: 1000 * secs / n, SentencesPerSecond: n / secs,
		Cached: l.Cached, Note: l.Note, Hypotheses: text, ids: ids,
	}, nil
}

// CheckSources checks the sources against the ONNX model at path before
// decoding: every id inside its vocabulary, every sentence within its
// source positions (named by file and line, not left to onnxruntime), and
// the logits of a decoding batch within ort.MemoryLimit. Translations are
// held to the target positions.
func CheckSources(path string, roles seq2seq.Roles, srcIDs [][]int64, vocab int, srcName string, dopts *decode.Options) error {
	srcPos, tgtPos := decode.Positions(path, roles)
	longest := 0
	for i, ids := range srcIDs {
		for _, id := range ids {
			if id < 0 || id >= int64(vocab) {
				return fmt.Errorf("%s:%d: token id %d is beyond the vocabulary of %d tokens of %s; the data does not match the model", srcName, i+1, id, vocab, path)
			}
		}
		if srcPos > 0 && len(ids) > srcPos {
			return fmt.Errorf("%s:%d: the sentence has %d tokens (EOS included) but %s has %d source positions; shorten or drop it", srcName, i+1, len(ids), path, srcPos)
		}
		longest = max(longest, len(ids))
	}
	if tgtPos > 0 && (dopts.MaxLen == 0 || dopts.MaxLen > tgtPos) {
		dopts.MaxLen = tgtPos
	}
	steps := longest + dopts.MaxExtra
	if dopts.MaxLen > 0 {
		steps = min(steps, dopts.MaxLen)
	}
	return ort.CheckSize("decoding logits", 4, ort.Factor{Name: "--batch", Value: int64(min(dopts.BatchSize, len(srcIDs)))},
		ort.Factor{Name: "--beam", Value: int64(max(dopts.Beam, 1))}, ort.Factor{Name: "target positions", Value: int64(steps)},
		ort.Factor{Name: "vocabulary", Value: int64(vocab)})
}

// TokenAgreement is the share of token positions at which the
// translations b equal a, position by position over the longer of each
// pair: 1 when they are identical, lower for every substituted, missing
// or extra token.
func TokenAgreement(a, b [][]int64) float64 {
	same, total := 0, 0
	for i := range a {
		n := max(len(a[i]), len(b[i]))
		total += n
		for j := range min(len(a[i]), len(b[i])) {
			if a[i][j] == b[i][j] {
				same++
			}
		}
	}
	if total == 0 {
		return 1
	}
	return float64(same) / float64(total)
}

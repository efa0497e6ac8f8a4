package eval

import (
	"bufio"
	"fmt"
	"github.com/qatc/qatc/decode"
	"github.com/qatc/qatc/seq2seq"
	"io"
	"strings"

	"github.com/qatc/qatc/passes/transformer"
	"github.com/qatc/qatc/safeio"
)

// TranslateOptions configure Translate.
type TranslateOptions struct {
	// Decode configures decoding; Decode.Workers is set from Threads.
	Decode decode.Options
	// Threads is the number of batches decoded at once (see Threads).
	Threads int
	// Src and Tgt tokenize the source lines and detokenize the
	// translations; nil means the lines are token ids (IDs).
	Src, Tgt seq2seq.Tokenizer
	// SrcName names the input in errors; TgtTokName the target
	// tokenizer's model.
	SrcName, TgtTokName string
	// NoSrcEOS feeds sources without the EOS qatc's training appends.
	NoSrcEOS bool
	// Rerun, Roles and Map are ModelSpec's; MapFile, when set, is read
	// into Map (transformer.ReadMap).
	Rerun   bool
	Roles   seq2seq.Roles
	Map     map[string]string
	MapFile string
	// Progress, when set, is called after each batch.
	Progress func(done, total int)
}

// TranslateReport says how Translate decoded.
type TranslateReport struct {
	Sentences int
	Cached    bool
	// Note says why a full-sequence model decoded without a cache.
	Note string
}

// Translate reads source sentences from r, one a line, translates them
// with the model at path (see Load) and writes one translation a line to
// w, in the input's order. Every line is read and checked before any is
// decoded, and nothing is written unless all of them are translated.
func Translate(path string, r io.Reader, w io.Writer, opts TranslateOptions) (*TranslateReport, error) {
	name := nameOr(opts.SrcName, "the source")
	dopts, err := opts.Decode.WithDefaults()
	if err != nil {
		return nil, err
	}
	dopts.Workers = decode.Threads(opts.Threads)
	dopts.Progress = opts.Progress
	if opts.MapFile != "" {
		if opts.Map, err = transformer.ReadMap(opts.MapFile); err != nil {
			return nil, err
		}
	}
	stok, ttok := seq2seq.OrIDs(opts.Src), seq2seq.OrIDs(opts.Tgt)
	var lines []string
	err = safeio.ScanLines(r, name, func(n int, line string) error {
		if strings.TrimSpace(line) == "" {
			return fmt.Errorf("%s:%d: empty line: there is nothing to translate; give one sentence per line", name, n)
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		return nil, err
	}
	srcs, err := seq2seq.EncodeSources(lines, stok, name, dopts.Special, opts.NoSrcEOS)
	if err != nil {
		return nil, err
	}
	l, err := decode.Load(decode.ModelSpec{Path: path, Roles: opts.Roles, Rerun: opts.Rerun, Map: opts.Map}, dopts.Special, 1)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	if err := seq2seq.CheckVocab(ttok, nameOr(opts.TgtTokName, "the SentencePiece model"), l.Vocab, path); err != nil {
		return nil, err
	}
	given := opts.Roles
	if given.Src == "" {
		given = l.Roles
	}
	if err := CheckSources(path, given, srcs, l.Vocab, name, &dopts); err != nil {
		return nil, err
	}
	rep := &TranslateReport{Sentences: len(srcs), Cached: l.Cached, Note: l.Note}
	if len(srcs) == 0 {
		return rep, nil
	}
	hyps, err := decode.Decode(l.Model, srcs, dopts)
	if err != nil {
		return nil, err
	}
	bw := bufio.NewWriter(w)
	for _, h := range hyps {
		bw.WriteString(ttok.Decode(h.IDs))
		bw.WriteByte('\n')
	}
	return rep, bw.Flush()
}

package seq2seq

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/qatc/qatc/safeio"
)

// Example is one sentence pair, ready for teacher forcing.
type Example struct {
	// Line is the pair's 1-based line number in both files.
	Line int
	// Src is the source sentence followed by EOS.
	Src []int64
	// Tgt is the target sentence followed by EOS: the labels. The decoder
	// reads BOS followed by Tgt without its last token.
	Tgt []int64
}

// Dataset is a parallel corpus read by ReadParallel.
type Dataset struct {
	// SrcPath and TgtPath are the files it was read from.
	SrcPath, TgtPath string
	Examples         []Example
	// Dropped counts the pairs MaxLen filtered out.
	Dropped int
	Special Special
}

// DataOptions configure ReadParallel.
type DataOptions struct {
	// Tokenizer encodes each line; nil reads space-separated ids.
	Tokenizer Tokenizer
	// Vocab is the model's vocabulary size: every id must be below it. 0
	// takes the tokenizer's size.
	Vocab int
	// Special are the pad, bos and eos ids.
	Special Special
	// MaxLen drops pairs whose source or target, EOS included, is longer
	// (0: no limit).
	MaxLen int
	// SrcPositions and TgtPositions are the longest source and target
	// (EOS included) the model reads (Roles' positions; 0: no limit). A
	// longer sentence that MaxLen does not drop is an error naming its
	// line.
	SrcPositions, TgtPositions int
}

// ReadParallel reads a source and a target file with one sentence per line
// and validates them before any training starts: both files UTF-8 text
// (a byte-order mark is dropped; other bytes and NUL are refused by line),
// non-empty, the same number of lines, no empty line, every id inside the
// vocabulary and none equal to the padding id, no sentence longer than the
// model's positions. EOS is appended to both sides.
func ReadParallel(srcPath, tgtPath string, opts DataOptions) (*Dataset, error) {
	tok := opts.Tokenizer
	vocab := opts.Vocab
	if tok == nil {
		if vocab <= 0 {
			return nil, fmt.Errorf("reading %s: the vocabulary size is unknown; give the model's vocabulary size", srcPath)
		}
		tok = IDs{}
	}
	if vocab <= 0 {
		vocab = tok.VocabSize()
	}
	sp := opts.Special
	for _, id := range []int64{sp.Pad, sp.BOS, sp.EOS} {
		if id < 0 || id >= int64(vocab) {
			return nil, fmt.Errorf("special id %d is outside the vocabulary of %d tokens; check --pad-id, --bos-id and --eos-id", id, vocab)
		}
	}
	src, err := readLines(srcPath, tok, vocab, sp)
	if err != nil {
		return nil, err
	}
	tgt, err := readLines(tgtPath, tok, vocab, sp)
	if err != nil {
		return nil, err
	}
	if len(src) != len(tgt) {
		return nil, fmt.Errorf("%s has %d lines but %s has %d; parallel files need one line per sentence pair", srcPath, len(src), tgtPath, len(tgt))
	}
	ds := &Dataset{SrcPath: srcPath, TgtPath: tgtPath, Special: sp}
	ds.Examples = make([]Example, 0, len(src))
	for i := range src {
		s := append(src[i], sp.EOS)
		t := append(tgt[i], sp.EOS)
		if opts.MaxLen > 0 && (len(s) > opts.MaxLen || len(t) > opts.MaxLen) {
			ds.Dropped++
			continue
		}
		for _, side := range []struct {
			path      string
			n, limit  int
			positions string
		}{{srcPath, len(s), opts.SrcPositions, "source"}, {tgtPath, len(t), opts.TgtPositions, "target"}} {
			if side.limit > 0 && side.n > side.limit {
				return nil, fmt.Errorf("%s:%d: the sentence has %d tokens (EOS included) but the model has %d %s positions; shorten or drop it (train and finetune drop longer pairs with --max-len %d)",
					side.path, i+1, side.n, side.limit, side.positions, side.limit)
			}
		}
		ds.Examples = append(ds.Examples, Example{Line: i + 1, Src: s, Tgt: t})
	}
	if len(ds.Examples) == 0 {
		return nil, fmt.Errorf("%s, %s: all %d pairs are longer than the maximum length %d (EOS included); raise the maximum length", srcPath, tgtPath, len(src), opts.MaxLen)
	}
	return ds, nil
}

// readLines encodes every line of path and checks it.
func readLines(path string, tok Tokenizer, vocab int, sp Special) ([][]int64, error) {
	var out [][]int64
	err := safeio.ReadLines(path, func(n int, line string) error {
		if strings.TrimSpace(line) == "" {
			return fmt.Errorf("%s:%d: empty line; every line must hold a sentence (remove the pair from both files)", path, n)
		}
		ids, err := tok.Encode(line)
		if err != nil {
			return fmt.Errorf("%s:%d: %v", path, n, err)
		}
		if len(ids) == 0 {
			return fmt.Errorf("%s:%d: the line encodes to no tokens", path, n)
		}
		for _, id := range ids {
			switch {
			case id < 0 || id >= int64(vocab):
				return fmt.Errorf("%s:%d: token id %d is beyond the vocabulary of %d tokens; the data does not match the model's vocabulary", path, n, id, vocab)
			case id == sp.Pad:
				return fmt.Errorf("%s:%d: token id %d is the padding id; data lines must not hold padding", path, n, id)
			}
		}
		out = append(out, ids)
		return nil
	})
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return nil, fmt.Errorf("read data: %w", err)
	}
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s is empty; give a file with one sentence per line", path)
	}
	return out, nil
}

// Tokens returns the number of target tokens (EOS included) in the set,
// the count the loss is averaged over.
func (d *Dataset) Tokens() int {
	n := 0
	for _, e := range d.Examples {
		n += len(e.Tgt)
	}
	return n
}

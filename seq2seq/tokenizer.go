package seq2seq

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/qatc/qatc/spm"
)

// Tokenizer turns a line into token ids and ids back into a line, so that
// id files and SentencePiece text share one reading path.
type Tokenizer interface {
	// Encode tokenizes one line (without BOS or EOS).
	Encode(line string) ([]int64, error)
	// Decode turns ids (without BOS or EOS) into a line.
	Decode(ids []int64) string
	// VocabSize is the number of ids the tokenizer knows; 0 when it does
	// not know (plain id files).
	VocabSize() int
}

// IDs is the Tokenizer of lines that already are space-separated token ids.
type IDs struct{}

// OrIDs is tok, or IDs when tok is nil (files of ids need no tokenizer).
func OrIDs(tok Tokenizer) Tokenizer {
	if tok == nil {
		return IDs{}
	}
	return tok
}

// Encode parses the space-separated ids of line.
func (IDs) Encode(line string) ([]int64, error) {
	f := strings.Fields(line)
	ids := make([]int64, len(f))
	for i, s := range f {
		v, err := strconv.ParseInt(s, 10, 64)
		switch {
		case err != nil:
			return nil, fmt.Errorf("field %d %q is not a token id (the file must hold space-separated ids, or give a SentencePiece model for text)", i+1, s)
		case v < 0:
			return nil, fmt.Errorf("token id %d is beyond the vocabulary: ids start at 0 (field %d)", v, i+1)
		}
		ids[i] = v
	}
	return ids, nil
}

// Decode writes the ids space-separated.
func (IDs) Decode(ids []int64) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.FormatInt(id, 10)
	}
	return strings.Join(s, " ")
}

// VocabSize returns 0: id files carry no vocabulary.
func (IDs) VocabSize() int { return 0 }

// SentencePiece is a Tokenizer over a SentencePiece BPE model (a .model
// file from spm_train --model_type=bpe), token for token what spm_encode
// gives.
type SentencePiece struct {
	// Path is the model file it was loaded from.
	Path string
	m    *spm.Model
}

// LoadSentencePiece reads a SentencePiece model file.
func LoadSentencePiece(path string) (*SentencePiece, error) {
	m, err := spm.Load(path)
	if err != nil {
		return nil, err
	}
	return &SentencePiece{Path: path, m: m}, nil
}

// Encode tokenizes a line of text.
func (s *SentencePiece) Encode(line string) ([]int64, error) { return s.m.Encode(line), nil }

// Decode turns ids back into text.
func (s *SentencePiece) Decode(ids []int64) string { return s.m.Decode(ids) }

// VocabSize returns the number of pieces.
func (s *SentencePiece) VocabSize() int { return s.m.VocabSize() }

// CheckVocab reports an error when the tokenizer's vocabulary does not
// match the model's (the logits' last dim). Tokenizers without a
// vocabulary (id files) always match.
func CheckVocab(tok Tokenizer, tokName string, modelVocab int, modelName string) error {
	v := tok.VocabSize()
	if v == 0 || v == modelVocab {
		return nil
	}
	return fmt.Errorf("%s has %d pieces but %s has a vocabulary of %d (its logits' last dim): use the SentencePiece model the translation model was trained with", tokName, v, modelName, modelVocab)
}

// EncodeSources tokenizes source lines (name names them in errors) and
// appends EOS unless noEOS: the ids a model trained by qatc reads.
func EncodeSources(lines []string, tok Tokenizer, name string, sp Special, noEOS bool) ([][]int64, error) {
	srcs := make([][]int64, len(lines))
	for i, line := range lines {
		ids, err := tok.Encode(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %v", name, i+1, err)
		}
		if !noEOS {
			ids = append(ids, sp.EOS)
		}
		srcs[i] = ids
	}
	return srcs, nil
}

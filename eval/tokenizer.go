package eval

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	sentencepiece "github.com/eliben/go-sentencepiece"
	"google.golang.org/protobuf/encoding/protowire"
)

// Tokenizer turns a line into token ids and ids back into a line.
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

// Encode parses the space-separated ids of line.
func (IDs) Encode(line string) ([]int64, error) {
	f := strings.Fields(line)
	ids := make([]int64, len(f))
	for i, s := range f {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("field %d %q is not a token id (the file must hold space-separated ids, or give a SentencePiece model for text)", i+1, s)
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
// file from spm_train --model_type=bpe).
//
// github.com/eliben/go-sentencepiece does not implement the normalizer's
// add_dummy_prefix and remove_extra_whitespaces options, which spm_train
// turns on by default; SentencePiece applies them here around the
// library: whitespace runs collapse to one space and the ends are trimmed,
// a space is put before the text when encoding and the leading space
// dropped when decoding, as the C++ library does. The model's
// precompiled normalization (nmt_nfkc by default) is not applied; train
// with --normalization_rule_name=identity, or feed NFKC-normalised text.
type SentencePiece struct {
	path        string
	proc        *sentencepiece.Processor
	vocab       int
	dummyPrefix bool
	trimSpaces  bool
}

// LoadSentencePiece reads a SentencePiece model file.
func LoadSentencePiece(path string) (*SentencePiece, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("sentencepiece model: %v", err)
	}
	data, info, err := adaptModel(data)
	if err != nil {
		return nil, fmt.Errorf("sentencepiece model %s: %v (is it a SentencePiece .model file?)", path, err)
	}
	p, err := sentencepiece.NewProcessor(strings.NewReader(string(data)))
	if err != nil {
		return nil, fmt.Errorf("sentencepiece model %s: %v (a BPE model is needed: spm_train --model_type=bpe)", path, err)
	}
	return &SentencePiece{path: path, proc: p, vocab: info.pieces, dummyPrefix: info.dummyPrefix, trimSpaces: info.trimSpaces}, nil
}

// Protobuf field numbers of sentencepiece_model.proto.
const (
	modelPieces               = 1 // ModelProto.pieces
	modelNormalizerSpec       = 3 // ModelProto.normalizer_spec
	pieceString               = 1 // SentencePiece.piece
	pieceType                 = 3 // SentencePiece.type
	pieceUnused               = 5 // SentencePiece.Type UNUSED
	normAddDummyPrefix        = 3 // NormalizerSpec.add_dummy_prefix (default true)
	normRemoveExtraWhitespace = 4 // NormalizerSpec.remove_extra_whitespaces (default true)
)

// modelInfo is what adaptModel learns of a model.
type modelInfo struct {
	pieces                  int
	dummyPrefix, trimSpaces bool
}

// adaptModel rewrites a model for go-sentencepiece: add_dummy_prefix and
// remove_extra_whitespaces become false (SentencePiece applies them
// itself), and an UNUSED piece twice as long as the longest piece is
// appended, because the library's merge buffer holds only the longest
// piece and overflows when two adjacent pieces are longer together. The
// padding piece is 0xff bytes, which valid UTF-8 text never holds, so it
// never matches; its id is past the model's vocabulary.
func adaptModel(model []byte) ([]byte, modelInfo, error) {
	info := modelInfo{dummyPrefix: true, trimSpaces: true}
	var out []byte
	longest, sawSpec := 0, false
	for b := model; len(b) > 0; {
		num, typ, field, err := nextField(b)
		if err != nil {
			return nil, info, err
		}
		b = b[len(field):]
		switch {
		case num == modelPieces && typ == protowire.BytesType:
			info.pieces++
			msg, _ := protowire.ConsumeBytes(field[protowire.SizeTag(num):])
			for m := msg; len(m) > 0; {
				pnum, ptyp, pf, err := nextField(m)
				if err != nil {
					return nil, info, err
				}
				m = m[len(pf):]
				if pnum == pieceString && ptyp == protowire.BytesType {
					s, _ := protowire.ConsumeBytes(pf[protowire.SizeTag(pnum):])
					longest = max(longest, len(s))
				}
			}
			out = append(out, field...)
		case num == modelNormalizerSpec && typ == protowire.BytesType:
			spec, _ := protowire.ConsumeBytes(field[protowire.SizeTag(num):])
			var rest []byte
			for s := spec; len(s) > 0; {
				snum, styp, sf, err := nextField(s)
				if err != nil {
					return nil, info, err
				}
				s = s[len(sf):]
				if styp == protowire.VarintType && (snum == normAddDummyPrefix || snum == normRemoveExtraWhitespace) {
					v, _ := protowire.ConsumeVarint(sf[protowire.SizeTag(snum):])
					if snum == normAddDummyPrefix {
						info.dummyPrefix = v != 0
					} else {
						info.trimSpaces = v != 0
					}
					continue
				}
				rest = append(rest, sf...)
			}
			out = appendNormalizer(out, rest)
			sawSpec = true
		default:
			out = append(out, field...)
		}
	}
	if info.pieces == 0 {
		return nil, info, fmt.Errorf("no pieces")
	}
	if !sawSpec {
		out = appendNormalizer(out, nil)
	}
	var pad []byte
	pad = protowire.AppendTag(pad, pieceString, protowire.BytesType)
	pad = protowire.AppendString(pad, strings.Repeat("\xff", 2*longest+1))
	pad = protowire.AppendTag(pad, pieceType, protowire.VarintType)
	pad = protowire.AppendVarint(pad, pieceUnused)
	out = protowire.AppendTag(out, modelPieces, protowire.BytesType)
	out = protowire.AppendBytes(out, pad)
	return out, info, nil
}

// nextField splits the first field off a protobuf message.
func nextField(b []byte) (protowire.Number, protowire.Type, []byte, error) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 {
		return 0, 0, nil, protowire.ParseError(n)
	}
	m := protowire.ConsumeFieldValue(num, typ, b[n:])
	if m < 0 {
		return 0, 0, nil, protowire.ParseError(m)
	}
	return num, typ, b[:n+m], nil
}

// appendNormalizer appends a NormalizerSpec of the fields rest with both
// whitespace options false.
func appendNormalizer(out, rest []byte) []byte {
	ns := append([]byte(nil), rest...)
	ns = protowire.AppendTag(ns, normAddDummyPrefix, protowire.VarintType)
	ns = protowire.AppendVarint(ns, 0)
	ns = protowire.AppendTag(ns, normRemoveExtraWhitespace, protowire.VarintType)
	ns = protowire.AppendVarint(ns, 0)
	out = protowire.AppendTag(out, modelNormalizerSpec, protowire.BytesType)
	return protowire.AppendBytes(out, ns)
}

// Encode tokenizes a line of text.
func (s *SentencePiece) Encode(line string) ([]int64, error) {
	// Invalid UTF-8 becomes U+FFFD, so the padding piece cannot match.
	line = strings.ToValidUTF8(line, "\uFFFD")
	if s.trimSpaces {
		line = strings.Join(strings.Fields(line), " ")
	}
	if line == "" {
		return []int64{}, nil
	}
	if s.dummyPrefix {
		line = " " + line
	}
	toks := s.proc.Encode(line)
	ids := make([]int64, len(toks))
	for i, t := range toks {
		ids[i] = int64(t.ID)
	}
	return ids, nil
}

// Decode turns ids into text; ids outside the vocabulary decode as the
// unknown piece.
func (s *SentencePiece) Decode(ids []int64) string {
	unk := s.proc.ModelInfo().UnknownID
	in := make([]int, len(ids))
	for i, id := range ids {
		in[i] = int(id)
		if id < 0 || id >= int64(s.vocab) {
			in[i] = unk
		}
	}
	text := s.proc.Decode(in)
	if s.dummyPrefix {
		text = strings.TrimPrefix(text, " ")
	}
	return text
}

// VocabSize returns the number of pieces in the model.
func (s *SentencePiece) VocabSize() int { return s.vocab }

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

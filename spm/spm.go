// Package spm reads SentencePiece BPE models (the .model files spm_train
// writes) and turns text into token ids and back, as SentencePiece does:
// whitespace handling from the model's normalizer spec, then greedy BPE
// merges by piece score, unknown characters mapped to the unk id.
//
// Only what translation data needs is implemented: BPE models (not
// unigram), identity or NFKC normalization (the precompiled character map
// of nmt_nfkc is approximated by Unicode NFKC), no byte fallback.
package spm

import (
	"container/heap"
	"fmt"
	"math"
	"os"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
	"google.golang.org/protobuf/encoding/protowire"
)

// Piece types, as in sentencepiece_model.proto.
const (
	normal      = 1
	unknown     = 2
	control     = 3
	userDefined = 4
	unused      = 5
	byteType    = 6
)

// Model types.
const (
	modelUnigram = 1
	modelBPE     = 2
)

// space is SentencePiece's visible whitespace, U+2581.
const space = "\u2581"

// Model is a loaded SentencePiece BPE model.
type Model struct {
	pieces []piece
	ids    map[string]int
	user   []string // user-defined symbols, matched before BPE

	unkID, bosID, eosID, padID int
	addDummyPrefix             bool
	removeExtraSpaces          bool
	escapeSpaces               bool
	nfkc                       bool
}

type piece struct {
	text  string
	score float32
	kind  int
}

// Load reads a .model file.
func Load(path string) (*Model, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read SentencePiece model: %w", err)
	}
	m, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// Parse decodes a serialized SentencePiece ModelProto.
func Parse(data []byte) (*Model, error) {
	m := &Model{
		ids: map[string]int{}, unkID: 0, bosID: 1, eosID: 2, padID: -1,
		addDummyPrefix: true, removeExtraSpaces: true, escapeSpaces: true,
	}
	modelType := modelUnigram
	normName := ""
	err := fields(data, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch num {
		case 1: // pieces
			p := piece{kind: normal}
			if err := fields(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				switch num {
				case 1:
					p.text = string(v)
				case 2:
					p.score = math.Float32frombits(uint32(x))
				case 3:
					p.kind = int(x)
				}
				return nil
			}); err != nil {
				return err
			}
			m.pieces = append(m.pieces, p)
		case 2: // trainer spec
			return fields(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				switch num {
				case 3:
					modelType = int(x)
				case 40:
					m.unkID = int(int32(x))
				case 41:
					m.bosID = int(int32(x))
				case 42:
					m.eosID = int(int32(x))
				case 43:
					m.padID = int(int32(x))
				}
				return nil
			})
		case 3: // normalizer spec
			return fields(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				switch num {
				case 1:
					normName = string(v)
				case 3:
					m.addDummyPrefix = x != 0
				case 4:
					m.removeExtraSpaces = x != 0
				case 5:
					m.escapeSpaces = x != 0
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("not a SentencePiece model (%v)", err)
	}
	if len(m.pieces) == 0 {
		return nil, fmt.Errorf("not a SentencePiece model: it has no pieces")
	}
	if modelType != modelBPE {
		return nil, fmt.Errorf("SentencePiece model type %d is not BPE; only BPE models (spm_train --model_type=bpe) are supported", modelType)
	}
	switch normName {
	case "", "identity":
	case "nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf":
		m.nfkc = true
	default:
		return nil, fmt.Errorf("SentencePiece normalization %q is not supported (use identity or nmt_nfkc)", normName)
	}
	for i, p := range m.pieces {
		if _, dup := m.ids[p.text]; !dup {
			m.ids[p.text] = i
		}
		if p.kind == userDefined {
			m.user = append(m.user, p.text)
		}
	}
	if m.unkID < 0 || m.unkID >= len(m.pieces) {
		return nil, fmt.Errorf("SentencePiece model's unk id %d is outside its %d pieces", m.unkID, len(m.pieces))
	}
	return m, nil
}

// fields calls f for each field of a protobuf message: v holds a
// length-delimited field's bytes, x a varint or fixed field's value.
func fields(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch typ {
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var x32 uint32
			x32, n = protowire.ConsumeFixed32(b)
			x = uint64(x32)
		case protowire.Fixed64Type:
			x, n = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := f(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}

// VocabSize returns the number of pieces.
func (m *Model) VocabSize() int { return len(m.pieces) }

// Special ids: unknown, begin and end of sentence, padding (-1 if none).
func (m *Model) UnkID() int { return m.unkID }

// BosID returns the begin-of-sentence id.
func (m *Model) BosID() int { return m.bosID }

// EosID returns the end-of-sentence id.
func (m *Model) EosID() int { return m.eosID }

// PadID returns the padding id, or -1.
func (m *Model) PadID() int { return m.padID }

// Piece returns the text of piece id.
func (m *Model) Piece(id int) string {
	if id < 0 || id >= len(m.pieces) {
		return ""
	}
	return m.pieces[id].text
}

// normalize applies the model's normalizer: NFKC if asked, whitespace
// folding, the dummy prefix, and visible spaces.
func (m *Model) normalize(s string) string {
	if m.nfkc {
		s = norm.NFKC.String(s)
	}
	if m.removeExtraSpaces {
		s = strings.Join(strings.Fields(s), " ")
	}
	if m.addDummyPrefix && s != "" {
		s = " " + s
	}
	if m.escapeSpaces {
		s = strings.ReplaceAll(s, " ", space)
	}
	return s
}

// Encode returns the token ids of s (no bos or eos).
func (m *Model) Encode(s string) []int64 {
	s = m.normalize(s)
	ids := []int64{}
	// User-defined symbols are atomic: split the text around them.
	for len(s) > 0 {
		at, sym := len(s), ""
		for _, u := range m.user {
			if i := strings.Index(s, u); i >= 0 && (i < at || i == at && len(u) > len(sym)) {
				at, sym = i, u
			}
		}
		ids = m.bpe(s[:at], ids)
		if sym == "" {
			break
		}
		ids = append(ids, int64(m.ids[sym]))
		s = s[at+len(sym):]
	}
	return ids
}

// symbol is one node of the linked list of pieces being merged.
type symbol struct {
	text       string
	prev, next int // -1 at the ends
}

// candidate is a possible merge of symbols left and right.
type candidate struct {
	left, right int
	score       float32
	text        string
}

type candidates []candidate

func (c candidates) Len() int { return len(c) }
func (c candidates) Less(i, j int) bool {
	if c[i].score != c[j].score {
		return c[i].score > c[j].score
	}
	return c[i].left < c[j].left
}
func (c candidates) Swap(i, j int) { c[i], c[j] = c[j], c[i] }
func (c *candidates) Push(x any)   { *c = append(*c, x.(candidate)) }
func (c *candidates) Pop() any {
	old := *c
	x := old[len(old)-1]
	*c = old[:len(old)-1]
	return x
}

// bpe merges the characters of s, highest-scoring merge first (leftmost on
// ties), and appends the resulting ids to ids.
func (m *Model) bpe(s string, ids []int64) []int64 {
	if s == "" {
		return ids
	}
	syms := make([]symbol, 0, utf8.RuneCountInString(s))
	for i, r := range s {
		n := utf8.RuneLen(r)
		if r == utf8.RuneError {
			n = 1
		}
		syms = append(syms, symbol{text: s[i : i+n], prev: len(syms) - 1, next: len(syms) + 1})
	}
	syms[len(syms)-1].next = -1
	var queue candidates
	try := func(l, r int) {
		if l < 0 || r < 0 {
			return
		}
		text := syms[l].text + syms[r].text
		if id, ok := m.ids[text]; ok && m.pieces[id].kind == normal {
			heap.Push(&queue, candidate{l, r, m.pieces[id].score, text})
		}
	}
	for i := 0; i+1 < len(syms); i++ {
		try(i, i+1)
	}
	for queue.Len() > 0 {
		c := heap.Pop(&queue).(candidate)
		l, r := &syms[c.left], &syms[c.right]
		// Skip merges made stale by an earlier merge of either side.
		if l.text == "" || r.text == "" || l.next != c.right || l.text+r.text != c.text {
			continue
		}
		l.text = c.text
		r.text = ""
		l.next = r.next
		if r.next >= 0 {
			syms[r.next].prev = c.left
		}
		try(l.prev, c.left)
		try(c.left, l.next)
	}
	for i := 0; i >= 0; i = syms[i].next {
		if id, ok := m.ids[syms[i].text]; ok {
			ids = append(ids, int64(id))
		} else {
			ids = append(ids, int64(m.unkID))
		}
	}
	return ids
}

// Decode turns ids back into text: control pieces are dropped, unknown
// pieces and ids outside the vocabulary print as " ⁇ ", visible spaces
// become spaces.
func (m *Model) Decode(ids []int64) string {
	var b strings.Builder
	for _, id := range ids {
		if id < 0 || id >= int64(len(m.pieces)) {
			b.WriteString(" \u2047 ")
			continue
		}
		switch p := m.pieces[id]; p.kind {
		case control, unused:
		case unknown:
			b.WriteString(" \u2047 ")
		default:
			b.WriteString(p.text)
		}
	}
	s := b.String()
	if m.escapeSpaces {
		s = strings.ReplaceAll(s, space, " ")
	}
	if m.addDummyPrefix {
		s = strings.TrimPrefix(s, " ")
	}
	return s
}

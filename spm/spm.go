// Package spm reads SentencePiece BPE models (the .model files spm_train
// writes) and turns text into token ids and back exactly as SentencePiece
// does (spm_encode, spm_decode).
//
// Normalization applies the model's compiled rule table (its
// precompiled_charsmap), so every normalizer spm_train writes behaves as
// in SentencePiece: nmt_nfkc (NFKC, control characters removed, blanks
// made spaces), nfkc, the case-folding nmt_nfkc_cf and nfkc_cf, identity,
// and user rules. Then whitespace is handled as the NormalizerSpec says
// (extra spaces, dummy prefix, visible spaces U+2581), user-defined
// symbols are kept whole, and pieces are merged by score, highest first.
// A character the vocabulary lacks becomes the unknown id (a run of them
// one id), or, in a byte-fallback model, its UTF-8 bytes as the <0xXX>
// pieces. Decode reverses it, including byte pieces and the
// denormalizer.
//
// Only BPE models are read; unigram, word and char models, and models
// that put the visible space after words (treat_whitespace_as_suffix),
// are refused with an error.
package spm

import (
	"container/heap"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/qatc/qatc/safeio"
	"github.com/qatc/qatc/spm/spmpb"
	"google.golang.org/protobuf/proto"
)

// space is SentencePiece's visible whitespace, U+2581.
const space = "\u2581"

type pieceType = spmpb.ModelProto_SentencePiece_Type

// Model is a loaded SentencePiece BPE model.
type Model struct {
	proto  *spmpb.ModelProto
	pieces []piece
	// merged are the pieces BPE can form (normal, user-defined and unused
	// ones); reserved the others (unknown, control, byte), found first by
	// text as SentencePiece's PieceToId does.
	merged, reserved map[string]int
	user             []string // user-defined symbols, never split or merged
	bytes            [256]int // byte pieces' ids, with byte fallback
	byteFallback     bool
	norm, denorm     *normalizer

	unkID, bosID, eosID, padID int
	unkSurface                 string
}

type piece struct {
	text  string
	score float32
	kind  pieceType
}

// Load reads a .model file.
func Load(path string) (*Model, error) {
	data, err := safeio.ReadFile(path, 1<<30)
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
	mp := &spmpb.ModelProto{}
	if err := proto.Unmarshal(data, mp); err != nil {
		return nil, fmt.Errorf("not a SentencePiece model (%v)", err)
	}
	if len(mp.Pieces) == 0 {
		return nil, fmt.Errorf("not a SentencePiece model: it has no pieces")
	}
	ts := mp.GetTrainerSpec()
	if t := ts.GetModelType(); t != spmpb.TrainerSpec_BPE {
		return nil, fmt.Errorf("SentencePiece model type %s is not BPE; only BPE models (spm_train --model_type=bpe) are supported", t)
	}
	if ts.GetTreatWhitespaceAsSuffix() {
		return nil, fmt.Errorf("SentencePiece model puts the visible space after words (treat_whitespace_as_suffix); only models with it before words are supported")
	}
	m := &Model{
		proto: mp, merged: map[string]int{}, reserved: map[string]int{},
		byteFallback: ts.GetByteFallback(), unkID: -1,
		bosID: int(ts.GetBosId()), eosID: int(ts.GetEosId()), padID: int(ts.GetPadId()),
		unkSurface: ts.GetUnkSurface(),
	}
	for i := range m.bytes {
		m.bytes[i] = -1
	}
	for i, sp := range mp.Pieces {
		p := piece{text: sp.GetPiece(), score: sp.GetScore(), kind: sp.GetType()}
		if p.text == "" {
			return nil, fmt.Errorf("SentencePiece piece %d is empty", i)
		}
		ids := m.reserved
		switch p.kind {
		case spmpb.ModelProto_SentencePiece_NORMAL, spmpb.ModelProto_SentencePiece_USER_DEFINED, spmpb.ModelProto_SentencePiece_UNUSED:
			ids = m.merged
		case spmpb.ModelProto_SentencePiece_UNKNOWN:
			if m.unkID >= 0 {
				return nil, fmt.Errorf("SentencePiece model has two unknown pieces (%d and %d)", m.unkID, i)
			}
			m.unkID = i
		case spmpb.ModelProto_SentencePiece_BYTE:
			b, ok := pieceByte(p.text)
			if !m.byteFallback || !ok {
				return nil, fmt.Errorf("SentencePiece piece %d %q is a byte piece, but the model has no byte fallback or the piece is not <0xXX>", i, p.text)
			}
			m.bytes[b] = i
		}
		if _, dup := ids[p.text]; dup {
			return nil, fmt.Errorf("SentencePiece piece %q is defined twice", p.text)
		}
		ids[p.text] = i
		if p.kind == spmpb.ModelProto_SentencePiece_USER_DEFINED {
			m.user = append(m.user, p.text)
		}
		m.pieces = append(m.pieces, p)
	}
	if m.unkID < 0 {
		return nil, fmt.Errorf("SentencePiece model has no unknown piece")
	}
	if m.byteFallback {
		for b, id := range m.bytes {
			if id < 0 {
				return nil, fmt.Errorf("SentencePiece model has byte fallback but no piece <0x%02X>", b)
			}
		}
	}
	var err error
	if m.norm, err = newNormalizer(mp.GetNormalizerSpec(), m.user); err != nil {
		return nil, fmt.Errorf("SentencePiece normalizer %q: %w", mp.GetNormalizerSpec().GetName(), err)
	}
	if d := mp.GetDenormalizerSpec(); len(d.GetPrecompiledCharsmap()) > 0 {
		if m.denorm, err = newNormalizer(d, nil); err != nil {
			return nil, fmt.Errorf("SentencePiece denormalizer: %w", err)
		}
	}
	return m, nil
}

// newNormalizer prepares a NormalizerSpec; user symbols stay verbatim.
func newNormalizer(spec *spmpb.NormalizerSpec, user []string) (*normalizer, error) {
	rules, err := parseCharsMap(spec.GetPrecompiledCharsmap())
	if err != nil {
		return nil, err
	}
	if rules == nil {
		switch name := spec.GetName(); name {
		case "", "identity":
		default:
			// A rule spm_train compiles is always stored; without the
			// table the model could not normalize as it was trained.
			return nil, fmt.Errorf("the model names the rule but stores no precompiled_charsmap to apply it")
		}
	}
	return &normalizer{
		rules: rules, user: user,
		dummyPrefix:       spec.GetAddDummyPrefix(),
		removeExtraSpaces: spec.GetRemoveExtraWhitespaces(),
		escapeSpaces:      spec.GetEscapeWhitespaces(),
	}, nil
}

// pieceByte reads a byte piece's text, <0xXX>.
func pieceByte(s string) (byte, bool) {
	if len(s) != 6 || !strings.HasPrefix(s, "<0x") || s[5] != '>' {
		return 0, false
	}
	v, err := strconv.ParseUint(s[3:5], 16, 8)
	return byte(v), err == nil
}

// VocabSize returns the number of pieces.
func (m *Model) VocabSize() int { return len(m.pieces) }

// UnkID returns the unknown piece's id.
func (m *Model) UnkID() int { return m.unkID }

// BosID returns the begin-of-sentence id (-1 if none).
func (m *Model) BosID() int { return m.bosID }

// EosID returns the end-of-sentence id (-1 if none).
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

// Normalize returns s as the model segments it (spm_normalize's output,
// with visible spaces).
func (m *Model) Normalize(s string) string { return m.norm.normalize(s) }

// pieceID is SentencePiece's PieceToId: reserved pieces first, then the
// others, else the unknown id.
func (m *Model) pieceID(s string) int {
	if id, ok := m.reserved[s]; ok {
		return id
	}
	if id, ok := m.merged[s]; ok {
		return id
	}
	return m.unkID
}

// Encode returns the token ids of s (no bos or eos).
func (m *Model) Encode(s string) []int64 {
	ids := []int64{}
	prevUnk := false
	for _, sym := range m.bpe(m.norm.normalize(s)) {
		id := m.pieceID(sym)
		unk := id == m.unkID
		switch {
		case unk && m.byteFallback:
			for i := 0; i < len(sym); i++ {
				ids = append(ids, int64(m.bytes[sym[i]]))
			}
		case unk && prevUnk:
			// A run of unknown symbols is one unknown piece.
		default:
			ids = append(ids, int64(id))
		}
		prevUnk = unk
	}
	return ids
}

// symbol is one node of the linked list of pieces being merged.
type symbol struct {
	text       string
	prev, next int // -1 at the ends
	frozen     bool
}

// candidate is a possible merge of symbols left and right into a piece
// of size bytes.
type candidate struct {
	left, right int
	score       float32
	size        int
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

// bpe segments normalized text s: characters (user-defined symbols whole
// and frozen), then merges into pieces, highest score first (leftmost on
// ties); a merged piece the vocabulary marks unused is split back into
// the two it was made of.
func (m *Model) bpe(s string) []string {
	var syms []symbol
	for s != "" {
		n := longestUser(m.user, s)
		frozen := n > 0
		if !frozen {
			n = min(len(s), charLen(s[0]))
		}
		syms = append(syms, symbol{text: s[:n], prev: len(syms) - 1, next: len(syms) + 1, frozen: frozen})
		s = s[n:]
	}
	if len(syms) == 0 {
		return nil
	}
	syms[len(syms)-1].next = -1
	var queue candidates
	split := map[string][2]string{} // unused piece → its two parts
	try := func(l, r int) {
		if l < 0 || r < 0 || syms[l].frozen || syms[r].frozen {
			return
		}
		text := syms[l].text + syms[r].text
		id, ok := m.merged[text]
		if !ok {
			return
		}
		heap.Push(&queue, candidate{l, r, m.pieces[id].score, len(text)})
		if m.pieces[id].kind == spmpb.ModelProto_SentencePiece_UNUSED {
			split[text] = [2]string{syms[l].text, syms[r].text}
		}
	}
	for i := 1; i < len(syms); i++ {
		try(i-1, i)
	}
	for queue.Len() > 0 {
		c := heap.Pop(&queue).(candidate)
		l, r := &syms[c.left], &syms[c.right]
		// Skip merges made stale by an earlier merge of either side.
		if l.text == "" || r.text == "" || len(l.text)+len(r.text) != c.size {
			continue
		}
		l.text += r.text
		r.text = ""
		l.next = r.next
		if r.next >= 0 {
			syms[r.next].prev = c.left
		}
		try(l.prev, c.left)
		try(c.left, l.next)
	}
	var out []string
	var resegment func(string)
	resegment = func(w string) {
		id, ok := m.merged[w]
		parts, known := split[w]
		if !ok || m.pieces[id].kind != spmpb.ModelProto_SentencePiece_UNUSED || !known {
			out = append(out, w)
			return
		}
		resegment(parts[0])
		resegment(parts[1])
	}
	for i := 0; i >= 0; i = syms[i].next {
		resegment(syms[i].text)
	}
	return out
}

// charLen is the length of the UTF-8 sequence lead byte b starts (1 for a
// byte that starts none), as SentencePiece splits characters.
func charLen(b byte) int {
	switch {
	case b < 0xC0:
		return 1
	case b < 0xE0:
		return 2
	case b < 0xF0:
		return 3
	}
	return 4
}

// Decode turns ids back into text as spm_decode does: control pieces are
// dropped, the unknown piece prints as the model's unk surface (" ⁇ "),
// runs of byte pieces become their UTF-8 text (U+FFFD for each byte that
// starts no valid character), visible spaces become spaces, the leading
// one(s) the normalizer added are dropped, and the denormalizer applies.
// Ids outside the vocabulary print as the unk surface.
func (m *Model) Decode(ids []int64) string {
	var b strings.Builder
	var bytes []byte
	flush := func() {
		for len(bytes) > 0 {
			r, n := utf8.DecodeRune(bytes)
			if r == utf8.RuneError && n <= 1 {
				b.WriteString("\uFFFD")
				n = 1
			} else {
				b.Write(bytes[:n])
			}
			bytes = bytes[n:]
		}
	}
	bos := true // still at the start: a leading visible space is the dummy prefix
	ns := m.proto.GetNormalizerSpec()
	for _, id := range ids {
		if id >= 0 && id < int64(len(m.pieces)) && m.pieces[id].kind == spmpb.ModelProto_SentencePiece_BYTE {
			c, _ := pieceByte(m.pieces[id].text)
			bytes = append(bytes, c)
			continue
		}
		flush()
		if b.Len() > 0 {
			bos = false
		}
		if id < 0 || id >= int64(len(m.pieces)) {
			b.WriteString(m.unkSurface)
			continue
		}
		p := m.pieces[id]
		switch p.kind {
		case spmpb.ModelProto_SentencePiece_CONTROL:
		case spmpb.ModelProto_SentencePiece_UNKNOWN:
			b.WriteString(m.unkSurface)
		default:
			text := p.text
			if bos && (ns.GetAddDummyPrefix() || ns.GetRemoveExtraWhitespaces()) && strings.HasPrefix(text, space) {
				text = text[len(space):]
				if !ns.GetRemoveExtraWhitespaces() {
					bos = false
				}
			}
			b.WriteString(strings.ReplaceAll(text, space, " "))
		}
	}
	flush()
	s := b.String()
	if m.denorm != nil {
		s = m.denorm.normalize(s)
	}
	return s
}

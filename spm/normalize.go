package spm

import (
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf8"
)

// charsMap is a normalization rule compiled by spm_train (the
// precompiled_charsmap of a NormalizerSpec): a double-array trie over the
// UTF-8 bytes of source strings whose values index NUL-terminated
// replacements. Every rule (nmt_nfkc, nfkc_cf, a user's TSV) is such a
// table, so applying it reproduces SentencePiece exactly, case folding
// and control-character removal included, without knowing the rule.
type charsMap struct {
	units []uint32 // the trie
	repl  []byte   // the replacements
}

// parseCharsMap splits a precompiled_charsmap blob: a 4-byte little-endian
// trie size, the trie, then the replacement strings.
func parseCharsMap(blob []byte) (*charsMap, error) {
	if len(blob) == 0 {
		return nil, nil // identity
	}
	if len(blob) <= 4 {
		return nil, fmt.Errorf("its precompiled_charsmap has %d bytes, too few for a trie", len(blob))
	}
	size := binary.LittleEndian.Uint32(blob)
	if size%4 != 0 || uint64(size) >= uint64(len(blob)-4) || size == 0 {
		return nil, fmt.Errorf("its precompiled_charsmap declares a %d-byte trie in %d bytes", size, len(blob)-4)
	}
	cm := &charsMap{units: make([]uint32, size/4), repl: blob[4+size:]}
	for i := range cm.units {
		cm.units[i] = binary.LittleEndian.Uint32(blob[4+4*i:])
	}
	return cm, nil
}

// Fields of a double-array unit (darts-clone's layout): bits 0-7 the label
// (bit 31 set on leaf units, so a leaf never matches a byte), bit 8 "a leaf
// follows", bits 10-31 the offset to the children (shifted by 8 more when
// bit 9 is set); a leaf unit's low 31 bits are its value.
func unitLabel(u uint32) uint32  { return u & (1<<31 | 0xFF) }
func unitHasLeaf(u uint32) bool  { return u>>8&1 == 1 }
func unitValue(u uint32) uint32  { return u & (1<<31 - 1) }
func unitOffset(u uint32) uint32 { return u >> 10 << ((u & (1 << 9)) >> 6) }
func (cm *charsMap) unit(i uint32) (uint32, bool) {
	if int(i) >= len(cm.units) {
		return 0, false
	}
	return cm.units[i], true
}

// longest returns the replacement of the longest key that is a prefix of
// s, and that key's length (0 if none).
func (cm *charsMap) longest(s string) (string, int) {
	u, ok := cm.unit(0)
	if !ok {
		return "", 0
	}
	pos := unitOffset(u)
	n, val := 0, uint32(0)
	for i := 0; i < len(s); i++ {
		c := uint32(s[i])
		pos ^= c
		if u, ok = cm.unit(pos); !ok || unitLabel(u) != c {
			break
		}
		pos ^= unitOffset(u)
		if unitHasLeaf(u) {
			leaf, ok := cm.unit(pos)
			if !ok {
				break
			}
			n, val = i+1, unitValue(leaf)
		}
	}
	if n == 0 || int(val) >= len(cm.repl) {
		return "", 0
	}
	r := cm.repl[val:]
	if end := strings.IndexByte(string(r), 0); end >= 0 {
		r = r[:end]
	}
	return string(r), n
}

// normalizer applies a NormalizerSpec as SentencePiece does.
type normalizer struct {
	rules             *charsMap // nil: identity
	dummyPrefix       bool
	removeExtraSpaces bool
	escapeSpaces      bool
	user              []string // kept verbatim (user-defined symbols)
}

// prefix normalizes the start of s: a user-defined symbol stays as it is,
// else the longest rule applies, else one character is copied; a byte
// that starts no valid UTF-8 character becomes U+FFFD. It returns the
// normalized text and the bytes of s it consumed.
func (n *normalizer) prefix(s string) (string, int) {
	if l := longestUser(n.user, s); l > 0 {
		return s[:l], l
	}
	if n.rules != nil {
		if r, l := n.rules.longest(s); l > 0 {
			return r, l
		}
	}
	r, l := utf8.DecodeRuneInString(s)
	if r == utf8.RuneError && l <= 1 {
		return "\uFFFD", 1
	}
	return s[:l], l
}

// longestUser returns the length of the longest symbol of user that
// starts s, or 0.
func longestUser(user []string, s string) int {
	best := 0
	for _, u := range user {
		if len(u) > best && strings.HasPrefix(s, u) {
			best = len(u)
		}
	}
	return best
}

// normalize returns s as the model segments it: rules applied piecewise;
// with removeExtraSpaces, spaces dropped at the start and end and runs of
// them kept once; the dummy prefix; spaces made visible (U+2581) with
// escapeSpaces. Only U+0020 is a space here: the rules map other blanks
// to it.
func (n *normalizer) normalize(s string) string {
	if n.removeExtraSpaces {
		for s != "" {
			r, l := n.prefix(s)
			if r != " " {
				break
			}
			s = s[l:]
		}
	}
	if s == "" {
		return ""
	}
	var b strings.Builder
	sp := " "
	if n.escapeSpaces {
		sp = space
	}
	if n.dummyPrefix {
		b.WriteString(sp)
	}
	prevSpace := n.removeExtraSpaces
	for s != "" {
		r, l := n.prefix(s)
		s = s[l:]
		if prevSpace {
			r = strings.TrimLeft(r, " ")
		}
		if r != "" {
			if n.escapeSpaces {
				b.WriteString(strings.ReplaceAll(r, " ", space))
			} else {
				b.WriteString(r)
			}
			prevSpace = strings.HasSuffix(r, " ")
		}
		if !n.removeExtraSpaces {
			prevSpace = false
		}
	}
	out := b.String()
	if n.removeExtraSpaces {
		for strings.HasSuffix(out, sp) {
			out = out[:len(out)-len(sp)]
		}
	}
	return out
}

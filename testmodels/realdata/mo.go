// Package realdata builds the project's real-data benchmark: an
// English→French parallel corpus from the gettext catalogs (.mo files) that
// Debian packages ship, cleaned, de-duplicated and split deterministically.
// scripts/realdata/build.sh downloads the packages, runs this package's
// command (mocorpus), and trains the SentencePiece and fp32 models; its
// README.md gives the recipe, the committed files (data/) and the results.
package realdata

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
)

// Message is one catalog entry: the English msgid (the singular form of a
// plural entry) and its translation (msgstr, or msgstr[0] of a plural).
type Message struct {
	Context string // msgctxt, "" when absent
	ID      string
	Str     string
	Plural  bool
}

// moMagic is the first word of a .mo file in its writer's byte order.
const moMagic = 0x950412de

// ReadMO reads the messages of a compiled gettext catalog. The header entry
// (empty msgid) is left out.
func ReadMO(path string) ([]Message, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	msgs, err := ParseMO(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return msgs, nil
}

// ParseMO decodes a .mo file's bytes (either byte order).
func ParseMO(data []byte) ([]Message, error) {
	if len(data) < 28 {
		return nil, fmt.Errorf("not a gettext .mo file: %d bytes", len(data))
	}
	var order binary.ByteOrder
	switch {
	case binary.LittleEndian.Uint32(data) == moMagic:
		order = binary.LittleEndian
	case binary.BigEndian.Uint32(data) == moMagic:
		order = binary.BigEndian
	default:
		return nil, fmt.Errorf("not a gettext .mo file: magic %#x", binary.LittleEndian.Uint32(data))
	}
	if rev := order.Uint32(data[4:]) >> 16; rev > 1 {
		return nil, fmt.Errorf("unsupported .mo major revision %d", rev)
	}
	n := int(order.Uint32(data[8:]))
	origs, trans := int(order.Uint32(data[12:])), int(order.Uint32(data[16:]))
	str := func(table, i int) (string, error) {
		at := table + 8*i
		if at < 0 || at+8 > len(data) {
			return "", fmt.Errorf("string table entry %d out of the file", i)
		}
		l, off := int(order.Uint32(data[at:])), int(order.Uint32(data[at+4:]))
		if off < 0 || l < 0 || off+l > len(data) {
			return "", fmt.Errorf("string %d (offset %d, length %d) out of the file", i, off, l)
		}
		return string(data[off : off+l]), nil
	}
	if n < 0 || n > len(data)/16 {
		return nil, fmt.Errorf("implausible message count %d", n)
	}
	var msgs []Message
	for i := range n {
		o, err := str(origs, i)
		if err != nil {
			return nil, err
		}
		t, err := str(trans, i)
		if err != nil {
			return nil, err
		}
		if o == "" {
			continue // the header
		}
		m := Message{}
		if ctx, id, ok := bytes.Cut([]byte(o), []byte{4}); ok {
			m.Context, o = string(ctx), string(id)
		}
		id, _, plural := bytes.Cut([]byte(o), []byte{0})
		s, _, _ := bytes.Cut([]byte(t), []byte{0})
		m.ID, m.Str, m.Plural = string(id), string(s), plural
		msgs = append(msgs, m)
	}
	return msgs, nil
}

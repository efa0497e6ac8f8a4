package spm

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/qatc/qatc/spm/spmpb"
	"google.golang.org/protobuf/proto"
)

// lines splits a file on \n only, as spm_encode reads it (a \r stays).
func lines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.TrimSuffix(string(data), "\n")
	return strings.Split(s, "\n")
}

// TestParity compares Encode and Decode with SentencePiece's own output on
// testdata/hard.txt (control characters, NFKC cases, case folding,
// unknown characters and runs of them, malformed UTF-8, byte fallback),
// for one model per normalizer; testdata/generate.sh wrote the expected
// files with spm_encode and spm_decode.
func TestParity(t *testing.T) {
	hard := lines(t, "testdata/hard.txt")
	for _, name := range []string{"nmt_nfkc", "nmt_nfkc_cf", "nfkc_cf", "bytes"} {
		t.Run(name, func(t *testing.T) {
			m, err := Load("testdata/" + name + ".model")
			if err != nil {
				t.Fatal(err)
			}
			ids := lines(t, "testdata/hard."+name+".ids")
			decoded := lines(t, "testdata/hard."+name+".decoded")
			if len(ids) != len(hard) || len(decoded) != len(hard) {
				t.Fatalf("%d lines, %d id lines, %d decoded lines", len(hard), len(ids), len(decoded))
			}
			for i, line := range hard {
				got := m.Encode(line)
				var g []string
				for _, id := range got {
					g = append(g, strconv.FormatInt(id, 10))
				}
				if s := strings.Join(g, " "); s != ids[i] {
					t.Errorf("line %d %q (normalized %q):\n got %s\nwant %s", i+1, line, m.Normalize(line), s, ids[i])
					continue
				}
				if d := m.Decode(got); d != decoded[i] {
					t.Errorf("line %d %q: decoded %q, spm_decode %q", i+1, line, d, decoded[i])
				}
			}
		})
	}
}

// TestRefusals: models the encoder cannot reproduce are refused with one
// line naming the reason, not read approximately.
func TestRefusals(t *testing.T) {
	data, err := os.ReadFile("testdata/nmt_nfkc.model")
	if err != nil {
		t.Fatal(err)
	}
	bytesModel, err := os.ReadFile("testdata/bytes.model")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		base []byte
		edit func(*spmpb.ModelProto)
		want string
	}{
		{"unigram", data, func(m *spmpb.ModelProto) { m.TrainerSpec.ModelType = spmpb.TrainerSpec_UNIGRAM.Enum() }, "type UNIGRAM is not BPE"},
		{"whitespace suffix", data, func(m *spmpb.ModelProto) { m.TrainerSpec.TreatWhitespaceAsSuffix = proto.Bool(true) }, "treat_whitespace_as_suffix"},
		{"rule without table", data, func(m *spmpb.ModelProto) { m.NormalizerSpec.PrecompiledCharsmap = nil }, "stores no precompiled_charsmap"},
		{"broken table", data, func(m *spmpb.ModelProto) { m.NormalizerSpec.PrecompiledCharsmap = []byte{0xff, 0xff, 0, 0, 1, 2, 3} }, "declares a 65535-byte trie"},
		{"no unknown piece", data, func(m *spmpb.ModelProto) { m.Pieces[1].Type = spmpb.ModelProto_SentencePiece_NORMAL.Enum() }, "no unknown piece"},
		{"duplicate piece", data, func(m *spmpb.ModelProto) { m.Pieces[10].Piece = m.Pieces[11].Piece }, "defined twice"},
		{"empty piece", data, func(m *spmpb.ModelProto) { m.Pieces[10].Piece = proto.String("") }, "piece 10 is empty"},
		{"byte pieces without byte fallback", bytesModel, func(m *spmpb.ModelProto) { m.TrainerSpec.ByteFallback = proto.Bool(false) }, "no byte fallback"},
		{"byte fallback without all bytes", bytesModel, func(m *spmpb.ModelProto) {
			for _, p := range m.Pieces {
				if p.GetPiece() == "<0x41>" {
					p.Type = spmpb.ModelProto_SentencePiece_NORMAL.Enum()
				}
			}
		}, "no piece <0x41>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &spmpb.ModelProto{}
			if err := proto.Unmarshal(tc.base, m); err != nil {
				t.Fatal(err)
			}
			tc.edit(m)
			b, err := proto.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Parse(b)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %v, want one line saying %q", err, tc.want)
			}
		})
	}
}

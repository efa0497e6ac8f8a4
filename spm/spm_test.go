package spm

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// The expected ids were written by SentencePiece itself:
//
//	spm_encode --model=../testmodels/demo/data/spm.model --output_format=id < testdata/sample.txt > testdata/sample.ids
func TestEncodeMatchesSentencePiece(t *testing.T) {
	m, err := Load("../testmodels/demo/data/spm.model")
	if err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, "testdata/sample.txt")
	want := readLines(t, "testdata/sample.ids")
	if len(lines) != len(want) {
		t.Fatalf("%d sentences, %d id lines", len(lines), len(want))
	}
	for i, line := range lines {
		got := m.Encode(line)
		var ids []string
		for _, id := range got {
			ids = append(ids, strconv.FormatInt(id, 10))
		}
		if g := strings.Join(ids, " "); g != want[i] {
			t.Errorf("line %d %q:\n got %s\nwant %s", i+1, line, g, want[i])
		}
	}
}

func TestDecodeRoundTrip(t *testing.T) {
	m, err := Load("../testmodels/demo/data/spm.model")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"the big dog sees a small cat .", "lo cano grando una gatta piccola vede ."} {
		if got := m.Decode(m.Encode(s)); got != s {
			t.Errorf("Decode(Encode(%q)) = %q", s, got)
		}
	}
	if got := m.Decode(m.Encode("a ☃ b")); !strings.Contains(got, "\u2047") {
		t.Errorf("unknown character decodes to %q, want the ⁇ mark", got)
	}
	if m.VocabSize() != 512 || m.PadID() != 0 || m.UnkID() != 1 || m.BosID() != 2 || m.EosID() != 3 {
		t.Errorf("vocab %d pad %d unk %d bos %d eos %d", m.VocabSize(), m.PadID(), m.UnkID(), m.BosID(), m.EosID())
	}
}

func TestBadModels(t *testing.T) {
	for name, data := range map[string][]byte{
		"empty":  {},
		"random": []byte("\xff\xff\xff\xff not a model"),
		"text":   []byte("hello world"),
	} {
		if _, err := Parse(data); err == nil {
			t.Errorf("%s: no error", name)
		} else if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: multi-line error %q", name, err)
		}
	}
	if _, err := Load("testdata/missing.model"); err == nil {
		t.Error("missing file: no error")
	}
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

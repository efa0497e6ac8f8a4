package realdata

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qatc/qatc/spm"
)

// writeMO encodes messages as a little- or big-endian .mo file, as msgfmt
// lays it out: header, originals table, translations table, strings.
func writeMO(order binary.ByteOrder, origs, trans []string) []byte {
	n := len(origs)
	head := 28
	otab, ttab := head, head+8*n
	off := ttab + 8*n
	buf := make([]byte, off)
	order.PutUint32(buf[0:], moMagic)
	order.PutUint32(buf[8:], uint32(n))
	order.PutUint32(buf[12:], uint32(otab))
	order.PutUint32(buf[16:], uint32(ttab))
	for i := range n {
		for _, t := range []struct {
			table int
			s     string
		}{{otab, origs[i]}, {ttab, trans[i]}} {
			order.PutUint32(buf[t.table+8*i:], uint32(len(t.s)))
			order.PutUint32(buf[t.table+8*i+4:], uint32(len(buf)))
			buf = append(buf, t.s...)
			buf = append(buf, 0)
		}
	}
	return buf
}

func TestParseMO(t *testing.T) {
	origs := []string{"", "Open", "menu\x04File", "%d file\x00%d files"}
	trans := []string{"Content-Type: text/plain; charset=UTF-8\n", "Ouvrir", "Fichier", "%d fichier\x00%d fichiers"}
	want := []Message{
		{ID: "Open", Str: "Ouvrir"},
		{Context: "menu", ID: "File", Str: "Fichier"},
		{ID: "%d file", Str: "%d fichier", Plural: true},
	}
	for _, order := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
		got, err := ParseMO(writeMO(order, origs, trans))
		if err != nil {
			t.Fatalf("%v: %v", order, err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%v: got %+v, want %+v", order, got, want)
		}
	}
}

func TestParseMOErrors(t *testing.T) {
	good := writeMO(binary.LittleEndian, []string{"a"}, []string{"b"})
	truncated := slices.Clone(good[:len(good)-3])
	badCount := slices.Clone(good)
	binary.LittleEndian.PutUint32(badCount[8:], 1<<30)
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"short", []byte("hello"), "not a gettext .mo file"},
		{"magic", make([]byte, 40), "not a gettext .mo file: magic"},
		{"truncated", truncated, "out of the file"},
		{"count", badCount, "implausible message count"},
	} {
		if _, err := ParseMO(tc.data); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

func TestClean(t *testing.T) {
	f := DefaultFilter
	for _, tc := range []struct {
		id, str string
		want    Pair
		ok      bool
	}{
		{"_Open File", "_Ouvrir le fichier", Pair{"Open File", "Ouvrir le fichier"}, true},
		{"&Quit", "&Quitter", Pair{"Quit", "Quitter"}, true},
		{"~Insert", "~Insérer", Pair{"Insert", "Insérer"}, true},
		{"file_name and dir_name", "file_name et dir_name", Pair{"file_name and dir_name", "file_name et dir_name"}, true},
		{"<b>Bold</b> &amp; text\n\tmore", "<b>Gras</b> &amp; texte\nplus", Pair{"Bold & text more", "Gras & texte plus"}, true},
		{"Loading…", "Chargement…", Pair{"Loading...", "Chargement..."}, true},
		{"Cannot open %s: %s", "Impossible d'ouvrir %s : %s", Pair{"Cannot open %s: %s", "Impossible d'ouvrir %s : %s"}, true},
		{"Cannot open %s", "Impossible d'ouvrir", Pair{}, false}, // placeholder lost
		{"%(name)s was born", "%(nom)s est né", Pair{}, false},   // renamed placeholder
		{"Paste", "", Pair{}, false},                                             // untranslated
		{"OK", "OK", Pair{}, false},                                              // copied
		{"translator-credits", "Jean Dupont", Pair{}, false},                     // credits
		{"%1$s%2$s%3$s", "%1$s%2$s%3$s ", Pair{}, false},                         // no text
		{"Short", strings.Repeat("très long ", 10), Pair{}, false},               // ratio
		{strings.Repeat("word ", 51), strings.Repeat("mot ", 51), Pair{}, false}, // too long
		{"bad \xff", "mauvais", Pair{}, false},                                   // not UTF-8
	} {
		got, ok := f.Clean(Message{ID: tc.id, Str: tc.str})
		if ok != tc.ok || got != tc.want {
			t.Errorf("Clean(%q, %q) = %q, %v; want %q, %v", tc.id, tc.str, got, ok, tc.want, tc.ok)
		}
	}
}

func TestDedup(t *testing.T) {
	got := Dedup([]Pair{{"a", "x"}, {"b", "y"}, {"a", "z"}, {"a", "z"}, {"b", "w"}})
	want := []Pair{{"a", "z"}, {"b", "y"}} // most frequent, then first seen
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestSplit(t *testing.T) {
	var pairs []Pair
	for i := range 300 {
		w := strings.Repeat("w ", i%6+1)
		pairs = append(pairs, Pair{w + string(rune('a'+i%26)) + strings.Repeat("x", i/26), "t"})
	}
	sz := Sizes{Valid: 20, Test: 30, HeldMin: 3, HeldMax: 4}
	train, valid, test := Split(pairs, sz)
	if len(train)+len(valid)+len(test) != len(pairs) || len(valid) != 20 || len(test) != 30 {
		t.Fatalf("sizes %d/%d/%d of %d", len(train), len(valid), len(test), len(pairs))
	}
	for _, p := range append(valid, test...) {
		if n := len(strings.Fields(p.Src)); n < 3 || n > 4 {
			t.Errorf("held-out %q has %d words", p.Src, n)
		}
	}
	// The split depends on the set of pairs, not their order.
	rev := slices.Clone(pairs)
	slices.Reverse(rev)
	train2, valid2, test2 := Split(rev, sz)
	if !slices.Equal(train, train2) || !slices.Equal(valid, valid2) || !slices.Equal(test, test2) {
		t.Error("the split changed with the input's order")
	}
}

func TestBuild(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "a", "fr", "LC_MESSAGES")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var origs, trans []string
	for i := range 40 {
		origs = append(origs, "open the file number "+strings.Repeat("i", i+1))
		trans = append(trans, "ouvrir le fichier numéro "+strings.Repeat("i", i+1))
	}
	if err := os.WriteFile(filepath.Join(dir, "x.mo"), writeMO(binary.LittleEndian, origs, trans), 0o644); err != nil {
		t.Fatal(err)
	}
	// Another language's catalog is not read.
	de := filepath.Join(root, "a", "de", "LC_MESSAGES")
	os.MkdirAll(de, 0o755)
	os.WriteFile(filepath.Join(de, "x.mo"), []byte("junk"), 0o644)
	cats, err := FindCatalogs(root, "fr")
	if err != nil || len(cats) != 1 {
		t.Fatalf("FindCatalogs: %v, %v", cats, err)
	}
	out := filepath.Join(root, "out")
	st, err := Build(cats, "fr", out, DefaultFilter, Sizes{Valid: 5, Test: 5, HeldMin: 3, HeldMax: 40})
	if err != nil {
		t.Fatal(err)
	}
	if st != (Stats{Catalogs: 1, Messages: 40, Cleaned: 40, Unique: 40, Train: 30, Valid: 5, Test: 5}) {
		t.Errorf("stats %+v", st)
	}
	src, _ := os.ReadFile(filepath.Join(out, "test.en"))
	tgt, _ := os.ReadFile(filepath.Join(out, "test.fr"))
	s, d := strings.Split(strings.TrimSpace(string(src)), "\n"), strings.Split(strings.TrimSpace(string(tgt)), "\n")
	if len(s) != 5 || len(d) != 5 || strings.TrimPrefix(s[0], "open the file number ") != strings.TrimPrefix(d[0], "ouvrir le fichier numéro ") {
		t.Errorf("test split misaligned: %q / %q", s, d)
	}
	if _, err := Build(cats, "fr", out, DefaultFilter, Sizes{Valid: 50, Test: 5, HeldMin: 3, HeldMax: 40}); err == nil || !strings.Contains(err.Error(), "give more catalogs") {
		t.Errorf("too few pairs: got %v", err)
	}
}

// TestCommittedData checks the benchmark's committed files: the held-out
// splits match the corpus's checksums, are aligned, and the SentencePiece
// model reproduces their text (so greedy BLEU against them is not capped by
// the tokenizer).
func TestCommittedData(t *testing.T) {
	sums, err := os.ReadFile("data/SHA256SUMS")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		f := strings.Fields(line)
		want[f[1]] = f[0]
	}
	m, err := spm.Load("data/spm.model")
	if err != nil {
		t.Fatal(err)
	}
	if m.VocabSize() != 4000 || m.PadID() != 0 || m.UnkID() != 1 || m.BosID() != 2 || m.EosID() != 3 {
		t.Errorf("spm model: vocabulary %d, pad/unk/bos/eos %d/%d/%d/%d", m.VocabSize(), m.PadID(), m.UnkID(), m.BosID(), m.EosID())
	}
	for _, split := range []string{"valid", "test"} {
		var lines [2][]string
		for i, lang := range []string{"en", "fr"} {
			name := split + "." + lang
			data, err := os.ReadFile(filepath.Join("data", name))
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(data)
			if got := hex.EncodeToString(sum[:]); got != want[name] {
				t.Errorf("%s: sha256 %s, SHA256SUMS says %s", name, got, want[name])
			}
			lines[i] = strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
		}
		if len(lines[0]) != 1000 || len(lines[1]) != 1000 {
			t.Errorf("%s: %d and %d lines, want 1000", split, len(lines[0]), len(lines[1]))
		}
		same := 0
		for _, l := range append(lines[0], lines[1]...) {
			if m.Decode(m.Encode(l)) == l {
				same++
			}
		}
		if n := len(lines[0]) + len(lines[1]); same < n*99/100 {
			t.Errorf("%s: spm round-trips %d of %d lines, want 99%%", split, same, n)
		}
	}
}

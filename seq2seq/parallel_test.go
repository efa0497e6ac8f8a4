package seq2seq

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writeFiles writes src and tgt into a temporary directory and returns
// their paths.
func writeFiles(t *testing.T, src, tgt string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	s, g := filepath.Join(dir, "train.src"), filepath.Join(dir, "train.tgt")
	if err := os.WriteFile(s, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(g, []byte(tgt), 0o644); err != nil {
		t.Fatal(err)
	}
	return s, g
}

func TestReadParallel(t *testing.T) {
	s, g := writeFiles(t, "5 6 7\r\n8\n9 10 11 12 13\n", "7 6 5\n8 8\n4")
	ds, err := ReadParallel(s, g, DataOptions{Vocab: 20, Special: DefaultSpecial(), MaxLen: 5})
	if err != nil {
		t.Fatal(err)
	}
	want := []Example{
		{Line: 1, Src: []int64{5, 6, 7, 3}, Tgt: []int64{7, 6, 5, 3}},
		{Line: 2, Src: []int64{8, 3}, Tgt: []int64{8, 8, 3}},
	}
	if !reflect.DeepEqual(ds.Examples, want) {
		t.Errorf("examples = %v, want %v", ds.Examples, want)
	}
	if ds.Dropped != 1 {
		t.Errorf("dropped %d pairs, want 1 (line 3's source has 6 tokens with EOS)", ds.Dropped)
	}
	if ds.Tokens() != 7 {
		t.Errorf("Tokens = %d, want 7", ds.Tokens())
	}
}

func TestReadParallelErrors(t *testing.T) {
	for _, tc := range []struct {
		name, src, tgt string
		maxLen         int
		want           string // substring of the error
	}{
		{"empty source", "", "4 5\n", 0, "train.src is empty"},
		{"empty target", "4 5\n", "", 0, "train.tgt is empty"},
		{"line counts", "4\n5\n6\n", "4\n5\n", 0, "train.src has 3 lines but"},
		{"empty line", "4\n\n6\n", "4\n5\n6\n", 0, "train.src:2: empty line"},
		{"blank line", "4\n5\n", "4\n  \t\n", 0, "train.tgt:2: empty line"},
		{"beyond vocabulary", "4 5\n6 20 7\n", "4\n5\n", 0, "train.src:2: token id 20 is beyond the vocabulary of 20 tokens"},
		{"negative id", "4\n", "-1\n", 0, "train.tgt:1: token id -1 is beyond"},
		{"padding id", "4 0\n", "4\n", 0, "train.src:1: token id 0 is the padding id"},
		{"not a number", "4 x5\n", "4\n", 0, `train.src:1: field 2 "x5" is not a token id`},
		{"all too long", "4 5 6\n", "4\n", 3, "all 1 pairs are longer than the maximum length 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, g := writeFiles(t, tc.src, tc.tgt)
			_, err := ReadParallel(s, g, DataOptions{Vocab: 20, Special: DefaultSpecial(), MaxLen: tc.maxLen})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans several lines: %q", err)
			}
		})
	}
	if _, err := ReadParallel("/nonexistent/a", "/nonexistent/b", DataOptions{Vocab: 20}); err == nil || !strings.Contains(err.Error(), "/nonexistent/a") {
		t.Errorf("missing file: error %v does not name it", err)
	}
	s, g := writeFiles(t, "4\n", "4\n")
	if _, err := ReadParallel(s, g, DataOptions{Vocab: 20, Special: Special{Pad: 0, BOS: 2, EOS: 30}}); err == nil || !strings.Contains(err.Error(), "special id 30") {
		t.Errorf("eos outside the vocabulary: error %v", err)
	}
}

// charTokenizer is a Tokenizer over text for the tests: one id per byte,
// 'a' = 4.
type charTokenizer struct{}

func (charTokenizer) Encode(s string) ([]int64, error) {
	var ids []int64
	for _, c := range []byte(s) {
		ids = append(ids, int64(c-'a')+4)
	}
	return ids, nil
}

func (charTokenizer) Decode(ids []int64) string {
	var b []byte
	for _, id := range ids {
		b = append(b, byte(id-4)+'a')
	}
	return string(b)
}

func (charTokenizer) VocabSize() int { return 30 }

func TestReadParallelTokenizer(t *testing.T) {
	s, g := writeFiles(t, "abc\nz\n", "cba\nzz\n")
	ds, err := ReadParallel(s, g, DataOptions{Tokenizer: charTokenizer{}, Special: DefaultSpecial()})
	if err != nil {
		t.Fatal(err)
	}
	if want := []int64{4, 5, 6, 3}; !reflect.DeepEqual(ds.Examples[0].Src, want) {
		t.Errorf("src = %v, want %v", ds.Examples[0].Src, want)
	}
	// The model's vocabulary, when given, bounds the ids, not the
	// tokenizer's.
	_, err = ReadParallel(s, g, DataOptions{Tokenizer: charTokenizer{}, Vocab: 20, Special: DefaultSpecial()})
	if err == nil || !strings.Contains(err.Error(), "train.src:2: token id 29 is beyond the vocabulary of 20") {
		t.Errorf("error %v", err)
	}
}

// testdata/tiny_spm.model is a 200-piece BPE model (pad 0, unk 1, bos 2,
// eos 3; identity normalization, no dummy prefix, whitespace kept)
// trained by spm_train on the first 200 kB of Romeo and Juliet.
func TestReadParallelSentencePiece(t *testing.T) {
	sp, err := LoadSentencePiece("testdata/tiny_spm.model")
	if err != nil {
		t.Fatal(err)
	}
	const text = "Romeo, thou art the man"
	ids, err := sp.Encode(text)
	if err != nil || len(ids) < 5 || sp.VocabSize() != 200 {
		t.Fatalf("Encode = %v, vocabulary %d", ids, sp.VocabSize())
	}
	if got := sp.Decode(ids); got != text {
		t.Errorf("Decode(Encode(s)) = %q", got)
	}
	s, g := writeFiles(t, text+"\n", "thou\n")
	ds, err := ReadParallel(s, g, DataOptions{Tokenizer: sp, Special: DefaultSpecial()})
	if err != nil {
		t.Fatal(err)
	}
	if e := ds.Examples[0]; len(e.Src) != len(ids)+1 || e.Src[len(e.Src)-1] != 3 {
		t.Errorf("source %v, want %v + EOS", e.Src, ids)
	}
	if _, err := LoadSentencePiece(s); err == nil || !strings.Contains(err.Error(), "train.src") || strings.Contains(err.Error(), "\n") {
		t.Errorf("a text file as model: error %v", err)
	}
	// spm_train's defaults (dummy prefix, whitespace folding, nmt_nfkc)
	// read too: the demo's model.
	demo, err := LoadSentencePiece("../testmodels/demo/data/spm.model")
	if err != nil {
		t.Fatal(err)
	}
	ids, err = demo.Encode("  the big  dog .")
	if got := demo.Decode(ids); err != nil || got != "the big dog ." {
		t.Errorf("demo model round trip: %q, %v", got, err)
	}
}

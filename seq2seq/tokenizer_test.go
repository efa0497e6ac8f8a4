package seq2seq

import (
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// spmModel writes a small SentencePiece model protobuf: pieces <unk>, <s>,
// </s>, then ▁ a b c ▁a ab ▁ab ▁c with falling scores (a BPE merge takes
// the highest-scoring piece). normalizer is the NormalizerSpec's fields as
// (number, value) pairs; nil leaves the spec out.
func spmModel(t *testing.T, modelType uint64, normalizer [][2]uint64) string {
	t.Helper()
	var b []byte
	for i, p := range []struct {
		piece string
		typ   uint64
	}{{"<unk>", 2}, {"<s>", 3}, {"</s>", 3}, {"▁", 1}, {"a", 1}, {"b", 1}, {"c", 1}, {"▁a", 1}, {"ab", 1}, {"▁ab", 1}, {"▁c", 1}} {
		var sp []byte
		sp = protowire.AppendTag(sp, 1, protowire.BytesType)
		sp = protowire.AppendString(sp, p.piece)
		sp = protowire.AppendTag(sp, 2, protowire.Fixed32Type)
		sp = protowire.AppendFixed32(sp, math.Float32bits(-float32(i)))
		sp = protowire.AppendTag(sp, 3, protowire.VarintType)
		sp = protowire.AppendVarint(sp, p.typ)
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, sp)
	}
	var ts []byte
	ts = protowire.AppendTag(ts, 3, protowire.VarintType)
	ts = protowire.AppendVarint(ts, modelType)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, ts)
	if normalizer != nil {
		var ns []byte
		ns = protowire.AppendTag(ns, 1, protowire.BytesType)
		ns = protowire.AppendString(ns, "identity")
		for _, f := range normalizer {
			ns = protowire.AppendTag(ns, protowire.Number(f[0]), protowire.VarintType)
			ns = protowire.AppendVarint(ns, f[1])
		}
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendBytes(b, ns)
	}
	path := filepath.Join(t.TempDir(), "spm.model")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSentencePiece(t *testing.T) {
	const bpe = 2
	for _, tc := range []struct {
		name       string
		normalizer [][2]uint64
		enc        map[string][]int64
	}{
		// spm_train's defaults: a dummy "▁" before the text, runs of
		// spaces collapsed. "▁ab▁c" merges ▁a, then ▁ab, then ▁c. The
		// identity rule leaves a tab a tab (only a normalization table
		// maps blanks to spaces), so it stays, unknown, as spm_encode
		// keeps it: ▁ab ▁ <unk> ▁c.
		{"defaults written", [][2]uint64{{3, 1}, {4, 1}, {5, 1}},
			map[string][]int64{"ab c": {9, 10}, "  ab   c ": {9, 10}, "  ab \t  c ": {9, 3, 0, 10}, "": {}}},
		{"defaults absent", [][2]uint64{}, map[string][]int64{"ab c": {9, 10}}},
		{"no spec", nil, map[string][]int64{"ab c": {9, 10}}},
		// Without the options the text is taken as it is: "ab▁c".
		{"options off", [][2]uint64{{3, 0}, {4, 0}},
			map[string][]int64{"ab c": {8, 10}, "ab  c": {8, 3, 10}}},
	} {
		tok, err := LoadSentencePiece(spmModel(t, bpe, tc.normalizer))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if tok.VocabSize() != 11 {
			t.Errorf("%s: vocab %d, want 11", tc.name, tok.VocabSize())
		}
		for text, want := range tc.enc {
			got, err := tok.Encode(text)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s: Encode(%q) = %v, want %v", tc.name, text, got, want)
			}
		}
		ids, _ := tok.Encode("ab c")
		if got := tok.Decode(ids); got != "ab c" {
			t.Errorf("%s: Decode(%v) = %q, want %q", tc.name, ids, got, "ab c")
		}
		if got := tok.Decode([]int64{4, 1, 99, 5}); got != "a ⁇ b" {
			t.Errorf("%s: Decode with control and out-of-range ids = %q, want %q", tc.name, got, "a ⁇ b")
		}
	}

	if _, err := LoadSentencePiece(spmModel(t, 1, nil)); err == nil || !strings.Contains(err.Error(), "BPE") {
		t.Errorf("unigram model: got %v, want an error asking for BPE", err)
	}
	junk := filepath.Join(t.TempDir(), "junk.model")
	os.WriteFile(junk, []byte("not a protobuf \xff\xff\xff"), 0o644)
	if _, err := LoadSentencePiece(junk); err == nil || !strings.Contains(err.Error(), "junk.model") {
		t.Errorf("junk file: got %v", err)
	}
	if _, err := LoadSentencePiece(filepath.Join(t.TempDir(), "missing.model")); err == nil {
		t.Error("missing file: no error")
	}
}

func TestCheckVocab(t *testing.T) {
	tok, err := LoadSentencePiece(spmModel(t, 2, nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckVocab(tok, "demo.model", 11, "m.onnx"); err != nil {
		t.Errorf("matching vocabularies: %v", err)
	}
	err = CheckVocab(tok, "demo.model", 1000, "m.onnx")
	if err == nil || !strings.Contains(err.Error(), "demo.model has 11 pieces but m.onnx has a vocabulary of 1000") {
		t.Errorf("mismatch: got %v", err)
	}
	if err := CheckVocab(IDs{}, "ids", 1000, "m.onnx"); err != nil {
		t.Errorf("id files: %v", err)
	}
}

func TestIDs(t *testing.T) {
	ids, err := IDs{}.Encode(" 5 17  3 ")
	if err != nil || !reflect.DeepEqual(ids, []int64{5, 17, 3}) {
		t.Errorf("Encode = %v, %v", ids, err)
	}
	if s := (IDs{}).Decode([]int64{5, 17}); s != "5 17" {
		t.Errorf("Decode = %q", s)
	}
	for _, bad := range []string{"5 x 3", "5 -1"} {
		if _, err := (IDs{}).Encode(bad); err == nil || !strings.Contains(err.Error(), "field 2") {
			t.Errorf("Encode(%q): %v", bad, err)
		}
	}
}

package demo

import (
	"strings"
	"testing"
)

func TestGenerateIsDeterministic(t *testing.T) {
	a, b := Generate(1, 200), Generate(1, 200)
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("pair %d differs between two runs: %v vs %v", i, a[i], b[i])
		}
	}
	if c := Generate(2, 200); c[0] == a[0] && c[1] == a[1] {
		t.Errorf("seeds 1 and 2 start alike")
	}
}

// The target is verb-final: the word before the final period is a
// conjugated verb (or the negation's closing "mai"), and the agreement
// rules hold on a simple sentence built by hand from the tables.
func TestGrammar(t *testing.T) {
	verbForms := map[string]bool{"mai": true}
	for _, v := range verbs {
		for _, e := range verbEndings {
			verbForms[v.tgt+e[0]] = true
			verbForms[v.tgt+e[1]] = true
		}
	}
	for i, p := range Generate(9, 2000) {
		words := strings.Fields(p.Tgt)
		if len(words) < 4 || words[len(words)-1] != "." {
			t.Fatalf("pair %d: target %q does not end in a period", i, p.Tgt)
		}
		if !verbForms[words[len(words)-2]] {
			t.Errorf("pair %d: target %q is not verb-final", i, p.Tgt)
		}
		if strings.Count(p.Src, " .") != 1 || strings.Count(p.Tgt, " .") != 1 {
			t.Errorf("pair %d: one period per sentence: %q / %q", i, p.Src, p.Tgt)
		}
	}
	// "the cat" is feminine singular: la gatta; plural: le gatte.
	cat := nouns[1]
	if got := determiners[1][cat.gender][0] + " " + cat.tgt + endings[cat.gender][0]; got != "la gatta" {
		t.Errorf("the cat → %q", got)
	}
	if got := determiners[1][cat.gender][1] + " " + cat.tgt + endings[cat.gender][1]; got != "le gatte" {
		t.Errorf("the cats → %q", got)
	}
}

func TestSplitsAreMostlyDisjoint(t *testing.T) {
	train := map[string]bool{}
	for _, p := range Generate(Splits[0].Seed, Splits[0].Size) {
		train[p.Src] = true
	}
	seen := 0
	test := Generate(Splits[2].Seed, Splits[2].Size)
	for _, p := range test {
		if train[p.Src] {
			seen++
		}
	}
	// Short sentences recur by chance; most test sentences are new.
	if seen > len(test)/5 {
		t.Errorf("%d of %d test sentences occur in the training set", seen, len(test))
	}
	t.Logf("%d of %d test sentences occur in the training set", seen, len(test))
}

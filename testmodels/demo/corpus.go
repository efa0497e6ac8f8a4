// Package demo generates the demo translation task: a synthetic parallel
// corpus from an English-like source language into an invented target
// language, and holds the SentencePiece model and trained fp32 transformer
// made from it (see README.md in this directory for how they were made).
//
// The task has the structure that makes translation harder than copying:
// the target is verb-final (SOV) with adjectives after their noun,
// determiners and adjectives agree with the noun's gender and number, verbs
// agree with their subject and carry tense suffixes, negation wraps the
// verb, and noun-noun compounds become single words with the head first.
package demo

import (
	"math/rand/v2"
	"strings"
)

// Pair is one sentence and its translation.
type Pair struct{ Src, Tgt string }

type noun struct {
	en, enPl string
	tgt      string // stem; gender suffix and plural are added
	gender   int    // 0 masculine, 1 feminine, 2 neuter
}

type verb struct {
	en3, enBase, enPast string // sees, see, saw
	tgt                 string // stem
}

type adj struct{ en, tgt string }

var nouns = []noun{
	{"dog", "dogs", "can", 0}, {"cat", "cats", "gatt", 1}, {"house", "houses", "cas", 1},
	{"door", "doors", "port", 1}, {"child", "children", "bimb", 0}, {"teacher", "teachers", "maestr", 0},
	{"book", "books", "libr", 2}, {"garden", "gardens", "giardin", 2}, {"tree", "trees", "alber", 2},
	{"car", "cars", "vettur", 1}, {"river", "rivers", "fium", 0}, {"bird", "birds", "uccell", 0},
	{"window", "windows", "finestr", 1}, {"apple", "apples", "mel", 2}, {"city", "cities", "citt", 1},
	{"friend", "friends", "amic", 0}, {"letter", "letters", "letter", 1}, {"table", "tables", "tavol", 2},
	{"horse", "horses", "cavall", 0}, {"flower", "flowers", "fior", 2}, {"road", "roads", "strad", 1},
	{"king", "kings", "re", 0}, {"queen", "queens", "regin", 1}, {"boat", "boats", "barc", 1},
	{"school", "schools", "scuol", 1}, {"village", "villages", "villagg", 2}, {"mountain", "mountains", "mont", 0},
	{"farmer", "farmers", "contadin", 0}, {"bread", "breads", "pan", 2}, {"song", "songs", "canzon", 1},
}

var verbs = []verb{
	{"sees", "see", "saw", "ved"}, {"likes", "like", "liked", "am"}, {"finds", "find", "found", "trov"},
	{"carries", "carry", "carried", "port"}, {"follows", "follow", "followed", "segu"}, {"paints", "paint", "painted", "diping"},
	{"watches", "watch", "watched", "guard"}, {"helps", "help", "helped", "aiut"}, {"calls", "call", "called", "chiam"},
	{"builds", "build", "built", "costru"}, {"opens", "open", "opened", "apr"}, {"sells", "sell", "sold", "vend"},
}

var adjs = []adj{
	{"big", "grand"}, {"small", "piccol"}, {"old", "vecch"}, {"new", "nuov"}, {"red", "ross"},
	{"green", "verd"}, {"happy", "felic"}, {"quiet", "quiet"}, {"strong", "fort"}, {"beautiful", "bell"},
	{"dark", "scur"}, {"young", "giovan"},
}

// gender and number endings of nouns and adjectives: [gender][plural].
var endings = [3][2]string{{"o", "i"}, {"a", "e"}, {"u", "ua"}}

// determiners: [definite][gender][plural].
var determiners = [2][3][2]string{
	{{"un", "dei"}, {"una", "delle"}, {"uno", "degli"}},
	{{"lo", "li"}, {"la", "le"}, {"lu", "lua"}},
}

// verb suffixes: [tense][plural subject]; tense 0 present, 1 past, 2 future.
var verbEndings = [3][2]string{{"e", "ono"}, {"eva", "evano"}, {"era", "eranno"}}

type phrase struct {
	src, tgt string
	plural   bool
}

// nounPhrase makes a determiner phrase, possibly with an adjective and a
// noun-noun compound ("the house door" → "la portacasa").
func nounPhrase(r *rand.Rand) phrase {
	n := nouns[r.IntN(len(nouns))]
	plural := r.IntN(3) == 0
	definite := r.IntN(2)
	var src []string
	if definite == 1 {
		src = append(src, "the")
	} else if plural {
		src = append(src, "some")
	} else {
		src = append(src, "a")
	}
	var a *adj
	if r.IntN(2) == 0 {
		a = &adjs[r.IntN(len(adjs))]
		src = append(src, a.en)
	}
	stem := n.tgt
	if r.IntN(4) == 0 { // compound: modifier noun before the head in the source
		m := nouns[r.IntN(len(nouns))]
		if m.en != n.en {
			src = append(src, m.en)
			stem = n.tgt + endings[n.gender][0] + m.tgt // head first, modifier joined on
			if plural {
				stem = n.tgt + endings[n.gender][1] + m.tgt
			}
		}
	}
	num := 0
	if plural {
		num = 1
		src = append(src, n.enPl)
	} else {
		src = append(src, n.en)
	}
	word := stem
	if stem == n.tgt {
		word = stem + endings[n.gender][num]
	}
	tgt := []string{determiners[definite][n.gender][num], word}
	if a != nil {
		tgt = append(tgt, a.tgt+endings[n.gender][num])
	}
	return phrase{strings.Join(src, " "), strings.Join(tgt, " "), plural}
}

// sentence makes one source/target pair: subject, verb (tense, negation),
// object, and sometimes a prepositional phrase or a subordinate clause.
func sentence(r *rand.Rand, depth int) Pair {
	subj, obj := nounPhrase(r), nounPhrase(r)
	v := verbs[r.IntN(len(verbs))]
	tense := r.IntN(3)
	neg := r.IntN(4) == 0
	num := 0
	if subj.plural {
		num = 1
	}
	var srcVerb string
	switch {
	case tense == 0 && !neg && !subj.plural:
		srcVerb = v.en3
	case tense == 0 && !neg:
		srcVerb = v.enBase
	case tense == 0 && subj.plural:
		srcVerb = "do not " + v.enBase
	case tense == 0:
		srcVerb = "does not " + v.enBase
	case tense == 1 && neg:
		srcVerb = "did not " + v.enBase
	case tense == 1:
		srcVerb = v.enPast
	case neg:
		srcVerb = "will not " + v.enBase
	default:
		srcVerb = "will " + v.enBase
	}
	tgtVerb := v.tgt + verbEndings[tense][num]
	if neg {
		tgtVerb = "non " + tgtVerb + " mai"
	}
	src := subj.src + " " + srcVerb + " " + obj.src
	tgt := subj.tgt + " " + obj.tgt
	if r.IntN(4) == 0 {
		place := nounPhrase(r)
		src += " near " + place.src
		tgt += " presso " + place.tgt
	}
	tgt += " " + tgtVerb
	if depth == 0 && r.IntN(5) == 0 {
		sub := sentence(r, 1)
		src += " because " + sub.Src
		tgt += " perche " + sub.Tgt
	}
	if depth > 0 {
		return Pair{src, tgt}
	}
	return Pair{src + " .", tgt + " ."}
}

// Generate returns n sentence pairs, the same for the same seed.
func Generate(seed uint64, n int) []Pair {
	r := rand.New(rand.NewPCG(seed, 0x6a09e667f3bcc909))
	out := make([]Pair, n)
	for i := range out {
		out[i] = sentence(r, 0)
	}
	return out
}

// Splits are the seeds and sizes of the demo corpus's train, valid and
// test sets; distinct seeds keep them disjoint in practice.
var Splits = []struct {
	Name string
	Seed uint64
	Size int
}{
	{"train", 1, 40000},
	{"valid", 2, 500},
	{"test", 3, 500},
}

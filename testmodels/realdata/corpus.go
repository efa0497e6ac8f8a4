package realdata

import (
	"cmp"
	"hash/fnv"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Pair is one English sentence and its translation.
type Pair struct{ Src, Tgt string }

// Filter bounds the pairs that Clean keeps.
type Filter struct {
	MaxWords  int     // source words at most
	MaxChars  int     // characters of either side at most
	MaxRatio  float64 // longer/shorter character length at most (for pairs over 12 characters)
	MinLetter float64 // share of letters among the non-space characters, at least
}

// DefaultFilter is the benchmark's filter.
var DefaultFilter = Filter{MaxWords: 50, MaxChars: 400, MaxRatio: 2.5, MinLetter: 0.6}

var (
	tagRE    = regexp.MustCompile(`</?[A-Za-z][^<>]*>`)
	entityRE = regexp.MustCompile(`&(amp|lt|gt|quot|apos|nbsp|#[0-9]+);`)
	// A keyboard accelerator: GTK's _, KDE's & and LibreOffice's ~ before a
	// letter or digit.
	accelRE = regexp.MustCompile(`[_&~]([\pL\pN])`)
	// printf, Python and Qt placeholders: %s, %1$d, %(name)s, %1, {0}.
	placeholderRE = regexp.MustCompile(`%(\([A-Za-z_]+\))?[-+ #0-9.$*lhqzjtL]*[a-zA-Z%]|\{[0-9A-Za-z_]*\}`)
	spaceRE       = regexp.MustCompile(`[\s\p{Zs}]+`) // non-breaking spaces too
	junkIDs       = []string{"translator-credits", "translator_credits", "NAME OF TRANSLATORS", "EMAIL OF TRANSLATORS", "Your names", "Your emails"}
)

var entities = map[string]string{"amp": "&", "lt": "<", "gt": ">", "quot": `"`, "apos": "'", "nbsp": " "}

// cleanText strips markup and accelerators and folds whitespace.
func cleanText(s string) string {
	s = tagRE.ReplaceAllString(s, " ")
	s = entityRE.ReplaceAllStringFunc(s, func(e string) string {
		name := e[1 : len(e)-1]
		if r, ok := entities[name]; ok {
			return r
		}
		return " " // numeric character references: rare, dropped
	})
	// Only a single marker is an accelerator; several mean the character
	// is part of the text (file_name, A & B).
	if ms := accelRE.FindAllStringIndex(s, -1); len(ms) == 1 && strings.Count(s, s[ms[0][0]:ms[0][0]+1]) == 1 {
		s = s[:ms[0][0]] + s[ms[0][0]+1:]
	}
	s = strings.ReplaceAll(s, "…", "...")
	return strings.TrimSpace(spaceRE.ReplaceAllString(s, " "))
}

// placeholders returns the sorted placeholders of s, which a faithful
// translation keeps (perhaps reordered).
func placeholders(s string) []string {
	p := placeholderRE.FindAllString(s, -1)
	slices.Sort(p)
	return p
}

func letterShare(s string) float64 {
	var letters, all int
	for _, r := range s {
		if unicode.IsSpace(r) {
			continue
		}
		all++
		if unicode.IsLetter(r) {
			letters++
		}
	}
	if all == 0 {
		return 0
	}
	return float64(letters) / float64(all)
}

// Clean turns a catalog message into a pair, or reports false when the
// message is not a usable sentence pair: untranslated or copied, not valid
// UTF-8, a translator-credits entry, mostly symbols or code, placeholders
// that do not match, or outside the filter's lengths.
func (f Filter) Clean(m Message) (Pair, bool) {
	if !utf8.ValidString(m.ID) || !utf8.ValidString(m.Str) || m.Str == "" {
		return Pair{}, false
	}
	for _, j := range junkIDs {
		if strings.Contains(m.ID, j) || strings.Contains(m.Context, j) {
			return Pair{}, false
		}
	}
	p := Pair{cleanText(m.ID), cleanText(m.Str)}
	if p.Src == "" || p.Tgt == "" || p.Src == p.Tgt {
		return Pair{}, false
	}
	if letterShare(p.Src) < f.MinLetter || letterShare(p.Tgt) < f.MinLetter {
		return Pair{}, false
	}
	if len(strings.Fields(p.Src)) > f.MaxWords {
		return Pair{}, false
	}
	ls, lt := utf8.RuneCountInString(p.Src), utf8.RuneCountInString(p.Tgt)
	if ls > f.MaxChars || lt > f.MaxChars {
		return Pair{}, false
	}
	if max(ls, lt) > 12 && float64(max(ls, lt)) > f.MaxRatio*float64(min(ls, lt)) {
		return Pair{}, false
	}
	if !slices.Equal(placeholders(p.Src), placeholders(p.Tgt)) {
		return Pair{}, false
	}
	return p, true
}

// Dedup keeps one pair per source sentence: its most frequent translation,
// the earliest seen on a tie, so that no source is in two splits.
func Dedup(pairs []Pair) []Pair {
	type cand struct {
		first int
		count map[string]int
		order []string
	}
	bySrc := map[string]*cand{}
	var srcs []string
	for i, p := range pairs {
		c := bySrc[p.Src]
		if c == nil {
			c = &cand{first: i, count: map[string]int{}}
			bySrc[p.Src] = c
			srcs = append(srcs, p.Src)
		}
		if c.count[p.Tgt] == 0 {
			c.order = append(c.order, p.Tgt)
		}
		c.count[p.Tgt]++
	}
	out := make([]Pair, 0, len(srcs))
	for _, s := range srcs {
		c := bySrc[s]
		best := c.order[0]
		for _, t := range c.order[1:] {
			if c.count[t] > c.count[best] {
				best = t
			}
		}
		out = append(out, Pair{s, best})
	}
	return out
}

// Sizes of the held-out splits and the source lengths (in words) that make a
// pair eligible for them: sentences rather than single labels.
type Sizes struct {
	Valid, Test      int
	HeldMin, HeldMax int
}

// DefaultSizes are the benchmark's splits.
var DefaultSizes = Sizes{Valid: 1000, Test: 1000, HeldMin: 3, HeldMax: 40}

func hash(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// Split orders the pairs by a hash of their source (so the result depends
// on the set of pairs, not on the catalogs' order) and takes the test and
// valid sets from the eligible pairs; the rest is train.
func Split(pairs []Pair, sz Sizes) (train, valid, test []Pair) {
	ps := slices.Clone(pairs)
	slices.SortFunc(ps, func(a, b Pair) int {
		return cmp.Or(cmp.Compare(hash(a.Src), hash(b.Src)), strings.Compare(a.Src, b.Src))
	})
	for _, p := range ps {
		n := len(strings.Fields(p.Src))
		held := n >= sz.HeldMin && n <= sz.HeldMax
		switch {
		case held && len(test) < sz.Test:
			test = append(test, p)
		case held && len(valid) < sz.Valid:
			valid = append(valid, p)
		default:
			train = append(train, p)
		}
	}
	return train, valid, test
}

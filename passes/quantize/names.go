package quantize

import (
	"sort"
	"strings"
)

// CloseNames returns up to k names closest to pattern: by the edit
// distance between the pattern and the best-matching part of the name,
// then by length. Errors use it to suggest what a mistyped name meant.
func CloseNames(pattern string, names []string, k int) []string {
	type scored struct {
		name string
		dist int
	}
	p := strings.ToLower(pattern)
	s := make([]scored, len(names))
	for i, n := range names {
		s[i] = scored{n, substringDistance(p, strings.ToLower(n))}
	}
	sort.SliceStable(s, func(i, j int) bool {
		if s[i].dist != s[j].dist {
			return s[i].dist < s[j].dist
		}
		return len(s[i].name) < len(s[j].name)
	})
	var out []string
	for i := 0; i < len(s) && i < k; i++ {
		out = append(out, s[i].name)
	}
	if len(out) == 0 {
		return []string{"(none: the model has no quantizable tensors)"}
	}
	return out
}

// substringDistance is the smallest Levenshtein distance between p and
// any substring of s.
func substringDistance(p, s string) int {
	rp, rs := []rune(p), []rune(s)
	prev := make([]int, len(rs)+1) // matching may start anywhere in s: row 0 is free
	cur := make([]int, len(rs)+1)
	for i := 1; i <= len(rp); i++ {
		cur[0] = i
		for j := 1; j <= len(rs); j++ {
			cost := 1
			if rp[i-1] == rs[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	best := len(rp)
	for _, d := range prev { // and end anywhere
		best = min(best, d)
	}
	return best
}

package decode

import "cmp"

// Argmax returns the index of v's largest element: the first on ties, 0
// for an empty v. A NaN never compares larger, so no NaN after the first
// element is chosen. Greedy decoding's check against a reference (export's
// and LightSeq's top-1 agreement, eval's comparison of two models) counts
// positions whose Argmax agrees.
func Argmax[T cmp.Ordered](v []T) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

package eval

import "testing"

func TestTokenAgreement(t *testing.T) {
	for _, tc := range []struct {
		name string
		a, b [][]int64
		want float64
	}{
		{"identical", [][]int64{{1, 2, 3}, {4}}, [][]int64{{1, 2, 3}, {4}}, 1},
		{"one substitution", [][]int64{{1, 2, 3, 4}}, [][]int64{{1, 9, 3, 4}}, 0.75},
		{"shorter", [][]int64{{1, 2, 3, 4}}, [][]int64{{1, 2}}, 0.5},
		{"longer", [][]int64{{1, 2}}, [][]int64{{1, 2, 3, 4}}, 0.5},
		{"over sentences", [][]int64{{1, 2}, {3, 4, 5}}, [][]int64{{1, 2}, {3, 0, 5}}, 0.8},
		{"empty", [][]int64{{}}, [][]int64{{}}, 1},
	} {
		if got := TokenAgreement(tc.a, tc.b); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

package decode

import (
	"math"
	"testing"
)

func TestArgmax(t *testing.T) {
	nan := float32(math.NaN())
	for _, tc := range []struct {
		name string
		v    []float32
		want int
	}{
		{"empty", nil, 0},
		{"one", []float32{-3}, 0},
		{"largest", []float32{0.5, -1, 2.5, 2}, 2},
		{"first of ties", []float32{1, 7, 3, 7}, 1},
		{"negative", []float32{-5, -2, -9}, 1},
		{"NaN later", []float32{1, nan, 4, nan}, 2},
		{"NaN first", []float32{nan, 4, 9}, 0},
		{"infinity", []float32{float32(math.Inf(-1)), 3, float32(math.Inf(1))}, 2},
	} {
		if got := Argmax(tc.v); got != tc.want {
			t.Errorf("%s: Argmax(%v) = %d, want %d", tc.name, tc.v, got, tc.want)
		}
	}
	if got := Argmax([]float64{0.25, 0.75, 0.5}); got != 1 {
		t.Errorf("float64: Argmax = %d, want 1", got)
	}
}

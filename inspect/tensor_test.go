package inspect

import (
	"testing"

	"github.com/qatc/qatc/graph"
)

func TestNumpyString(t *testing.T) {
	seq := func(n int) []int64 {
		v := make([]int64, n)
		for i := range v {
			v[i] = int64(i)
		}
		return v
	}
	for _, tc := range []struct {
		dims []int64
		want string
	}{
		{[]int64{4}, "[0 1 2 3]"},
		{[]int64{2, 3}, "[[0 1 2]\n [3 4 5]]"},
		{[]int64{2, 2, 2}, "[[[0 1]\n  [2 3]]\n\n [[4 5]\n  [6 7]]]"},
		{[]int64{1001}, "[   0    1    2 ...  998  999 1000]"},
		{[]int64{100, 100}, "[[   0    1    2 ...   97   98   99]\n [ 100  101  102 ...  197  198  199]\n [ 200  201  202 ...  297  298  299]\n ...\n [9700 9701 9702 ... 9797 9798 9799]\n [9800 9801 9802 ... 9897 9898 9899]\n [9900 9901 9902 ... 9997 9998 9999]]"},
	} {
		if got := numpyString(seq(int(graph.NumElements(tc.dims))), tc.dims); got != tc.want {
			t.Errorf("%v:\n%s\nwant\n%s", tc.dims, got, tc.want)
		}
	}
}

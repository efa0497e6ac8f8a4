package seq2seq

import (
	"reflect"
	"testing"
)

func TestMakeBatch(t *testing.T) {
	ds := &Dataset{Special: Special{Pad: 1, BOS: 2, EOS: 3}, Examples: []Example{
		{Line: 4, Src: []int64{7, 8, 3}, Tgt: []int64{9, 3}},
		{Line: 9, Src: []int64{5, 3}, Tgt: []int64{10, 11, 12, 3}},
	}}
	b := ds.MakeBatch([]int{1, 0})
	want := &Batch{
		Index: []int{1, 0}, Lines: []int{9, 4}, Size: 2, SrcLen: 3, TgtLen: 4,
		Src:       []int64{5, 3, 1, 7, 8, 3},
		Dec:       []int64{2, 10, 11, 12, 2, 9, 1, 1},
		Labels:    []int64{10, 11, 12, 3, 9, 3, 1, 1},
		SrcTokens: 5, Tokens: 6,
	}
	if !reflect.DeepEqual(b, want) {
		t.Errorf("batch\n%+v\nwant\n%+v", b, want)
	}
}

package train

import (
	"github.com/qatc/qatc/seq2seq"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// lengthsDataset returns a dataset whose example i has a source of
// srcLen[i] tokens and a target one longer, all ids 5.
func lengthsDataset(srcLen []int) *seq2seq.Dataset {
	ds := &seq2seq.Dataset{SrcPath: "s", TgtPath: "t", Special: seq2seq.DefaultSpecial()}
	for i, n := range srcLen {
		e := seq2seq.Example{Line: i + 1}
		for range n - 1 {
			e.Src = append(e.Src, 5)
		}
		e.Src = append(e.Src, 3)
		for range n {
			e.Tgt = append(e.Tgt, 6)
		}
		e.Tgt = append(e.Tgt, 3)
		ds.Examples = append(ds.Examples, e)
	}
	return ds
}

func TestBatcherTokenLimit(t *testing.T) {
	var lens []int
	for i := range 200 {
		lens = append(lens, 1+(i*7919)%23)
	}
	ds := lengthsDataset(lens)
	for _, maxTokens := range []int{24, 64, 100, 1000} {
		b, err := NewBatcher(ds, maxTokens, 7)
		if err != nil {
			t.Fatal(err)
		}
		for epoch := range 3 {
			plan := b.Epoch(epoch)
			var seen []int
			for _, idx := range plan {
				batch := ds.MakeBatch(idx)
				padded := batch.Size * max(batch.SrcLen, batch.TgtLen)
				if padded > maxTokens {
					t.Fatalf("max %d: batch of %d rows × %d tokens exceeds the limit", maxTokens, batch.Size, max(batch.SrcLen, batch.TgtLen))
				}
				seen = append(seen, idx...)
			}
			sort.Ints(seen)
			for i, v := range seen {
				if v != i {
					t.Fatalf("max %d epoch %d: examples not covered exactly once", maxTokens, epoch)
				}
			}
		}
	}
	// Greedy packing: 10 examples of 5 target tokens (EOS included) in
	// batches of 20 tokens fit 4 rows a batch: 4, 4, 2.
	ds = lengthsDataset([]int{4, 4, 4, 4, 4, 4, 4, 4, 4, 4})
	b, _ := NewBatcher(ds, 20, 1)
	var sizes []int
	for _, idx := range b.Sequential() {
		sizes = append(sizes, len(idx))
	}
	if !reflect.DeepEqual(sizes, []int{4, 4, 2}) {
		t.Errorf("batch sizes %v, want [4 4 2]", sizes)
	}
}

func TestBatcherDeterminism(t *testing.T) {
	var lens []int
	for i := range 100 {
		lens = append(lens, 1+(i*31)%17)
	}
	ds := lengthsDataset(lens)
	a, _ := NewBatcher(ds, 60, 42)
	b, _ := NewBatcher(ds, 60, 42)
	c, _ := NewBatcher(ds, 60, 43)
	if !reflect.DeepEqual(a.Epoch(3), b.Epoch(3)) {
		t.Error("same seed and epoch give different plans")
	}
	if reflect.DeepEqual(a.Epoch(0), a.Epoch(1)) {
		t.Error("epochs 0 and 1 have the same plan; batches are not reshuffled")
	}
	if reflect.DeepEqual(a.Epoch(0), c.Epoch(0)) {
		t.Error("seeds 42 and 43 give the same plan")
	}
	if len(a.Epoch(0)) != len(a.Epoch(5)) {
		t.Error("the number of batches changes between epochs")
	}
	// Length buckets: batches are cut from the length-sorted order, so
	// their length ranges do not overlap.
	type span struct{ lo, hi int }
	var spans []span
	for _, idx := range a.Epoch(2) {
		s := span{1 << 30, 0}
		for _, i := range idx {
			s.lo, s.hi = min(s.lo, len(ds.Examples[i].Src)), max(s.hi, len(ds.Examples[i].Src))
		}
		spans = append(spans, s)
	}
	sort.Slice(spans, func(i, j int) bool {
		return spans[i].lo < spans[j].lo || spans[i].lo == spans[j].lo && spans[i].hi < spans[j].hi
	})
	for i := 1; i < len(spans); i++ {
		if spans[i-1].hi > spans[i].lo {
			t.Errorf("batches with source lengths %v and %v overlap", spans[i-1], spans[i])
		}
	}
}

func TestNewBatcherTooLong(t *testing.T) {
	ds := lengthsDataset([]int{3, 30})
	_, err := NewBatcher(ds, 16, 1)
	if err == nil || !strings.Contains(err.Error(), "s:2: the pair has 31 tokens") {
		t.Errorf("error %v", err)
	}
}

func TestLineList(t *testing.T) {
	if got := lineList([]int{9, 3, 5}); got != "[3 5 9]" {
		t.Errorf("lineList = %q", got)
	}
	if got := lineList([]int{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}); got != "[1 2 3 4] … [7 8 9 10] (10 pairs)" {
		t.Errorf("lineList = %q", got)
	}
}

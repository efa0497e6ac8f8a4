package train

import (
	"fmt"
	"math/rand/v2"
	"sort"
)

// Batch is a padded batch of examples for teacher forcing, in the layout
// the model reads: row-major [Size, SrcLen] and [Size, TgtLen] int64.
type Batch struct {
	// Index holds the examples' positions in the dataset; Lines their
	// line numbers in the data files.
	Index, Lines []int
	Size         int
	SrcLen       int
	TgtLen       int
	// Src is the source ids, Dec the decoder input (BOS + target), Labels
	// the target followed by EOS; padding is the pad id.
	Src, Dec, Labels []int64
	// SrcTokens and Tokens count the non-pad source and label tokens.
	SrcTokens, Tokens int
}

// Plan is the order of an epoch's batches: each entry lists example
// positions in a dataset.
type Plan [][]int

// Batcher groups a dataset's examples into batches of at most MaxTokens
// padded tokens, where a batch's padded size is its number of rows times
// the longest source or target in it (as fairseq counts). Examples are
// sorted by length, so that each batch holds sentences of similar length
// (length buckets) and wastes little padding; the order of equal-length
// examples and of the batches is shuffled per epoch by a generator seeded
// from (Seed, epoch), so an epoch's plan is the same in every run and can
// be rebuilt on resume from the epoch number alone.
type Batcher struct {
	Data      *Dataset
	MaxTokens int
	Seed      uint64
}

// NewBatcher checks that every example fits in a batch.
func NewBatcher(d *Dataset, maxTokens int, seed uint64) (*Batcher, error) {
	if maxTokens <= 0 {
		return nil, fmt.Errorf("batch size of %d tokens: it must be positive", maxTokens)
	}
	for _, e := range d.Examples {
		if n := max(len(e.Src), len(e.Tgt)); n > maxTokens {
			return nil, fmt.Errorf("%s:%d: the pair has %d tokens (EOS included), more than a batch of %d tokens holds; raise the batch size or set a maximum length", d.SrcPath, e.Line, n, maxTokens)
		}
	}
	return &Batcher{Data: d, MaxTokens: maxTokens, Seed: seed}, nil
}

// Epoch returns the plan of epoch (0-based).
func (b *Batcher) Epoch(epoch int) Plan {
	rng := rand.New(rand.NewPCG(b.Seed, uint64(epoch)+0x9e3779b97f4a7c15))
	ex := b.Data.Examples
	order := rng.Perm(len(ex))
	sort.SliceStable(order, func(i, j int) bool {
		a, c := ex[order[i]], ex[order[j]]
		if len(a.Src) != len(c.Src) {
			return len(a.Src) < len(c.Src)
		}
		return len(a.Tgt) < len(c.Tgt)
	})
	return b.chunk(order, rng)
}

// Sequential returns the batches in length order without shuffling, as
// evaluation uses them.
func (b *Batcher) Sequential() Plan {
	ex := b.Data.Examples
	order := make([]int, len(ex))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(i, j int) bool {
		a, c := ex[order[i]], ex[order[j]]
		if len(a.Src) != len(c.Src) {
			return len(a.Src) < len(c.Src)
		}
		return len(a.Tgt) < len(c.Tgt)
	})
	return b.chunk(order, nil)
}

// chunk cuts the length-sorted order into batches greedily and shuffles
// the batches when rng is set.
func (b *Batcher) chunk(order []int, rng *rand.Rand) Plan {
	ex := b.Data.Examples
	var plan Plan
	var cur []int
	longest := 0
	for _, i := range order {
		n := max(len(ex[i].Src), len(ex[i].Tgt))
		if len(cur) > 0 && (len(cur)+1)*max(longest, n) > b.MaxTokens {
			plan = append(plan, cur)
			cur, longest = nil, 0
		}
		cur = append(cur, i)
		longest = max(longest, n)
	}
	if len(cur) > 0 {
		plan = append(plan, cur)
	}
	if rng != nil {
		rng.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
	}
	return plan
}

// MakeBatch pads the examples at positions idx into a Batch.
func (d *Dataset) MakeBatch(idx []int) *Batch {
	b := &Batch{Index: append([]int(nil), idx...), Size: len(idx)}
	for _, i := range idx {
		e := d.Examples[i]
		b.Lines = append(b.Lines, e.Line)
		b.SrcLen = max(b.SrcLen, len(e.Src))
		b.TgtLen = max(b.TgtLen, len(e.Tgt))
	}
	pad := d.Special.Pad
	b.Src = filled(b.Size*b.SrcLen, pad)
	b.Dec = filled(b.Size*b.TgtLen, pad)
	b.Labels = filled(b.Size*b.TgtLen, pad)
	for r, i := range idx {
		e := d.Examples[i]
		copy(b.Src[r*b.SrcLen:], e.Src)
		dec := b.Dec[r*b.TgtLen:]
		dec[0] = d.Special.BOS
		copy(dec[1:len(e.Tgt)], e.Tgt[:len(e.Tgt)-1])
		copy(b.Labels[r*b.TgtLen:], e.Tgt)
		b.SrcTokens += len(e.Src)
		b.Tokens += len(e.Tgt)
	}
	return b
}

func filled(n int, v int64) []int64 {
	s := make([]int64, n)
	if v != 0 {
		for i := range s {
			s[i] = v
		}
	}
	return s
}

// lineList formats a batch's line numbers for an error message, eliding
// the middle of a long list.
func lineList(lines []int) string {
	sorted := append([]int(nil), lines...)
	sort.Ints(sorted)
	const show = 8
	if len(sorted) <= show {
		return fmt.Sprint(sorted)
	}
	return fmt.Sprintf("%v … %v (%d pairs)", sorted[:show/2], sorted[len(sorted)-show/2:], len(sorted))
}

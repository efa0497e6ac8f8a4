package train

import (
	"fmt"
	"math/rand/v2"
	"sort"

	"github.com/qatc/qatc/seq2seq"
)

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
	Data      *seq2seq.Dataset
	MaxTokens int
	Seed      uint64
}

// NewBatcher checks that every example fits in a batch.
func NewBatcher(d *seq2seq.Dataset, maxTokens int, seed uint64) (*Batcher, error) {
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

package testmodels

import "math/rand/v2"

// RandomBatch returns valid inputs for the model cfg describes: src
// [batch, srcLen] and tgt [batch, tgtLen] row-major token ids. Tokens are
// drawn from [EOS+1, Vocab) avoiding PadID; each source row ends with EOS,
// each target row starts with BOS. Row 0 uses the full lengths; the other
// rows are shorter with probability ½ and padded with PadID at the end.
// The same seed gives the same batch.
func RandomBatch(cfg Config, batch, srcLen, tgtLen int, seed int64) (src, tgt []int64) {
	r := rand.New(rand.NewPCG(uint64(seed), 0x7e57ba7c))
	token := func() int64 {
		for {
			t := EOS + 1 + r.Int64N(int64(cfg.Vocab-EOS-1))
			if t != cfg.PadID {
				return t
			}
		}
	}
	length := func(row, full int) int {
		if row == 0 || full < 2 || r.IntN(2) == 0 {
			return full
		}
		return 1 + r.IntN(full-1)
	}
	src = make([]int64, batch*srcLen)
	tgt = make([]int64, batch*tgtLen)
	for i := range batch {
		row := src[i*srcLen : (i+1)*srcLen]
		n := length(i, srcLen)
		for j := range row {
			switch {
			case j < n-1:
				row[j] = token()
			case j == n-1:
				row[j] = EOS
			default:
				row[j] = cfg.PadID
			}
		}
		row = tgt[i*tgtLen : (i+1)*tgtLen]
		n = length(i, tgtLen)
		for j := range row {
			switch {
			case j == 0:
				row[j] = BOS
			case j < n:
				row[j] = token()
			default:
				row[j] = cfg.PadID
			}
		}
	}
	return src, tgt
}

package seq2seq

// Batch is a padded batch of examples for teacher forcing, in the layout
// the model reads: row-major [Size, SrcLen] and [Size, TgtLen] int64.
// train's steps and calibration and export's check batch read it.
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

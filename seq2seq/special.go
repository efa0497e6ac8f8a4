package seq2seq

// Special are the token ids with a fixed meaning for the model.
type Special struct {
	Pad int64 `json:"pad"`
	BOS int64 `json:"bos"`
	EOS int64 `json:"eos"`
}

// DefaultSpecial returns the ids NeurST, fairseq and the project's models
// use: pad 0, bos 2, eos 3.
func DefaultSpecial() Special { return Special{Pad: 0, BOS: 2, EOS: 3} }

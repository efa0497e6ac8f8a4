package testmodels

import (
	"fmt"
)

// Special token ids of the models and batches this package makes; they
// match the command line's defaults (--pad-id 0, --bos-id 2, --eos-id 3).
const (
	BOS = 2
	EOS = 3
)

// LayerNormEpsilon is the epsilon of every LayerNorm (NeurST's value).
const LayerNormEpsilon = 1e-6

// maskBias is added to the attention logits of masked positions; after the
// row maximum is subtracted its exp is exactly 0 in float32.
const maskBias = -1e9

// Config describes a transformer seq2seq model. The zero values of Opset
// and Activation mean 17 and "relu"; the presets set everything else.
type Config struct {
	Vocab         int // vocabulary size (ids 0..Vocab-1)
	Hidden        int // model width d; even, a multiple of Heads
	FFN           int // inner width of the feed-forward blocks
	Heads         int // attention heads
	EncoderLayers int
	DecoderLayers int
	MaxLen        int // rows of the position table: the longest sequence the model accepts

	// PreNorm places LayerNorm before each sublayer (x + f(LN(x)), with a
	// final LayerNorm after each stack), as NeurST does; false gives the
	// original post-norm LN(x + f(x)).
	PreNorm bool
	// SharedEmbeddings uses one table for the source and target lookups and
	// the output projection; false gives three tables.
	SharedEmbeddings bool
	// FusedQKV computes self-attention Q, K and V with one [d, 3d] kernel
	// (and cross-attention K, V with one [d, 2d] kernel) and a Split.
	FusedQKV bool
	// Activation of the feed-forward blocks: "relu" or "gelu".
	Activation string
	// Opset is the default-domain opset (14 to 21). LayerNorm is the
	// LayerNormalization op from 17 on and decomposed below; GELU is the
	// Gelu op from 20 on and built from Erf below.
	Opset int64
	// Seed determines every weight.
	Seed int64
	// PadID is the padding token id; source positions holding it are
	// masked out of attention.
	PadID int64
}

// Tiny is a small model for unit tests (44,992 parameters).
func Tiny() Config {
	return Config{
		Vocab: 64, Hidden: 32, FFN: 64, Heads: 4,
		EncoderLayers: 2, DecoderLayers: 2, MaxLen: 64,
		PreNorm: true, SharedEmbeddings: true, Activation: "relu", Opset: 17, Seed: 1,
	}
}

// Base is transformer-base: d=512, FFN 2048, 8 heads, 6+6 layers, vocabulary
// 8000 (48.2M parameters).
func Base() Config {
	return Config{
		Vocab: 8000, Hidden: 512, FFN: 2048, Heads: 8,
		EncoderLayers: 6, DecoderLayers: 6, MaxLen: 1024,
		PreNorm: true, SharedEmbeddings: true, Activation: "relu", Opset: 17, Seed: 1,
	}
}

// Big is transformer-big: d=1024, FFN 4096, 16 heads, 6+6 layers,
// vocabulary 32000 (209.2M parameters, 837 MB of float32).
func Big() Config {
	return Config{
		Vocab: 32000, Hidden: 1024, FFN: 4096, Heads: 16,
		EncoderLayers: 6, DecoderLayers: 6, MaxLen: 1024,
		PreNorm: true, SharedEmbeddings: true, Activation: "relu", Opset: 17, Seed: 1,
	}
}

// Preset returns the preset called name ("tiny", "base" or "big").
func Preset(name string) (Config, error) {
	switch name {
	case "tiny":
		return Tiny(), nil
	case "base":
		return Base(), nil
	case "big":
		return Big(), nil
	}
	return Config{}, fmt.Errorf("testmodels: unknown preset %q: use tiny, base or big", name)
}

// withDefaults fills in the zero values that have a default.
func (c Config) withDefaults() Config {
	if c.Opset == 0 {
		c.Opset = 17
	}
	if c.Activation == "" {
		c.Activation = "relu"
	}
	return c
}

// Validate reports the first problem with c, as one line saying what to
// change.
func (c Config) Validate() error {
	c = c.withDefaults()
	positive := []struct {
		name string
		v    int
	}{
		{"Vocab", c.Vocab}, {"Hidden", c.Hidden}, {"FFN", c.FFN}, {"Heads", c.Heads},
		{"EncoderLayers", c.EncoderLayers}, {"DecoderLayers", c.DecoderLayers}, {"MaxLen", c.MaxLen},
	}
	for _, p := range positive {
		if p.v <= 0 {
			return fmt.Errorf("testmodels: %s is %d: it must be at least 1", p.name, p.v)
		}
	}
	switch {
	case c.Hidden%c.Heads != 0:
		return fmt.Errorf("testmodels: Hidden %d is not a multiple of Heads %d: choose Hidden = Heads × head size", c.Hidden, c.Heads)
	case c.Hidden%2 != 0:
		return fmt.Errorf("testmodels: Hidden %d is odd: the sinusoidal positions need an even width", c.Hidden)
	case c.Vocab < 8:
		return fmt.Errorf("testmodels: Vocab %d is too small: use at least 8 (ids 0..%d are special)", c.Vocab, EOS)
	case c.PadID < 0 || c.PadID >= int64(c.Vocab):
		return fmt.Errorf("testmodels: PadID %d is outside the vocabulary [0, %d)", c.PadID, c.Vocab)
	case c.PadID == BOS || c.PadID == EOS:
		return fmt.Errorf("testmodels: PadID %d is also the BOS or EOS id: use 0 (or 1)", c.PadID)
	case c.Activation != "relu" && c.Activation != "gelu":
		return fmt.Errorf("testmodels: Activation %q is not supported: use \"relu\" or \"gelu\"", c.Activation)
	case c.Opset < 14 || c.Opset > 21:
		return fmt.Errorf("testmodels: Opset %d is not supported: use 14 to 21 (Trilu needs 14)", c.Opset)
	}
	return nil
}

// NumParams returns the number of trainable parameters of the model c
// describes: embedding tables, kernels, biases and LayerNorm scales and
// offsets. The constant position table is not a parameter.
func (c Config) NumParams() int64 {
	d, f, v := int64(c.Hidden), int64(c.FFN), int64(c.Vocab)
	attn := 4*d*d + 4*d // q, k, v, output kernels and biases
	ffn := d*f + f + f*d + d
	ln := 2 * d
	enc := attn + ffn + 2*ln
	dec := 2*attn + ffn + 3*ln
	n := int64(c.EncoderLayers)*enc + int64(c.DecoderLayers)*dec
	if c.PreNorm {
		n += 2 * ln // final LayerNorm of each stack
	}
	if c.SharedEmbeddings {
		n += v * d
	} else {
		n += 3 * v * d
	}
	return n + v // output bias
}

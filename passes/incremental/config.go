package incremental

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// ModelType is the config's model_type: qatc's own graphs, not a
// transformers architecture.
const ModelType = "qatc-transformer"

// MetadataKey is the metadata_props key of each file's Part.
const MetadataKey = "qatc.incremental"

// Config is the directory's config.json: the model's sizes and special
// ids under the names Hugging Face configs use, and what qatc knows about
// the files.
type Config struct {
	ModelType     string `json:"model_type"`
	Hidden        int    `json:"d_model"`
	EncoderLayers int    `json:"encoder_layers"`
	DecoderLayers int    `json:"decoder_layers"`
	EncoderHeads  int    `json:"encoder_attention_heads"`
	DecoderHeads  int    `json:"decoder_attention_heads"`
	EncoderFFN    int    `json:"encoder_ffn_dim"`
	DecoderFFN    int    `json:"decoder_ffn_dim"`
	// Vocab is the target vocabulary (the logits' width); SrcVocab the
	// source table's rows.
	Vocab      int    `json:"vocab_size"`
	SrcVocab   int    `json:"src_vocab_size"`
	Activation string `json:"activation_function"`
	PreNorm    bool   `json:"normalize_before"`
	Tied       bool   `json:"tie_word_embeddings"`
	// MaxPositions is the number of rows of the position tables (the
	// longest source and the most decoding steps); 0 when the positions
	// are computed for any length.
	MaxPositions int   `json:"max_position_embeddings"`
	PadID        int64 `json:"pad_token_id"`
	BOSID        int64 `json:"bos_token_id"`
	EOSID        int64 `json:"eos_token_id"`
	DecoderStart int64 `json:"decoder_start_token_id"`
	Qatc         Qatc  `json:"qatc"`
}

// Qatc is the config's qatc section.
type Qatc struct {
	// ID is shared by the config and the metadata of the three files of
	// one export, so that files of different exports are told apart.
	ID string `json:"id"`
	// Format is the export format: fp32, qat, qdq, qoperator, dynamic or
	// matmulnbits.
	Format string `json:"format"`
	// Source names the model the directory was made from.
	Source string `json:"source,omitempty"`
	// Cache says what the present/past tensors hold.
	Cache string `json:"cache"`
	// Quantization is the source model's qatc.quantization record.
	Quantization json.RawMessage `json:"quantization,omitempty"`
}

// CacheDoc describes the cache tensors for Qatc.Cache.
const CacheDoc = "keys and values [batch, heads, len, head_size] as the attention products read them: after the model's scaling and quantizers"

// Part is the metadata each file carries under MetadataKey.
type Part struct {
	ID   string `json:"id"`
	File string `json:"file"`
}

// HeadSize returns the attention head size.
func (c *Config) HeadSize() int {
	if c.DecoderHeads == 0 {
		return 0
	}
	return c.Hidden / c.DecoderHeads
}

// ReadConfig reads dir's config.json.
func ReadConfig(dir string) (*Config, error) {
	path := filepath.Join(dir, ConfigFile)
	data, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("%s: no %s: the directory is not an incremental export (qatc export --incremental writes one)", dir, ConfigFile)
		}
		return nil, err
	}
	c := &Config{}
	if err := json.Unmarshal(data, c); err != nil {
		return nil, fmt.Errorf("%s: not a valid config: %v", path, err)
	}
	switch {
	case c.Hidden <= 0 || c.DecoderLayers <= 0 || c.DecoderHeads <= 0 || c.Vocab <= 0:
		return nil, fmt.Errorf("%s: d_model %d, decoder_layers %d, decoder_attention_heads %d, vocab_size %d: all must be positive", path, c.Hidden, c.DecoderLayers, c.DecoderHeads, c.Vocab)
	case c.Hidden%c.DecoderHeads != 0:
		return nil, fmt.Errorf("%s: %d heads do not divide d_model %d", path, c.DecoderHeads, c.Hidden)
	}
	return c, nil
}

// Marshal returns the config as indented JSON.
func (c *Config) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

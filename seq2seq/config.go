package seq2seq

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// ModelType is the config's model_type of the graphs qatc builds itself
// (export --incremental), not a transformers architecture.
const ModelType = "qatc-transformer"

// MetadataKey is the metadata_props key of each file's Part.
const MetadataKey = "qatc.incremental"

// Config is a directory's config.json: the model's sizes and special ids
// under the names Hugging Face configs use (BART/Marian names; T5's
// num_layers, num_decoder_layers, num_heads, d_kv and d_ff are read as
// their synonyms), and what qatc knows about the files. A config read from
// a file keeps every field it held, so that writing it back changes only
// the qatc section.
type Config struct {
	ModelType     string `json:"model_type"`
	Hidden        int    `json:"d_model"`
	EncoderLayers int    `json:"encoder_layers"`
	DecoderLayers int    `json:"decoder_layers"`
	EncoderHeads  int    `json:"encoder_attention_heads"`
	DecoderHeads  int    `json:"decoder_attention_heads"`
	EncoderFFN    int    `json:"encoder_ffn_dim"`
	DecoderFFN    int    `json:"decoder_ffn_dim"`
	// HeadDim is the attention head size where it is not d_model / heads
	// (T5's d_kv); 0 otherwise.
	HeadDim int `json:"d_kv,omitempty"`
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

	// raw holds every field of a config read from a file.
	raw map[string]json.RawMessage
}

// Qatc is the config's qatc section.
type Qatc struct {
	// ID is shared by the config and the metadata of the files of one
	// export, so that files of different exports are told apart.
	ID string `json:"id"`
	// Format is the files' form: fp32, qat, qdq, qoperator, dynamic or
	// matmulnbits.
	Format string `json:"format"`
	// Source names the model the directory was made from.
	Source string `json:"source,omitempty"`
	// Cache says what the present/past tensors hold (qatc's own graphs).
	Cache string `json:"cache,omitempty"`
	// CacheType is the cache tensors' element type when it is not float
	// (int8 or uint8: the integers of the attention operands' quantizers).
	CacheType string `json:"cache_type,omitempty"`
	// Quantization is the source model's qatc.quantization record.
	Quantization json.RawMessage `json:"quantization,omitempty"`
}

// Part is the metadata each file carries under MetadataKey.
type Part struct {
	ID   string `json:"id"`
	File string `json:"file"`
}

// HeadSize returns the attention head size.
func (c *Config) HeadSize() int {
	if c.HeadDim > 0 {
		return c.HeadDim
	}
	if c.DecoderHeads == 0 {
		return 0
	}
	return c.Hidden / c.DecoderHeads
}

// Has reports whether the config read from a file names field (a config
// built in memory has every field).
func (c *Config) Has(field string) bool {
	if c.raw == nil {
		return true
	}
	_, ok := c.raw[field]
	return ok
}

// Special returns the padding id, the id that starts a translation
// (decoder_start_token_id, else bos_token_id) as BOS and the
// end-of-sentence id; ok is false when the config does not name all three.
func (c *Config) Special() (sp Special, ok bool) {
	start := c.DecoderStart
	if !c.Has("decoder_start_token_id") {
		if !c.Has("bos_token_id") {
			return sp, false
		}
		start = c.BOSID
	}
	return Special{Pad: c.PadID, BOS: start, EOS: c.EOSID}, c.Has("pad_token_id") && c.Has("eos_token_id")
}

// synonyms are other configs' names of Config's fields (T5's), read when
// the field itself is absent.
var synonyms = []struct {
	field string
	names []string
}{
	{"encoder_layers", []string{"num_layers"}},
	{"decoder_layers", []string{"num_decoder_layers", "num_layers"}},
	{"encoder_attention_heads", []string{"num_heads"}},
	{"decoder_attention_heads", []string{"num_heads"}},
	{"encoder_ffn_dim", []string{"d_ff"}},
	{"decoder_ffn_dim", []string{"d_ff"}},
}

// ParseConfig decodes a config.json (path names it in errors) and checks
// the sizes decoding needs.
func ParseConfig(path string, data []byte) (*Config, error) {
	raw := map[string]json.RawMessage{}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%s: not a valid config: %v", path, err)
	}
	for _, s := range synonyms {
		if _, ok := raw[s.field]; ok {
			continue
		}
		for _, n := range s.names {
			if v, ok := raw[n]; ok {
				raw[s.field] = v
				break
			}
		}
	}
	filled, err := json.Marshal(raw)
	if err != nil {
		return nil, err
	}
	c := &Config{}
	if err := json.Unmarshal(filled, c); err != nil {
		return nil, fmt.Errorf("%s: not a valid config: %v", path, err)
	}
	// Keep the file's own fields, not the synonyms filled in.
	c.raw = map[string]json.RawMessage{}
	if err := json.Unmarshal(data, &c.raw); err != nil {
		return nil, err
	}
	switch {
	case c.Hidden <= 0 || c.DecoderLayers <= 0 || c.DecoderHeads <= 0 || c.Vocab <= 0:
		return nil, fmt.Errorf("%s: d_model %d, decoder_layers %d, decoder_attention_heads %d, vocab_size %d: all must be positive", path, c.Hidden, c.DecoderLayers, c.DecoderHeads, c.Vocab)
	case c.HeadDim < 0:
		return nil, fmt.Errorf("%s: d_kv %d must be positive", path, c.HeadDim)
	case c.HeadDim == 0 && c.Hidden%c.DecoderHeads != 0:
		return nil, fmt.Errorf("%s: %d heads do not divide d_model %d", path, c.DecoderHeads, c.Hidden)
	}
	return c, nil
}

// ReadConfig reads dir's config.json.
func ReadConfig(dir string) (*Config, error) {
	path := filepath.Join(dir, ConfigFile)
	data, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("%s: no %s: a seq2seq directory needs the model's config (Optimum and qatc export --incremental write one)", dir, ConfigFile)
		}
		return nil, err
	}
	return ParseConfig(path, data)
}

// Marshal returns the config as indented JSON: a config read from a file
// as it was, with its qatc section replaced.
func (c *Config) Marshal() ([]byte, error) {
	var v any = c
	if c.raw != nil {
		m := map[string]json.RawMessage{}
		for k, x := range c.raw {
			m[k] = x
		}
		q, err := json.Marshal(c.Qatc)
		if err != nil {
			return nil, err
		}
		m["qatc"] = q
		v = m
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// DirSpecial returns the special ids the config.json of directory path
// names (see Config.Special); ok is false for a file, a directory without
// a readable config, or a config that does not name them.
func DirSpecial(path string) (Special, bool) {
	if st, err := os.Stat(path); err != nil || !st.IsDir() {
		return Special{}, false
	}
	c, err := ReadConfig(path)
	if err != nil {
		return Special{}, false
	}
	return c.Special()
}

package seq2seq

import "fmt"

// The files of a seq2seq directory, as Hugging Face Optimum names them.
const (
	EncoderFile         = "encoder_model.onnx"
	DecoderFile         = "decoder_model.onnx"
	DecoderWithPastFile = "decoder_with_past_model.onnx"
	// MergedFile holds both decoders as the branches of one If node on
	// UseCacheBranch (then: with past, else: without).
	MergedFile = "decoder_model_merged.onnx"
	ConfigFile = "config.json"
)

// Files lists the model files of a directory with separate decoders,
// encoder first.
var Files = []string{EncoderFile, DecoderFile, DecoderWithPastFile}

// Input and output names, as Optimum's seq2seq exports have them.
const (
	InputIDs             = "input_ids"              // [batch, len] int64, both stacks
	AttentionMask        = "attention_mask"         // [batch, src_len] int64: 1 for tokens, 0 for padding
	LastHiddenState      = "last_hidden_state"      // encoder output [batch, src_len, hidden]
	EncoderHiddenStates  = "encoder_hidden_states"  // decoder_model's input
	EncoderAttentionMask = "encoder_attention_mask" // the attention_mask again, for cross-attention
	Logits               = "logits"                 // [batch, len, vocab]
	UseCacheBranch       = "use_cache_branch"       // the merged decoder's bool [1]: true with past
)

// Symbolic dimension names, as Optimum writes them.
const (
	DimBatch      = "batch_size"
	DimSrc        = "encoder_sequence_length"
	DimTgt        = "decoder_sequence_length"
	DimPast       = "past_decoder_sequence_length"
	DimPastPlus1  = "past_decoder_sequence_length + 1"
	DimEncoderOut = "encoder_sequence_length_out"
)

// PastPrefix and PresentPrefix begin the names of the cache inputs and
// outputs (Past, Present).
const (
	PastPrefix    = "past_key_values."
	PresentPrefix = "present."
)

// Past returns the name of decoder_with_past's cache input for layer i:
// stack is "decoder" (self-attention, one position longer each step) or
// "encoder" (cross-attention, computed once), kv is "key" or "value".
func Past(i int, stack, kv string) string {
	return fmt.Sprintf("past_key_values.%d.%s.%s", i, stack, kv)
}

// Present returns the name of the cache output matching Past.
func Present(i int, stack, kv string) string {
	return fmt.Sprintf("present.%d.%s.%s", i, stack, kv)
}

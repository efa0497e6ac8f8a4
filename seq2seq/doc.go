// Package seq2seq describes a seq2seq translation model as every command
// that feeds it sentences sees it: its roles (the source-ids and
// target-ids inputs and the logits output, found by shape, dimension
// names and input names, or named), its vocabulary and positions
// (Describe), the special token ids (Special), and the tokenizers that
// turn lines into ids and back (Tokenizer: plain ids, or SentencePiece),
// and parallel text read into ids and checked against the model
// (ReadParallel: one sentence per line, ids inside the vocabulary, no
// padding, no sentence beyond the positions) and padded for teacher
// forcing (Dataset.MakeBatch).
//
// train reads its data, decode and eval translate, export checks and
// writes incremental models with these; nothing else finds roles, loads
// a SentencePiece model or reads parallel text.
//
// It also owns a model stored as several ONNX files: Hugging Face
// Optimum's seq2seq layout (an encoder, a decoder for the first step and a
// decoder with a key/value cache, or both decoders merged into one file)
// with its config.json: the layout's names and the config.
// passes/incremental builds qatc's own directories of this layout from a
// full-sequence model; decode decodes directories with their cache.
package seq2seq

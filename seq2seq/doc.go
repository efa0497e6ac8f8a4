// Package seq2seq describes a seq2seq translation model as every command
// that feeds it sentences sees it: its roles (the source-ids and
// target-ids inputs and the logits output, found by shape, dimension
// names and input names, or named), its vocabulary and positions
// (Describe), the special token ids (Special), and the tokenizers that
// turn lines into ids and back (Tokenizer: plain ids, or SentencePiece).
//
// train reads its data, eval and translate decode, export checks and
// writes incremental models with these; nothing else finds roles or loads
// a SentencePiece model.
package seq2seq

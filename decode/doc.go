// Package decode translates with seq2seq ONNX models: greedy decoding and
// beam search (Decode) over any Model that starts a batch of sources and
// steps it one target token at a time.
//
// A seq2seq model is any ONNX graph with two int64 inputs [batch, len]
// (source ids and decoder input ids) and one float output
// [batch, tgt_len, vocab] (logits); seq2seq.FindRoles recognises them by
// shape or takes their names, and seq2seq's tokenizers turn text into ids.
// Decoding runs an encoder and a decoder with a key/value cache
// (Incremental: a directory written by export --incremental, or one built
// in memory from a full-sequence file), or re-runs the whole model on the
// growing target prefix at every step (Rerun, Seq2Seq). Load opens a
// ModelSpec as the best of these; a Model of another format (LightSeq's
// reference decoder) plugs in through StartFunc.
//
// Beam search ranks finished hypotheses as LightSeq does: a hypothesis of
// L tokens (EOS counted) with log-probability logP scores
// logP·((5+L)/6)^-α, α being LightSeq's (and NeurST's) length_penalty
// (the GNMT normalisation of LightSeq's length_norm and NeurST's
// _calculate_length_penalty, both with L counting EOS). Scores are kept in
// float64. Argmax is the one greedy choice the agreement checks compare.
//
// The package sits below export and eval, beside passes/incremental and
// ort: export checks the cached models it writes and LightSeq files by
// decoding them, eval scores what decoding produces, and neither may
// import the other, so decoding is its own package that imports neither
// (nor train).
package decode

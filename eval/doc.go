// Package eval measures what quantization does to a translation model:
// it decodes with seq2seq ONNX models (greedy and beam search), scores the
// translations with corpus BLEU exactly as sacreBLEU computes it (and chrF),
// and measures decoding latency and memory.
//
// A seq2seq model is any ONNX graph with two int64 inputs [batch, len]
// (source ids and decoder input ids) and one float output
// [batch, tgt_len, vocab] (logits); seq2seq.FindRoles recognises them by
// shape or takes their names, and seq2seq's tokenizers turn text into ids.
// Decoding runs an encoder and a decoder with a key/value cache
// (Incremental: a directory written by export --incremental, or one built
// in memory from a full-sequence file), or re-runs the whole model on the
// growing target prefix at every step (Rerun, Seq2Seq).
//
// Beam search ranks finished hypotheses as LightSeq does: a hypothesis of
// L tokens (EOS counted) with log-probability logP scores
// logP·((5+L)/6)^-α, α being LightSeq's (and NeurST's) length_penalty
// (the GNMT normalisation of LightSeq's length_norm and NeurST's
// _calculate_length_penalty, both with L counting EOS). Scores are kept in
// float64.
//
// The scores follow sacreBLEU 2.6.0's defaults; BLEU.Signature and
// ChrF.Signature print the signature sacreBLEU would, so numbers can be
// compared with published ones.
package eval

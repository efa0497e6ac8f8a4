// Package eval measures what quantization does to a translation model:
// it translates with package decode, scores the translations with corpus
// BLEU exactly as sacreBLEU computes it (and chrF), and measures decoding
// latency and memory (BenchFiles, BenchDecode). It also runs a model on
// given or random inputs and compares two models' outputs tensor by tensor
// (RunFile, CompareFiles).
//
// Translate and TranslateFile turn text into text with one model;
// Evaluate and EvaluateFiles decode a test set with several and tabulate
// BLEU, chrF, agreement with the first model, size and speed.
//
// The scores follow sacreBLEU 2.6.0's defaults; BLEU.Signature and
// ChrF.Signature print the signature sacreBLEU would, so numbers can be
// compared with published ones.
package eval

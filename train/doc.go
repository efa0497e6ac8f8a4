// Package train fine-tunes seq2seq ONNX models, fp32 or quantization-aware,
// in onnxruntime.
//
// The pieces, each usable on its own:
//   - data: parallel files of token ids or SentencePiece text (ReadParallel,
//     Tokenizer), validated before training, with EOS appended and teacher
//     forcing (decoder input BOS + target, labels target + EOS);
//   - batching: batches of at most N padded tokens over length-sorted
//     examples, shuffled per epoch from a seed (Batcher); an epoch's plan is
//     a function of (seed, epoch), so resuming needs no generator state;
//   - optimization: Adam and AdamW in Go, updating in place the float32
//     buffers the session reads as inputs, with parameter groups (clip
//     ranges and weights), global gradient-norm clipping and a versioned,
//     checksummed state file (Optimizer);
//   - schedules: constant and inverse square root with warmup, with
//     NeurST's continuation from an initial step (Schedule);
//   - the loop (Run, Trainer): the training graph from passes/autodiff, an
//     onnxruntime session, progress reports (Display draws them), validation
//     (token-weighted cross-entropy), atomic checkpoints, exact resume,
//     cancellation that checkpoints, a NaN guard naming the step and data
//     lines, and distillation from the model with its quantizers removed
//     (StripQuantizers).
//
// The gradients come from passes/autodiff; train itself only removes
// quantizers for the teacher and turns parameters into inputs of the
// evaluation graph. Tied copies of a parameter (an exporter's transposed
// embedding table) are rebuilt from it in every graph the loop runs and
// written back with it.
//
// BenchmarkFinetune measures training throughput (QATC_BENCH_PRESET=base
// for the transformer-base figure); TestQATRecovers, run with
// QATC_LONG_TESTS=1, is the fp32 → QAT → fine-tune experiment at test scale.
package train

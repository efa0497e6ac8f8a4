// Package train fine-tunes seq2seq ONNX models, fp32 or quantization-aware,
// in onnxruntime.
//
// The pieces, each usable on its own:
//   - data: the parallel files as seq2seq reads and validates them
//     (seq2seq.ReadParallel: EOS appended, ids checked against the model)
//     and pads them for teacher forcing (Dataset.MakeBatch: decoder input
//     BOS + target, labels target + EOS);
//   - batching: batches of at most N padded tokens over length-sorted
//     examples, shuffled per epoch from a seed (Batcher); an epoch's plan is
//     a function of (seed, epoch), so resuming needs no generator state;
//   - optimization: Adam and AdamW in Go, updating in place the float32
//     buffers the session reads as inputs, with parameter groups (clip
//     ranges and weights), global gradient-norm clipping and a versioned,
//     checksummed state file (Optimizer);
//   - schedules: constant and inverse square root with warmup, with
//     NeurST's continuation from an initial step (Schedule);
//   - data parallelism (Comm): each rank of an MPI job (package mpi) runs
//     its share of every batch and the gradients are summed in one
//     all-reduce before the same update on every rank; the ranks compare
//     a fingerprint of settings, data and model at start and agree on
//     failures, NaNs and interruptions (CollectiveError);
//   - the loop (Run, Trainer): the training graph from passes/autodiff, an
//     onnxruntime session, progress reports (Display draws them), validation
//     (token-weighted cross-entropy), atomic checkpoints, exact resume,
//     cancellation that checkpoints, a NaN guard naming the step and data
//     lines, and distillation from the model with its quantizers removed
//     (quantize.Strip).
//
// The gradients come from passes/autodiff; train itself only removes
// quantizers for the teacher and turns parameters into inputs of the
// evaluation graph. Tied copies of a parameter (an exporter's transposed
// embedding table) are rebuilt from it in every graph the loop runs and
// written back with it.
//
// A step's Go side is kept small: the session writes the gradients
// straight into the optimizer's buffers (ort.Session.RunInto), the
// optimizer updates in parallel over fixed chunks (so that results do not
// depend on the number of cores), onnxruntime's threads sleep rather
// than spin between ops (ort.Options.NoSpinning), which on a shared
// machine leaves the cores to the work, and the session allocates from
// its arena instead of a per-run memory pattern (NoMemPattern), whose
// block of kept activations would be faulted in again on every step.
//
// BenchmarkFinetune measures training throughput at issue 4's batch of
// 16 × 32 × 32 tokens (QATC_BENCH_PRESET=base for the transformer-base
// figure), split into the session's run and the update, and
// BenchmarkForward the forward pass alone; TestQATRecovers, run with
// QATC_LONG_TESTS=1, is the fp32 → QAT → fine-tune experiment at test scale.
package train

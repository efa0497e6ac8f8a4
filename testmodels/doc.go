// Package testmodels builds NeurST-style transformer seq2seq models as ONNX
// graphs, with deterministic random weights, for tests, benchmarks and
// demos. Nothing in qatc needs it at run time.
//
// # Interface
//
// Build(cfg) returns a graph.Model with inputs src_ids and tgt_ids, int64
// [batch, src_len] and [batch, tgt_len] (symbolic dims named "batch",
// "src_len", "tgt_len"), and output logits, float32 [batch, tgt_len,
// Vocab]: the next-token scores of a teacher-forced decoder. The presets
// are Tiny (d=32, 2+2 layers; unit tests), Base (transformer-base with a
// vocabulary of 8000, 48.2M parameters) and Big (transformer-big with a
// vocabulary of 32000, 209.2M parameters; build it on demand and save it
// with graph.SaveOptions{ExternalData: true}, never commit it).
// RandomBatch makes valid inputs: tokens within the vocabulary, EOS ending
// each source, BOS starting each target, and padding at the end of some
// rows.
//
// # Architecture
//
// Embeddings: Gather from the table, times √d, plus a sinusoidal position
// table (tensor2tensor layout: the sin half, then the cos half, timescales
// from 1 to 10⁴) sliced to the sequence length from a constant
// [MaxLen, d] initializer, position_embedding, shared by both stacks.
//
// Encoder layers are self-attention and a feed-forward block; decoder
// layers add attention over the encoder's output between the two. With
// PreNorm (NeurST's default and the presets') each sublayer computes
// x + f(LN(x)) and each stack ends with a LayerNorm; otherwise LN(x + f(x))
// as in the original transformer, with no final LayerNorm.
//
// Attention projects Q, K and V with MatMul + Add (kernels [in, out]),
// reshapes them to [batch, heads, len, d/heads], scales Q by
// 1/√(d/heads), adds the mask bias to Q·Kᵀ, applies Softmax, multiplies by
// V, merges the heads back and applies the output projection. The masks
// are additive: −10⁹ where the source token is PadID (encoder
// self-attention and decoder cross-attention, [batch, 1, 1, src_len]) and
// strictly above the diagonal in decoder self-attention (Trilu of a
// [tgt_len, tgt_len] fill). The feed-forward block is dense1 → ReLU or
// GELU → dense2.
//
// The output projection multiplies by the transposed embedding table —
// the same initializer the lookups read, not a copy — and adds a bias.
//
// # Options
//
//   - SharedEmbeddings=false: separate encoder/embedding and
//     decoder/embedding tables [Vocab, d] and a softmax/kernel [d, Vocab].
//   - FusedQKV: self-attention projects with one qkv kernel [d, 3d] and
//     cross-attention with a q kernel and one kv kernel [d, 2d], followed by
//     a Split. The fused kernels are the separate ones side by side, so a
//     fused model computes exactly the function of the unfused one with
//     the same seed.
//   - PreNorm=false: post-norm, as above.
//   - Activation "gelu": the exact (erf) GELU; the Gelu op from opset 20,
//     x·½(1+erf(x/√2)) from Mul, Erf and Add below.
//   - Opset 14 to 21: LayerNormalization from 17; below, LayerNorm is
//     ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add, as
//     exporters write it for older opsets.
//
// # Names
//
// Names follow NeurST's scopes, so that inspect output reads like the
// model: shared_embedding, encoder/layer_0/self_attention/q/kernel (or
// .../qkv/kernel), decoder/layer_1/encdec_attention/kv/bias,
// encoder/layer_0/ffn/dense1/kernel, decoder/layer_0/ffn/ln/gamma,
// encoder/ln/beta, softmax/bias. Every node's single output has the
// node's name: .../self_attention/probs is the attention distribution,
// .../ffn/relu the activation, .../q/MatMul and .../q/BiasAdd the two
// halves of a projection. Shape and scalar constants are Constant nodes
// named const/..., so that every float initializer except the position
// table is a trainable parameter (Config.NumParams counts them).
//
// # Weights
//
// Every tensor is drawn from its own PCG stream, seeded by Config.Seed and
// the tensor's name, so a tensor's values do not depend on the other
// options: kernels Xavier-uniform, biases uniform in ±0.05, LayerNorm
// gammas in 1±0.1 and betas in ±0.1 (not exactly 1 and 0, so that a graph
// dropping one of them computes different values), embedding tables
// normal with standard deviation d^-½. The Config is recorded as JSON in
// the model's metadata under MetadataKey.
package testmodels

// Package transformer recognises an encoder-decoder transformer in an ONNX
// graph by its structure, not its names, and returns it as a typed Model:
// token tables (tied or not), positions (a stored table or a computed
// value), encoder and decoder layers (LayerNorm, attention, feed-forward
// block), final LayerNorms and the output projection.
//
// Recognize anchors on each Softmax (one per attention). It follows the
// Q·Kᵀ operands back through mask additions, views (Reshape, Transpose,
// Squeeze, Unsqueeze) and constant scalings to their projections. A
// scaling is a Mul or Div by any subgraph that evaluates to one number
// from constants and static dimensions (a literal, 1/Sqrt of the head
// size, Pow(head size, −¼) on q and on k as scaled-dot-product attention
// exports it), on either side of the views; each factor is reported
// (Attention's QScale, KScale, ScoreScale, VScale, ContextScale, FFN's
// HiddenScale) for consumers to fold, and a scaled residual branch is an
// error rather than ignored. Projections are MatMul
// or Gemm with an initializer weight (stored [in, out] or [out, in], seen
// through Transpose and Slice), an optional bias Add, and an optional
// Split or Slice of the output features for fused Q/K/V kernels. Slice
// bounds that PyTorch computes with Shape arithmetic are read with
// graph.KnownInts. The probs·V operand gives V, the consumer of the
// context gives the output projection, and the Add after it the residual.
// Feed-forward blocks anchor on ReLU, Gelu or the Erf of an exact GELU.
// LayerNorms are the LayerNormalization op or the decomposition exporters
// write below opset 17. Sublayers are then chained along the residual
// stream from each token embedding (a Gather of a float table by a graph
// input, scaled, plus positions); the chain with cross-attention is the
// decoder. Pre- or post-norm follows from where each LayerNorm sits.
//
// Quantizers (DequantizeLinear ← [Clip] ← QuantizeLinear) are transparent:
// the same Model comes out of an fp32 graph and its QAT graph, and each
// Projection.Input, Attention.Context and FFN.Hidden names the value a
// quantizer reads, so that the LightSeq exporter can find the clips.
//
// Where a graph defeats the recogniser, Options.Map names tensors by role
// (Model.Roles lists them; ReadMap reads a --map file). A failure names
// the layer and part ("decoder layer 1 cross-attention: K projection not
// found") and lists the nodes around the place it stopped.
package transformer

package transformer

import "github.com/qatc/qatc/onnx"

// Model is the typed transformer found in a graph.
type Model struct {
	Hidden, Heads, FFN, Vocab int
	// Activation is the FFN's: "relu" or "gelu".
	Activation string
	// PreNorm is true when LayerNorms come before attention and FFN.
	PreNorm bool

	SrcInput, TgtInput string // graph inputs of source and target ids
	Src, Tgt           Embedding
	Encoder            []EncoderLayer
	Decoder            []DecoderLayer
	// EncoderNorm and DecoderNorm are the stacks' final LayerNorms (nil in
	// post-norm models, which end on a layer's own LayerNorm).
	EncoderNorm, DecoderNorm *LayerNorm
	// Logits is the output projection; its weight is usually the target
	// table again (Tied).
	Logits Projection
	Tied   bool
	// LogitsOutput is the graph output holding the logits.
	LogitsOutput string

	// w reads the graph the model was recognised in (Scalar).
	w *walker
}

// Scalar returns the number value v of the recognised graph holds when it
// is computed from constants alone (initializers, Constant nodes, static
// dimensions read off shapes, through casts, views and arithmetic), as
// the recogniser reads scalings; ok is false otherwise.
func (tm *Model) Scalar(v string) (float64, bool) {
	if tm.w == nil {
		return 0, false
	}
	return tm.w.scalar(v)
}

// Embedding is a token table lookup, scaled, plus positions.
type Embedding struct {
	Table string  // initializer [vocab, hidden]
	Scale float32 // multiplier of the looked-up rows (√hidden, or 1)
	// Lookup is the Gather node.
	Lookup *onnx.NodeProto
	// PositionTable is the initializer the positions are sliced from, when
	// they are stored; else Positions names the computed value added to the
	// scaled embeddings (shape [len, hidden] or [1, len, hidden]).
	PositionTable string
	Positions     string
	// Output is the value entering the first layer.
	Output string
}

// Range is a half-open range [Lo, Hi) of output features.
type Range struct{ Lo, Hi int }

// Len returns Hi − Lo.
func (r Range) Len() int { return r.Hi - r.Lo }

// Projection is a dense layer y = x·W + b, or a slice of one's outputs.
type Projection struct {
	Node *onnx.NodeProto // the MatMul or Gemm
	// Input is the activation fed to the layer, seen through its quantizer
	// (the value that quantizer reads).
	Input string
	// Weight is the initializer; Transposed when stored [out, in]
	// (PyTorch Linear, Gemm transB=1).
	Weight     string
	Transposed bool
	// Out is the part of the weight's output features this projection
	// uses (all of them unless a fused QKV kernel is split).
	Out Range
	// Bias is the bias initializer ("" if none); BiasOut its part.
	Bias    string
	BiasOut Range
	// Output is the value after the bias (and after the output split).
	Output string
}

// LayerNorm is y = (x − mean)/√(var + ε)·Scale + Bias over the last axis.
type LayerNorm struct {
	Input, Output string
	Scale, Bias   string
	Epsilon       float32
}

// Attention is one multi-head attention block.
type Attention struct {
	Norm         *LayerNorm // the LayerNorm before it (pre-norm), or after the residual (post-norm)
	Q, K, V, Out Projection
	// Softmax is the attention's Softmax node.
	Softmax *onnx.NodeProto
	// QOperand, KOperand, VOperand and Probs are the operands of the two
	// attention MatMuls as their quantizers see them; Context is the
	// output projection's input.
	QOperand, KOperand, VOperand, Probs, Context string
	// Residual is the residual Add's output.
	Residual string
	// Self is true for self-attention (K and V read the query's input);
	// Memory is the value K and V are computed from, seen through views.
	Self   bool
	Memory string
	// The constant factors the graph applies on the way, read from any
	// constant subgraph of Mul/Div (a literal, Sqrt or Pow of the head
	// size, …) on either side of the views: QScale and KScale between the
	// Q and K projections and the operands of Q·Kᵀ, ScoreScale between
	// Q·Kᵀ and the Softmax, VScale between the V projection and its
	// operand, ContextScale between the probabilities and the output
	// projection's input (the probabilities' and the context's scalings).
	// Scale = QScale·KScale·ScoreScale is the softmax temperature, 1/√head
	// size in a standard transformer (scaled q alone, or q and k by
	// head size^−¼ each); the others are 1 in every common exporter.
	// Consumers fold them: the QOperand, KOperand and VOperand quantizers
	// see the scaled values, Context the scaled context.
	Scale                      float64
	QScale, KScale, ScoreScale float64
	VScale, ContextScale       float64
}

// FFN is the feed-forward block.
type FFN struct {
	Norm           *LayerNorm
	Dense1, Dense2 Projection
	// Hidden is the activation's output (Dense2's input), as its quantizer
	// sees it; HiddenScale the constant factor the graph applies between
	// the activation and that input (1 unless the graph scales it).
	Hidden      string
	HiddenScale float64
	Residual    string
}

// EncoderLayer is self-attention then FFN.
type EncoderLayer struct {
	SelfAttn Attention
	FFN      FFN
}

// DecoderLayer is causal self-attention, cross-attention over the encoder
// output, then FFN.
type DecoderLayer struct {
	SelfAttn, CrossAttn Attention
	FFN                 FFN
}

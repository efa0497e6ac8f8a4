// Package autodiff builds the training graph of a model: reverse-mode
// differentiation over ONNX that emits standard ONNX ops, so that an
// ordinary onnxruntime inference session computes the loss and the
// gradient of every parameter (onnxruntime ships no training build to rely
// on).
//
// Build copies the model and
//
//  1. picks the parameters: float initializers from which a float path
//     reaches the logits, except scalar constants (a quantizer's tiny and
//     qmax, softmax fixed scales) other than the quantizers' clips
//     (quantize.Units, or initializers named *_clip_max), and sinusoidal
//     position tables; or Options.Trainable;
//  2. ties copies: a parameter that is an exact or transposed copy of an
//     earlier one (exporters write a tied embedding table twice, once
//     transposed for the output projection) is rebuilt in the graph from
//     it with Transpose or Identity, so its gradient flows into the one
//     parameter and is summed there (Options.Untie turns this off);
//  3. turns the parameters into graph inputs of the same names and marks
//     the float values that depend on them; integer values (the
//     Shape/Gather/Concat arithmetic exporters write, masks, ids) carry no
//     gradient, so shape subgraphs are pruned from the backward pass;
//  4. appends the loss (token cross-entropy with label smoothing and pad
//     masking, distillation KL against the "teacher_logits" input, their
//     weighted sum, L2 on clips; or a scalar the model computes itself)
//     and seeds the logits' gradient with its closed form;
//  5. walks the forward nodes in reverse order, summing each value's
//     gradient contributions (Sum) and calling the node's rule from the
//     table in rules.go, one function per op type; a node on a gradient
//     path whose op has no rule is an error naming the node;
//  6. outputs "loss" and "<param>_grad" for every parameter (the node
//     computing a gradient is renamed to it, so that no Identity copies
//     it) and drops the nodes nothing reads.
//
// The forward graph's element types and shapes come from graph's
// inference, whose op table (graph/ops.go) serves both; the builder
// declares the types of the values it emits.
//
// Rules emit only ops valid at the model's opset (attribute or input forms
// of axes, Split and Squeeze). Broadcasting is undone by ReduceSum over
// the broadcast axes: statically where the operand is a constant or
// parameter of known shape, or where shape inference proves the shapes,
// and otherwise with axes computed in the graph from the runtime shapes
// (opset 13 or later); a sum over leading axes down to a static shape (a
// bias or LayerNorm parameter) is a product with a row of ones, which
// onnxruntime runs an order of magnitude faster than ReduceSum over those
// axes. Gather's gradient sums the rows of repeated indices with
// a one-hot product over the distinct indices (Unique) and scatters each
// distinct row once (ScatterND's reduction add is not safe in
// onnxruntime's threads); below opset 11 a one-hot product over the whole
// axis is used. Slice's gradient scatters into the positions the same
// Slice selects from a tensor of element indices, exact for any steps.
//
// A fake quantizer, QuantizeLinear → [integer Clip] → DequantizeLinear
// (quantize.Match), is differentiated as one unit (the integer tensors in between have no
// gradient): straight-through for x inside the representable range
// [s·(qmin−zp), s·(qmax−zp)] and zero outside; the scale receives Σ g·qmax
// over elements above the range plus Σ g·qmin below it, which through the
// graph's scale = Max(clip, tiny)/qmax gives NeurST's clip rule
// dclip = Σ_above g − 128/127·Σ_below g. ClipGrad "lsq" adds
// Σ g·(round(x/s) − x/s) inside. Per-axis scales are reduced over the other
// axes, blocked scales (opset 21 block_size) over their blocks. A softmax
// quantizer's scale is a constant and takes no gradient. From opset 11 the
// rule makes few passes over x: r = Clip(x, s·lo, s·hi) is x exactly
// inside the range, so Equal(r, x) is the mask, and outside r/s is qmax or
// qmin, so the NeurST sum is Σ (g − dx)·r / s, divided after reducing.
//
// The forward graph is kept value for value, with one change of form for
// speed: signed 8-bit activation quantizers (zero point 0) feeding a
// MatMul's left operand become uint8 with zero point 128, the same grid
// and the same dequantized values, because onnxruntime's x86 kernels fuse
// DequantizeLinear → MatMul into an integer product only for an unsigned
// left operand.
package autodiff

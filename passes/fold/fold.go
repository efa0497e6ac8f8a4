package fold

import (
	"fmt"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
	"strings"
)

// Metadata keys the fold passes write.
const (
	// FormatKey names the deployment format of a folded model: "qdq",
	// "qoperator" or "dynamic".
	FormatKey = "qatc.format"
	// RecordKey is the quantization record passes/quantize writes; a
	// folded model keeps it unchanged.
	RecordKey = "qatc.quantization"
)

// Folded describes one quantizer after Fold.
type Folded struct {
	Tensor string // the quantized value of the QAT graph
	Kind   string // weight, act, relu or softmax
	Bits   int
	Scale  string // the constant scale initializer
	// PerChannel scales run along Axis of the quantized tensor (normalized
	// for weights); per-block ones (BlockSize > 0) too.
	PerChannel bool
	Axis       int64
	BlockSize  int64
	// Int is the integer initializer that replaced a weight ("" for
	// activations); Dequantize names the QAT graph's DequantizeLinear.
	Int        string
	Dequantize string
	// Perm is the transposition from Tensor's layout to Int's (nil when
	// Int is stored in Tensor's layout).
	Perm []int64
}

// Result lists what Fold did, and what QOperator or Dynamic left in
// float.
type Result struct {
	Quantizers []Folded
	Float      []FloatProduct
}

// A FloatProduct is a MatMul or Gemm reading a stored weight that an
// integer format (QOperator, Dynamic) left in float, and why.
type FloatProduct struct {
	Node   string `json:"node"`
	Weight string `json:"weight"`
	Why    string `json:"why"`
}

func (p FloatProduct) String() string {
	return fmt.Sprintf("%s (weight %s) runs in float: %s", p.Node, p.Weight, p.Why)
}

// weightOf returns the stored weight a MatMul or Gemm reads, if any: the
// initializer behind one of its first two inputs, through dequantization
// and the movement ops exporters put on weights.
func weightOf(m *graph.Model, n *onnx.NodeProto) (string, bool) {
	for _, v := range n.Input[:min(2, len(n.Input))] {
		for depth := 0; depth < 8; depth++ {
			if m.Initializer(v) != nil {
				return v, true
			}
			p := m.Producer(v)
			if p == nil || len(p.Input) == 0 {
				break
			}
			if isDequantize(p) || quantize.Moves(p.OpType, quantize.Traced) {
				v = p.Input[0]
				continue
			}
			break
		}
	}
	return "", false
}

// notInteger says why input i of n is no integer operand: a float weight
// without a quantizer, a quantized weight dequantized before the data
// movement that reads it, or an activation without a quantizer.
func notInteger(m *graph.Model, n *onnx.NodeProto, i int) string {
	v := n.Input[i]
	var moves []string // from the product back
	for depth := 0; depth < 8; depth++ {
		if t := m.Initializer(v); t != nil {
			if graph.TensorType(t) == graph.Float {
				return fmt.Sprintf("its weight %q has no quantizer (excluded from insert)", v)
			}
			for j, k := 0, len(moves)-1; j < k; j, k = j+1, k-1 {
				moves[j], moves[k] = moves[k], moves[j]
			}
			return fmt.Sprintf("its quantized weight %q is dequantized before it reaches the product (%s), so the product reads float values", v, strings.Join(moves, " → "))
		}
		p := m.Producer(v)
		if p == nil || len(p.Input) == 0 {
			break
		}
		if isDequantize(p) || quantize.Moves(p.OpType, quantize.Traced) {
			moves = append(moves, p.OpType+" "+graph.NodeName(p))
			v = p.Input[0]
			continue
		}
		break
	}
	return fmt.Sprintf("its input %q has no quantizer (excluded from insert)", n.Input[i])
}

// leaveFloat records that n stays in float, when it reads a stored
// weight.
func (r *Result) leaveFloat(m *graph.Model, n *onnx.NodeProto, why string) {
	if w, ok := weightOf(m, n); ok {
		r.Float = append(r.Float, FloatProduct{Node: graph.NodeName(n), Weight: w, Why: why})
	}
}

// Fold turns a QAT model into the qdq deployment form, in place:
//
//   - every scale computed as Div(Max(clip, tiny), qmax) becomes a constant
//     initializer with the very float32 value the QAT graph computes;
//   - a weight's QuantizeLinear is evaluated: the weight becomes an int8
//     (uint8 for unsigned quantizers) initializer holding exactly the
//     integers QuantizeLinear produces (round half to even, saturated, held
//     to the bits' range below 8 bits) and only its DequantizeLinear stays;
//     4-bit zero points become 8-bit ones, as the integers are stored in
//     bytes;
//   - a weight quantized per block in the QAT graph's view
//     (quantize.BlockView) is stored in its own layout, blocked along its
//     own axis, and read by its DequantizeLinear directly (GuardBlocked
//     restores the view where onnxruntime needs it);
//   - a weight's DequantizeLinear moves after the Transpose, Gather, Slice,
//     Reshape, Squeeze and Unsqueeze nodes that read it where its scale
//     allows, so that it feeds the MatMul directly as onnxruntime's QDQ
//     fusions and TensorRT expect: a weight read through a Transpose is
//     stored transposed (a table that is also read otherwise, as tied
//     embeddings are, keeps one copy and an int8 Transpose, which
//     onnxruntime folds at load time), and an embedding table is gathered
//     in int8, so that only the looked-up rows are dequantized;
//   - activation quantizers keep their QuantizeLinear/DequantizeLinear pair
//     with the constant scale;
//   - the clip initializers, the tiny and qmax constants, the scale
//     arithmetic and the float weights (where nothing else reads them) are
//     removed.
//
// The metadata gets FormatKey = "qdq"; the quantization record stays.
func Fold(m *graph.Model) (*Result, error) {
	qs, err := findQuantizers(m)
	if err != nil {
		return nil, err
	}
	if len(qs) == 0 {
		return nil, fmt.Errorf("model has no quantizers (QuantizeLinear→DequantizeLinear pairs); make a QAT model with `qatc insert` first")
	}
	res := &Result{}
	for _, q := range qs {
		f, err := foldOne(m, q)
		if err != nil {
			return nil, err
		}
		res.Quantizers = append(res.Quantizers, f)
	}
	sinkDequantize(m, res)
	m.RemoveDead()
	if err := m.TopoSort(); err != nil {
		return nil, err
	}
	m.SetMetadata(FormatKey, "qdq")
	return res, nil
}

// foldOne replaces q's scale arithmetic by a constant and, for a weight,
// stores the integers.
func foldOne(m *graph.Model, q *quantizer) (Folded, error) {
	f := Folded{Tensor: q.Tensor, Kind: q.Kind, Bits: q.Bits, PerChannel: !q.perTensor(), Axis: q.axis, BlockSize: q.blockSize, Dequantize: q.DQ.Name}
	if q.Clip != "" {
		f.Scale = m.AddInitializer(graph.FloatTensor(m.UniqueName(q.Tensor+"_scale"), q.scaleDims, q.scale))
		m.ReplaceInput(q.Q, 1, f.Scale)
		m.ReplaceInput(q.DQ, 1, f.Scale)
	} else {
		f.Scale = q.Q.Input[1]
	}
	if q.Kind != quantize.KindWeight {
		return f, nil
	}

	x, dims, err := constFloats(m, q.Tensor)
	if err != nil {
		return f, fmt.Errorf("weight quantizer %s: %w", graph.NodeName(q.Q), err)
	}
	ints, err := quantizeBytes(x, dims, q.scale, q.axis, q.blockSize, q.Lo, q.Hi)
	if err != nil {
		return f, fmt.Errorf("weight quantizer %s on %q: %w", graph.NodeName(q.Q), q.Tensor, err)
	}
	f.Int = m.UniqueName(q.Tensor + "_quantized")
	dt := graph.Uint8
	if q.Signed() {
		dt = graph.Int8
	}
	m.AddInitializer(&onnx.TensorProto{Name: f.Int, Dims: append([]int64(nil), dims...), DataType: int32(dt), RawData: ints})
	if f.Axis < 0 {
		f.Axis += int64(len(dims))
	}

	// The DequantizeLinear reads the stored integers; its zero point must
	// have their (8-bit) type.
	m.ReplaceInput(q.DQ, 0, f.Int)
	if q.View != nil {
		// The stored weight is blocked along its own axis, read by the
		// DequantizeLinear directly (fold.GuardBlocked puts the view back
		// where onnxruntime needs it).
		for _, a := range q.DQ.Attribute {
			if a.Name == "axis" {
				a.I = q.axis
			}
		}
		m.ReplaceUses(q.View.Out.Output[0], q.DQ.Output[0])
	}
	if q.View != nil || q.Type == graph.Int4 || q.Type == graph.Uint4 || len(q.DQ.Input) < 3 || q.DQ.Input[2] == "" {
		zdims := q.scaleDims
		n := graph.NumElements(zdims)
		var zp *onnx.TensorProto
		name := m.UniqueName(q.Tensor + "_zero_point")
		if q.Signed() {
			zp = graph.Int8Tensor(name, zdims, make([]int8, n))
		} else {
			zp = graph.Uint8Tensor(name, zdims, make([]uint8, n))
		}
		m.AddInitializer(zp)
		for len(q.DQ.Input) < 3 {
			q.DQ.Input = append(q.DQ.Input, "")
		}
		m.ReplaceInput(q.DQ, 2, name)
	}
	// Q (and the Clip) are dead now; RemoveDead drops them.
	return f, nil
}

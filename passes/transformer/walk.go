package transformer

import (
	"fmt"
	"math"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
)

// walker holds what the recogniser reads about a graph: the value index,
// inferred shapes and the small integer values (slice bounds, split sizes)
// that shape inference evaluates.
type walker struct {
	m      *graph.Model
	shapes map[string]graph.TensorInfo
	ints   map[string][]int64
	// unresolved holds the dense layers whose weight could not be traced
	// to an initializer, for Options.Map to name (nil: such a layer is an
	// error at once).
	unresolved map[*onnx.NodeProto]error
}

// skipQ returns the value a fake quantizer reads when v is its output
// (quantize.QuantizedInput), repeatedly; else v.
func (w *walker) skipQ(v string) string {
	for {
		x, ok := quantize.QuantizedInput(w.m, v)
		if !ok {
			return v
		}
		v = x
	}
}

// isView reports whether op only rearranges or renames a tensor's
// elements (quantize.Views).
func isView(op string) bool { return quantize.Moves(op, quantize.Views) }

// back follows v back through quantizers, views and multiplications or
// divisions by a scalar constant, returning the value it started from and
// the product of the constants.
func (w *walker) back(v string) (string, float64) {
	scale := 1.0
	for {
		v = w.skipQ(v)
		p := w.m.Producer(v)
		if p == nil || len(p.Input) == 0 {
			return v, scale
		}
		switch {
		case isView(p.OpType):
			v = p.Input[0]
			continue
		case p.OpType == "Mul" || p.OpType == "Div":
			if x, c, ok := w.unscale(p); ok {
				v, scale = x, scale*c
				continue
			}
		}
		return v, scale
	}
}

// unscale reads a Mul or Div node p by a scalar constant as x·c: it
// returns the other operand x and the factor c (1/divisor for Div).
func (w *walker) unscale(p *onnx.NodeProto) (string, float64, bool) {
	if c, ok := w.scalar(p.Input[1]); ok {
		if p.OpType == "Div" {
			return p.Input[0], 1 / c, true
		}
		return p.Input[0], c, true
	}
	if c, ok := w.scalar(p.Input[0]); ok && p.OpType == "Mul" {
		return p.Input[1], c, true
	}
	return "", 0, false
}

// base is back without the scale.
func (w *walker) base(v string) string {
	b, _ := w.back(v)
	return b
}

// forward returns the nodes that read v, looking through quantizers,
// views and multiplications or divisions by a constant: the first
// consumers that are none of these.
func (w *walker) forward(v string) []*onnx.NodeProto {
	var out []*onnx.NodeProto
	seen := map[string]bool{}
	var visit func(string)
	visit = func(v string) {
		if seen[v] {
			return
		}
		seen[v] = true
		for _, c := range w.m.Consumers(v) {
			switch {
			case c.OpType == "QuantizeLinear" && c.Input[0] == v:
				for _, u := range quantize.Readers(w.m, v) {
					if u.Q == c {
						visit(u.Output)
					}
				}
			case isView(c.OpType) && c.Input[0] == v:
				visit(c.Output[0])
			case c.OpType == "Mul" || c.OpType == "Div":
				if x, _, ok := w.unscale(c); ok && x == v {
					visit(c.Output[0])
				} else {
					out = append(out, c)
				}
			default:
				out = append(out, c)
			}
		}
	}
	visit(v)
	return out
}

// scalar returns v's value when it is one number computed from constants
// alone: initializers, Constant nodes and the small integers shape
// inference evaluates (a static dimension, as exporters read the head
// size off a tensor's shape), through casts, views and arithmetic. So a
// scaling written as a literal, as Div by Sqrt(head size), or as
// Pow(head size, −0.25) on q and on k reads as its value.
func (w *walker) scalar(v string) (float64, bool) { return w.eval(v, 24) }

// eval is scalar with a bound on the depth of the subgraph it reads.
func (w *walker) eval(v string, depth int) (float64, bool) {
	if depth == 0 || v == "" {
		return 0, false
	}
	if f, ok := w.m.ConstFloats(v); ok {
		if len(f) != 1 {
			return 0, false
		}
		return float64(f[0]), true
	}
	if is, ok := w.ints[v]; ok {
		if len(is) != 1 {
			return 0, false
		}
		return float64(is[0]), true
	}
	p := w.m.Producer(v)
	if p == nil || len(p.Input) == 0 {
		return 0, false
	}
	x, ok := w.eval(p.Input[0], depth-1)
	if !ok {
		return 0, false
	}
	y := func() (float64, bool) {
		if len(p.Input) < 2 {
			return 0, false
		}
		return w.eval(p.Input[1], depth-1)
	}
	switch p.OpType {
	case "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Expand":
		// One number, whatever the shape around it.
		return x, true
	case "Cast":
		switch graph.DataType(graph.IntAttr(p, "to", 0)) {
		case graph.Float, graph.Double, graph.Float16, graph.BFloat16:
			return x, true
		case graph.Int64, graph.Int32, graph.Int16, graph.Int8, graph.Uint8, graph.Uint16, graph.Uint32, graph.Uint64:
			return math.Trunc(x), true
		}
		return 0, false
	case "Neg":
		return -x, true
	case "Reciprocal":
		return 1 / x, x != 0
	case "Sqrt":
		return math.Sqrt(x), x >= 0
	}
	b, ok := y()
	if !ok {
		return 0, false
	}
	switch p.OpType {
	case "Mul":
		return x * b, true
	case "Div":
		return x / b, b != 0
	case "Add":
		return x + b, true
	case "Sub":
		return x - b, true
	case "Pow":
		r := math.Pow(x, b)
		return r, !math.IsNaN(r) && !math.IsInf(r, 0)
	}
	return 0, false
}

// isConst reports whether v is an initializer or computed from constants
// only (through a quantizer, say).
func (w *walker) isConst(v string) bool {
	v = w.skipQ(v)
	if w.m.Initializer(v) != nil {
		return true
	}
	p := w.m.Producer(v)
	if p == nil {
		return false
	}
	if p.OpType == "Constant" {
		return true
	}
	for _, in := range p.Input {
		if in != "" && !w.isConst(in) {
			return false
		}
	}
	return len(p.Input) > 0
}

// rank returns v's inferred rank, or -1.
func (w *walker) rank(v string) int {
	if t, ok := w.shapes[v]; ok {
		return t.Rank()
	}
	return -1
}

// lastDim returns v's static last dimension, or -1.
func (w *walker) lastDim(v string) int {
	t, ok := w.shapes[v]
	if !ok || t.Rank() < 1 || !t.Dims[len(t.Dims)-1].Static() {
		return -1
	}
	return int(t.Dims[len(t.Dims)-1].Value)
}

// isLastAxis reports whether axis a of v is its last axis.
func (w *walker) isLastAxis(v string, a int64) bool {
	if a == -1 {
		return true
	}
	r := w.rank(v)
	return r > 0 && a == int64(r-1)
}

// sliceBounds returns a Slice node's single axis, start and end, read
// from its inputs (opset ≥ 10) or attributes.
func (w *walker) sliceBounds(n *onnx.NodeProto) (axis, start, end int64, err error) {
	var starts, ends, axes, steps []int64
	if len(n.Input) == 1 {
		starts, ends, axes = graph.IntsAttr(n, "starts"), graph.IntsAttr(n, "ends"), graph.IntsAttr(n, "axes")
	} else {
		var ok bool
		if starts, ok = w.ints[n.Input[1]]; !ok {
			return 0, 0, 0, fmt.Errorf("slice %s: its start %s is not a known constant", graph.NodeName(n), n.Input[1])
		}
		if ends, ok = w.ints[n.Input[2]]; !ok {
			return 0, 0, 0, fmt.Errorf("slice %s: its end %s is not a known constant", graph.NodeName(n), n.Input[2])
		}
		if len(n.Input) > 3 && n.Input[3] != "" {
			if axes, ok = w.ints[n.Input[3]]; !ok {
				return 0, 0, 0, fmt.Errorf("slice %s: its axes %s are not a known constant", graph.NodeName(n), n.Input[3])
			}
		}
		if len(n.Input) > 4 && n.Input[4] != "" {
			steps = w.ints[n.Input[4]]
		}
	}
	if len(starts) != 1 || len(ends) != 1 {
		return 0, 0, 0, fmt.Errorf("slice %s cuts %d axes; a projection split cuts one", graph.NodeName(n), len(starts))
	}
	if len(steps) == 1 && steps[0] != 1 {
		return 0, 0, 0, fmt.Errorf("slice %s has step %d; a projection split has step 1", graph.NodeName(n), steps[0])
	}
	if len(axes) == 1 {
		axis = axes[0]
	}
	return axis, starts[0], ends[0], nil
}

// clampRange resolves negative and oversized slice bounds against size n.
func clampRange(start, end int64, n int) Range {
	if start < 0 {
		start += int64(n)
	}
	if end < 0 {
		end += int64(n)
	}
	start = max(0, min(start, int64(n)))
	end = max(start, min(end, int64(n)))
	return Range{int(start), int(end)}
}

// splitRange returns the range of output i of a Split node over an axis
// of size n.
func (w *walker) splitRange(n *onnx.NodeProto, i, size int) (Range, error) {
	var sizes []int64
	if len(n.Input) > 1 && n.Input[1] != "" {
		s, ok := w.ints[n.Input[1]]
		if !ok {
			return Range{}, fmt.Errorf("split %s: its sizes %s are not a known constant", graph.NodeName(n), n.Input[1])
		}
		sizes = s
	} else {
		sizes = graph.IntsAttr(n, "split")
	}
	if len(sizes) == 0 {
		if size < 0 || size%len(n.Output) != 0 {
			return Range{}, fmt.Errorf("split %s: cannot tell its part sizes (width %d, %d outputs)", graph.NodeName(n), size, len(n.Output))
		}
		each := size / len(n.Output)
		return Range{i * each, (i + 1) * each}, nil
	}
	lo := 0
	for _, s := range sizes[:i] {
		lo += int(s)
	}
	return Range{lo, lo + int(sizes[i])}, nil
}

// outputIndex returns the index of v among n's outputs.
func outputIndex(n *onnx.NodeProto, v string) int {
	for i, o := range n.Output {
		if o == v {
			return i
		}
	}
	return -1
}

// around describes the neighbourhood of value v: its producers two levels
// up and its consumers, one node a line.
func (w *walker) around(v string) string {
	var lines []string
	seen := map[*onnx.NodeProto]bool{}
	line := func(prefix string, n *onnx.NodeProto) {
		if seen[n] {
			return
		}
		seen[n] = true
		ins := make([]string, len(n.Input))
		for i, in := range n.Input {
			ins[i] = short(in)
		}
		lines = append(lines, fmt.Sprintf("    %s%s %s(%s) -> %s", prefix, n.OpType, n.Name, strings.Join(ins, ", "), short(strings.Join(n.Output, ", "))))
	}
	if p := w.m.Producer(v); p != nil {
		for _, in := range p.Input {
			if pp := w.m.Producer(in); pp != nil && pp.OpType != "Constant" {
				line("  ", pp)
			}
		}
		line("", p)
	} else {
		lines = append(lines, fmt.Sprintf("    %s is a graph input or initializer", v))
	}
	for i, c := range w.m.Consumers(v) {
		if i == 4 {
			lines = append(lines, "    ...")
			break
		}
		line("→ ", c)
	}
	return "\n  nodes around " + v + ":\n" + strings.Join(lines, "\n")
}

// short trims long value names for display.
func short(s string) string {
	if len(s) > 60 {
		return "…" + s[len(s)-59:]
	}
	return s
}

// near reports whether a and b agree to float32 rounding.
func near(a, b float64) bool { return math.Abs(a-b) <= 1e-5*math.Max(1, math.Abs(b)) }

package transformer

import (
	"fmt"
	"github.com/qatc/qatc/onnx"

	"github.com/qatc/qatc/graph"
)

// weight traces a MatMul/Gemm weight operand back to its initializer
// through quantizers, Identity, 2-D Transposes and Slices; flip says the
// product itself reads the operand transposed (Gemm's transB). It returns
// the initializer, whether the product reads it transposed, and the
// output features of the initializer it keeps.
func (w *walker) weight(v string, flip bool) (name string, transposed bool, out Range, err error) {
	type cut struct {
		axis  int  // of the Slice's input
		above bool // odd number of transposes between the Slice and the operand
		r     Range
	}
	var cuts []cut
	for {
		v = w.skipQ(v)
		if t := w.m.Initializer(v); t != nil {
			if len(t.Dims) != 2 || graph.TensorType(t) != graph.Float {
				return "", false, Range{}, fmt.Errorf("weight %s is %s%v, not a float matrix", v, graph.TensorType(t), t.Dims)
			}
			outAxis := 1
			if flip {
				outAxis = 0
			}
			out = Range{0, int(t.Dims[outAxis])}
			// cuts were collected outermost first; apply innermost first.
			for i := len(cuts) - 1; i >= 0; i-- {
				c := cuts[i]
				axis := c.axis
				if flip != c.above { // transposes below the Slice
					axis = 1 - axis
				}
				if axis != outAxis {
					return "", false, Range{}, fmt.Errorf("weight %s is sliced along its input axis; only output features can be split", v)
				}
				r := clampRange(int64(c.r.Lo), int64(c.r.Hi), out.Len())
				out = Range{out.Lo + r.Lo, out.Lo + r.Hi}
			}
			return v, flip, out, nil
		}
		p := w.m.Producer(v)
		if p == nil {
			return "", false, Range{}, fmt.Errorf("weight operand %s is not an initializer (a graph input?)", v)
		}
		switch p.OpType {
		case "Identity", "Cast":
			v = p.Input[0]
		case "Transpose":
			perm := graph.IntsAttr(p, "perm")
			if len(perm) != 0 && !(len(perm) == 2 && perm[0] == 1 && perm[1] == 0) {
				return "", false, Range{}, fmt.Errorf("weight operand %s is a Transpose with perm %v, not a matrix transpose", v, perm)
			}
			flip = !flip
			v = p.Input[0]
		case "Slice":
			axis, start, end, err := w.sliceBounds(p)
			if err != nil {
				return "", false, Range{}, err
			}
			if axis < 0 {
				axis += 2
			}
			// Bounds are resolved against the size once the initializer is
			// known; keep them raw (clampRange handles negatives then).
			cuts = append(cuts, cut{int(axis), flip, Range{int(start), int(min(end, 1<<40))}})
			v = p.Input[0]
		default:
			return "", false, Range{}, fmt.Errorf("weight operand %s is made by %s %s, not an initializer (through Transpose/Slice/quantizers)", v, p.OpType, graph.NodeName(p))
		}
	}
}

// bias traces a bias operand back to a rank-1 float initializer, possibly
// sliced; ok is false when v is not one.
func (w *walker) bias(v string) (name string, r Range, ok bool) {
	v = w.skipQ(v)
	if t := w.m.Initializer(v); t != nil {
		if len(t.Dims) == 1 && graph.TensorType(t) == graph.Float {
			return v, Range{0, int(t.Dims[0])}, true
		}
		return "", Range{}, false
	}
	p := w.m.Producer(v)
	if p == nil || p.OpType != "Slice" {
		return "", Range{}, false
	}
	t := w.m.Initializer(w.skipQ(p.Input[0]))
	if t == nil || len(t.Dims) != 1 {
		return "", Range{}, false
	}
	_, start, end, err := w.sliceBounds(p)
	if err != nil {
		return "", Range{}, false
	}
	return t.Name, clampRange(start, end, int(t.Dims[0])), true
}

// projection recognises v as (part of) the output of a dense layer:
// MatMul or Gemm with an initializer weight, an optional bias Add, and
// optional Split/Slice of the output features.
func (w *walker) projection(v string) (Projection, error) {
	p := Projection{Output: v}
	var cuts []Range  // output splits, outermost first
	biasCuts := -1    // how many of cuts lie outside the bias Add
	cur := w.skipQ(v) // value being explained
	for {
		n := w.m.Producer(cur)
		if n == nil {
			return p, fmt.Errorf("%s is not computed by a dense layer (it is a graph input or initializer)", cur)
		}
		switch n.OpType {
		case "Split":
			axis := graph.IntAttr(n, "axis", 0)
			if !w.isLastAxis(n.Input[0], axis) {
				return p, fmt.Errorf("split %s is not along the feature axis", graph.NodeName(n))
			}
			r, err := w.splitRange(n, outputIndex(n, cur), w.lastDim(n.Input[0]))
			if err != nil {
				return p, err
			}
			cuts = append(cuts, r)
			cur = w.skipQ(n.Input[0])
			continue
		case "Slice":
			axis, start, end, err := w.sliceBounds(n)
			if err != nil {
				return p, err
			}
			if !w.isLastAxis(n.Input[0], axis) {
				return p, fmt.Errorf("slice %s is not along the feature axis", graph.NodeName(n))
			}
			cuts = append(cuts, Range{int(start), int(min(end, 1<<40))})
			cur = w.skipQ(n.Input[0])
			continue
		case "Add":
			if p.Bias != "" {
				return p, fmt.Errorf("%s adds a second bias", graph.NodeName(n))
			}
			found := false
			for i := range 2 {
				if b, r, ok := w.bias(n.Input[i]); ok {
					p.Bias, p.BiasOut, found = b, r, true
					biasCuts = len(cuts)
					cur = w.skipQ(n.Input[1-i])
					break
				}
			}
			if !found {
				return p, fmt.Errorf("%s is an Add without a bias initializer operand", graph.NodeName(n))
			}
			continue
		case "MatMul", "Gemm":
			if n.OpType == "Gemm" && graph.IntAttr(n, "transA", 0) != 0 {
				return p, fmt.Errorf("gemm %s has transA=1", graph.NodeName(n))
			}
			name, tr, out, err := w.weight(n.Input[1], n.OpType == "Gemm" && graph.IntAttr(n, "transB", 0) != 0)
			if err != nil {
				// A weight that is not a (sliced, transposed) initializer
				// may still be named with Options.Map: note it, with the
				// width the output has, and go on.
				width := w.lastDim(n.Output[0])
				if w.unresolved == nil || width <= 0 {
					return p, fmt.Errorf("%s: %v", graph.NodeName(n), err)
				}
				w.unresolved[n] = err
				name, tr, out = "", false, Range{0, width}
			}
			if n.OpType == "Gemm" && len(n.Input) > 2 && n.Input[2] != "" {
				if p.Bias != "" {
					return p, fmt.Errorf("gemm %s has a bias and is followed by another", graph.NodeName(n))
				}
				b, r, ok := w.bias(n.Input[2])
				if !ok {
					return p, fmt.Errorf("gemm %s: its C operand %s is not a bias vector", graph.NodeName(n), n.Input[2])
				}
				p.Bias, p.BiasOut, biasCuts = b, r, len(cuts)
			}
			p.Node, p.Weight, p.Transposed = n, name, tr
			p.Input = w.skipQ(n.Input[0])
			p.Out = compose(out, cuts)
			if p.Bias != "" {
				p.BiasOut = compose(p.BiasOut, cuts[:biasCuts])
				if p.BiasOut.Len() != p.Out.Len() {
					return p, fmt.Errorf("%s: bias %s part %v does not match the weight's %v", graph.NodeName(n), p.Bias, p.BiasOut, p.Out)
				}
			}
			return p, nil
		default:
			return p, fmt.Errorf("%s is made by %s %s, not a dense layer", cur, n.OpType, graph.NodeName(n))
		}
	}
}

// compose narrows r by cuts, innermost (last) first.
func compose(r Range, cuts []Range) Range {
	for i := len(cuts) - 1; i >= 0; i-- {
		c := clampRange(int64(cuts[i].Lo), int64(cuts[i].Hi), r.Len())
		r = Range{r.Lo + c.Lo, r.Lo + c.Hi}
	}
	return r
}

// denseAfter recognises the dense layer a MatMul/Gemm node starts: its
// bias Add when one follows.
func (w *walker) denseAfter(n *onnx.NodeProto) (Projection, error) {
	out := n.Output[0]
	if cs := w.m.Consumers(out); len(cs) == 1 && cs[0].OpType == "Add" {
		a := cs[0]
		other := a.Input[0]
		if other == out {
			other = a.Input[1]
		}
		if _, _, ok := w.bias(other); ok {
			out = a.Output[0]
		}
	}
	return w.projection(out)
}

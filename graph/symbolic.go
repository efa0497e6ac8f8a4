package graph

// Symbolic values of small integer tensors.
//
// Exporters compute reshape targets in the graph: Shape, Gather, Unsqueeze,
// Concat, Equal, Where over tiny int64 tensors. Shape inference evaluates
// those tensors at graph-build time, element by element, where an element
// is either a known integer or a symbolic dimension (a graph input's dim
// param, such as "batch"), so that Reshape and Expand get static ranks and
// keep named dimensions.

// maxSymElems bounds the tensors whose contents are tracked; shape
// arithmetic never needs more.
const maxSymElems = 64

// sym is one element of a tracked tensor: a known integer, a named
// dimension (param != ""), or nothing known.
type sym struct {
	known bool
	v     int64
	param string
}

func (s sym) unknown() bool { return !s.known && s.param == "" }

func known(v int64) sym { return sym{known: true, v: v} }

// symDim converts an inferred dimension into a tensor element.
func symDim(d Dim) sym {
	if d.Static() {
		return known(d.Value)
	}
	return sym{param: d.Param}
}

// dim converts a tensor element into a dimension of a shape it describes.
func (s sym) dim() Dim {
	if s.known && s.v >= 0 {
		return Dim{Value: s.v}
	}
	return Dim{Value: -1, Param: s.param}
}

// symTensor is a tracked tensor: static dims and row-major elements.
type symTensor struct {
	dims  []int64
	elems []sym
}

// ints returns the elements when all are known.
func (t *symTensor) ints() ([]int64, bool) {
	if t == nil {
		return nil, false
	}
	out := make([]int64, len(t.elems))
	for i, e := range t.elems {
		if !e.known {
			return nil, false
		}
		out[i] = e.v
	}
	return out, true
}

// symBinary applies a two-operand integer op elementwise, broadcasting
// scalars and length-1 vectors (the only broadcasting shape arithmetic
// uses).
func symBinary(a, b *symTensor, f func(x, y sym) sym) *symTensor {
	if a == nil || b == nil || len(a.dims) > 1 || len(b.dims) > 1 {
		return nil
	}
	na, nb := len(a.elems), len(b.elems)
	n := max(na, nb)
	if (na != n && na != 1) || (nb != n && nb != 1) {
		return nil
	}
	dims := a.dims
	if len(b.dims) > len(dims) || (len(b.dims) == 1 && nb > na) {
		dims = b.dims
	}
	out := &symTensor{dims: append([]int64(nil), dims...), elems: make([]sym, n)}
	for i := range out.elems {
		x, y := a.elems[min(i, na-1)], b.elems[min(i, nb-1)]
		out.elems[i] = f(x, y)
	}
	return out
}

// symArith is Add, Sub, Mul, Div, Max or Min on elements; a named
// dimension survives only the identities (d+0, d-0, d*1, d/1).
func symArith(op string) func(x, y sym) sym {
	return func(x, y sym) sym {
		if x.known && y.known {
			switch op {
			case "Add":
				return known(x.v + y.v)
			case "Sub":
				return known(x.v - y.v)
			case "Mul":
				return known(x.v * y.v)
			case "Div":
				if y.v == 0 {
					return sym{}
				}
				return known(x.v / y.v)
			case "Max":
				return known(max(x.v, y.v))
			case "Min":
				return known(min(x.v, y.v))
			}
			return sym{}
		}
		switch {
		case op == "Add" && y.known && y.v == 0, op == "Sub" && y.known && y.v == 0,
			op == "Mul" && y.known && y.v == 1, op == "Div" && y.known && y.v == 1:
			return sym{param: x.param}
		case op == "Add" && x.known && x.v == 0, op == "Mul" && x.known && x.v == 1:
			return sym{param: y.param}
		case (op == "Max" || op == "Min") && x.param != "" && x.param == y.param:
			return x
		}
		return sym{}
	}
}

func boolSym(b bool) sym {
	if b {
		return known(1)
	}
	return known(0)
}

// symCompare is Equal, Less or Greater. A named dimension is never
// negative, which settles the comparisons exporters make against -1.
func symCompare(op string) func(x, y sym) sym {
	return func(x, y sym) sym {
		if x.known && y.known {
			switch op {
			case "Equal":
				return boolSym(x.v == y.v)
			case "Less":
				return boolSym(x.v < y.v)
			case "Greater":
				return boolSym(x.v > y.v)
			}
			return sym{}
		}
		if x.param != "" && x.param == y.param {
			return boolSym(op == "Equal")
		}
		if x.param != "" && y.known && y.v < 0 {
			return boolSym(op == "Greater")
		}
		if y.param != "" && x.known && x.v < 0 {
			return boolSym(op == "Less")
		}
		return sym{}
	}
}

// symLogic is And or Or on booleans.
func symLogic(op string) func(x, y sym) sym {
	return func(x, y sym) sym {
		if x.known && y.known {
			if op == "And" {
				return boolSym(x.v != 0 && y.v != 0)
			}
			return boolSym(x.v != 0 || y.v != 0)
		}
		return sym{}
	}
}

// constSym returns the tracked contents of a constant integer tensor.
func constSym(dims []int64, vals []int64) *symTensor {
	t := &symTensor{dims: append([]int64(nil), dims...), elems: make([]sym, len(vals))}
	for i, v := range vals {
		t.elems[i] = known(v)
	}
	return t
}

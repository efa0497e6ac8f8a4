package graph

import "github.com/qatc/qatc/onnx"

// KnownInts returns the contents of every small integer value that shape
// inference can evaluate without running the graph: initializers,
// Constant outputs and the Shape/Gather/Concat/arithmetic exporters use to
// compute slice bounds and reshape targets. Passes use it to read such
// bounds (a fused Q/K/V split, say) however the exporter computed them.
func (m *Model) KnownInts() (map[string][]int64, error) {
	in, err := m.infer()
	if err != nil {
		return nil, err
	}
	out := make(map[string][]int64, len(in.val))
	for name, v := range in.val {
		if ints, ok := v.ints(); ok {
			out[name] = ints
		}
	}
	return out, nil
}

// Const returns the constant called name: an initializer, or the value of
// a Constant node (value, value_float(s), value_int(s)); nil when name is
// computed, an input, or a Constant of another kind. Every pass reads
// constants through it, so a value an exporter wrote as a Constant node
// reads as the initializer another exporter writes.
func (m *Model) Const(name string) *onnx.TensorProto {
	if t := m.Initializer(name); t != nil {
		return t
	}
	n := m.Producer(name)
	if n == nil || n.OpType != "Constant" || n.Domain != "" && n.Domain != "ai.onnx" {
		return nil
	}
	for _, a := range n.Attribute {
		switch a.Name {
		case "value":
			return a.T
		case "value_float":
			return FloatTensor(name, nil, []float32{a.F})
		case "value_floats":
			return FloatTensor(name, []int64{int64(len(a.Floats))}, a.Floats)
		case "value_int":
			return Int64Tensor(name, nil, []int64{a.I})
		case "value_ints":
			return Int64Tensor(name, []int64{int64(len(a.Ints))}, a.Ints)
		}
	}
	return nil
}

// ConstFloats returns the values of a float32 constant (Const); ok is
// false for anything else.
func (m *Model) ConstFloats(name string) (v []float32, ok bool) {
	t := m.Const(name)
	if t == nil || TensorType(t) != Float {
		return nil, false
	}
	v, err := Floats(t)
	return v, err == nil
}

// ConstInts returns the values of an integer constant (Const) as int64;
// ok is false for anything else.
func (m *Model) ConstInts(name string) (v []int64, ok bool) {
	t := m.Const(name)
	if t == nil {
		return nil, false
	}
	v, err := Int64s(t)
	return v, err == nil
}

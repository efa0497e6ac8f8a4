package graph

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

package graph

import (
	"slices"
	"testing"
)

func TestConst(t *testing.T) {
	m := New("g", 17)
	m.AddInitializer(FloatTensor("w", []int64{2}, []float32{1.5, -2}))
	m.AddInitializer(Int64Tensor("shape", []int64{2}, []int64{3, 4}))
	m.AddInput("x", Float, []int64{2})
	m.Op("Constant", "", nil, []string{"c_value"}, AttrTensor("value", FloatTensor("", nil, []float32{0.25})))
	m.Op("Constant", "", nil, []string{"c_float"}, AttrFloat("value_float", 3))
	m.Op("Constant", "", nil, []string{"c_floats"}, AttrFloats("value_floats", 1, 2))
	m.Op("Constant", "", nil, []string{"c_int"}, AttrInt("value_int", 7))
	m.Op("Constant", "", nil, []string{"c_ints"}, AttrInts("value_ints", 5, 6))
	m.Op("Constant", "", nil, []string{"c_string"}, AttrString("value_string", "s"))
	m.Op("Add", "", []string{"x", "w"}, []string{"sum"})
	tests := []struct {
		name   string
		floats []float32 // nil: not a float constant
		ints   []int64   // nil: not an integer constant
	}{
		{"w", []float32{1.5, -2}, nil},
		{"shape", nil, []int64{3, 4}},
		{"c_value", []float32{0.25}, nil},
		{"c_float", []float32{3}, nil},
		{"c_floats", []float32{1, 2}, nil},
		{"c_int", nil, []int64{7}},
		{"c_ints", nil, []int64{5, 6}},
		{"c_string", nil, nil},
		{"x", nil, nil},
		{"sum", nil, nil},
		{"missing", nil, nil},
	}
	for _, tt := range tests {
		f, fok := m.ConstFloats(tt.name)
		if fok != (tt.floats != nil) || !slices.Equal(f, tt.floats) {
			t.Errorf("ConstFloats(%q) = %v, %v; want %v", tt.name, f, fok, tt.floats)
		}
		i, iok := m.ConstInts(tt.name)
		if iok != (tt.ints != nil) || !slices.Equal(i, tt.ints) {
			t.Errorf("ConstInts(%q) = %v, %v; want %v", tt.name, i, iok, tt.ints)
		}
	}
}

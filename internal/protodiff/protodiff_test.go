package protodiff_test

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/qatc/qatc/internal/protodiff"
	"github.com/qatc/qatc/onnx"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

func TestCompare(t *testing.T) {
	graph := func(edit func(*onnx.TensorProto)) *onnx.GraphProto {
		w := &onnx.TensorProto{Name: "w", Dims: []int64{2, 2}, DataType: 3, RawData: []byte{1, 2, 255, 4}}
		b := &onnx.TensorProto{Name: "b", Dims: []int64{3}, FloatData: []float32{1, 100, -0.5}}
		if edit != nil {
			edit(b)
			edit(w)
		}
		return &onnx.GraphProto{Name: "g", Initializer: []*onnx.TensorProto{w, b}}
	}
	mapped := func(v float64) *structpb.Struct {
		s, err := structpb.NewStruct(map[string]any{"clip": v, "name": "x"})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for _, tc := range []struct {
		name       string
		x, y       proto.Message
		bytes, flt int
		maxRel     float64
		diffs      []string // what each difference line names, in order
	}{
		{"equal", graph(nil), graph(nil), 1, 3, 0, nil},
		{"float within tolerance", graph(nil), graph(func(p *onnx.TensorProto) {
			if p.FloatData != nil {
				p.FloatData[1] = 100 * (1 + 5e-7)
			}
		}), 1, 3, 5e-7, nil},
		{"float beyond tolerance, relative to max(1, |y|)", graph(nil), graph(func(p *onnx.TensorProto) {
			if p.FloatData != nil {
				p.FloatData[2] = -0.5 + 2e-6
			}
		}), 1, 3, 2e-6, []string{".initializer[1].float_data[2]: -0.5 and"}},
		{"one int8 differs", graph(nil), graph(func(p *onnx.TensorProto) {
			if p.RawData != nil {
				p.RawData[2] = 254
			}
		}), 1, 3, 0, []string{".initializer[0].raw_data: byte 2 is -1 and -2"}},
		{"lengths differ", graph(nil), graph(func(p *onnx.TensorProto) {
			if p.RawData != nil {
				p.RawData = p.RawData[:3]
				p.Dims = []int64{3}
			}
		}), 1, 3, 0, []string{".initializer[0].dims: 2 and 1 values", ".initializer[0].raw_data: 4 and 3 bytes"}},
		{"set in one only", graph(nil), graph(func(p *onnx.TensorProto) { p.DocString = "d" }), 1, 3, 0,
			[]string{".initializer[0].doc_string: set in one message only", ".initializer[1].doc_string: set in one message only"}},
		{"a string differs", graph(nil), graph(func(p *onnx.TensorProto) { p.Name += "2" }), 1, 3, 0,
			[]string{".initializer[0].name: w and w2", ".initializer[1].name: b and b2"}},
		{"maps", mapped(1), mapped(1.5), 0, 1, 0.5 / 1.5, []string{".fields[clip].number_value: 1 and 1.5"}},
		{"NaN", &onnx.TensorProto{FloatData: []float32{float32(math.NaN())}}, &onnx.TensorProto{FloatData: []float32{float32(math.NaN())}}, 0, 1, math.Inf(1),
			[]string{".float_data[0]: NaN and NaN"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := protodiff.Compare(tc.x, tc.y, 1e-6)
			near := r.MaxRel == tc.maxRel || math.Abs(r.MaxRel-tc.maxRel) <= 1e-7 // float32 rounding of the edits
			if r.Bytes != tc.bytes || r.Floats != tc.flt || !near {
				t.Errorf("compared %d bytes fields and %d floats (max rel %g), want %d, %d (%g)", r.Bytes, r.Floats, r.MaxRel, tc.bytes, tc.flt, tc.maxRel)
			}
			if len(r.Diffs) != len(tc.diffs) || !slices.EqualFunc(r.Diffs, tc.diffs, strings.HasPrefix) {
				t.Errorf("differences %q, want %q", r.Diffs, tc.diffs)
			}
		})
	}
}

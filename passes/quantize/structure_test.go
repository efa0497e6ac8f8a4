package quantize_test

import (
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
)

// TestStructure checks placement rules the reference models do not
// exercise: exact copies, near copies, lookups versus position tables,
// kinds through Dropout/Reshape, and one quantizer for many readers.
func TestStructure(t *testing.T) {
	a := []float32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12} // [4, 3]
	near := append([]float32(nil), a...)
	near[5] = 6.5             // same first and last element, one differs inside
	at := make([]float32, 12) // aᵀ [3, 4]
	for i := 0; i < 4; i++ {
		for j := 0; j < 3; j++ {
			at[j*4+i] = a[i*3+j]
		}
	}
	m := graph.New("s", 17)
	m.AddInput("ids", graph.Int64, []int64{1, 2})
	m.AddInitializer(graph.FloatTensor("emb", []int64{10, 4}, make40()))
	m.AddInitializer(graph.FloatTensor("pos", []int64{10, 4}, make40()))
	m.AddInitializer(graph.FloatTensor("A", []int64{4, 3}, a))
	m.AddInitializer(graph.FloatTensor("B", []int64{4, 3}, a))
	m.AddInitializer(graph.FloatTensor("C", []int64{4, 3}, near))
	m.AddInitializer(graph.FloatTensor("D", []int64{3, 4}, at))
	m.AddInitializer(graph.FloatTensor("bias", []int64{3}, []float32{1, 2, 3}))
	m.AddInitializer(graph.Int64Tensor("shape", []int64{2}, []int64{2, 3}))
	m.Op("Gather", "lookup", []string{"emb", "ids"}, []string{"x0"})                     // embedding lookup
	m.Op("Shape", "", []string{"ids"}, []string{"sh"})                                   // positions from the shape only
	m.Op("Gather", "positions", []string{"pos", "sh"}, []string{"p0"})                   // not a lookup
	m.Op("Add", "addpos", []string{"x0", "p0"}, []string{"x"})                           // [1, 2, 4]
	m.Op("MatMul", "mA", []string{"x", "A"}, []string{"hA"})                             // x read by four MatMuls
	m.Op("MatMul", "mB", []string{"x", "B"}, []string{"hB"})                             // B == A: tied
	m.Op("MatMul", "mC", []string{"x", "C"}, []string{"hC"})                             // C ≈ A: not tied
	m.Op("Transpose", "tD", []string{"D"}, []string{"Dt"}, graph.AttrInts("perm", 1, 0)) // D = Aᵀ: tied, transposed
	m.Op("MatMul", "mD", []string{"x", "Dt"}, []string{"hD"})
	m.Op("Add", "bA", []string{"hA", "bias"}, []string{"hA1"})
	m.Op("Relu", "relu", []string{"hA1"}, []string{"r"})
	m.Op("Dropout", "drop", []string{"r"}, []string{"rd"})
	m.Op("Reshape", "rs", []string{"rd", "shape"}, []string{"rr"})
	m.Op("Transpose", "tr", []string{"rr"}, []string{"rt"}, graph.AttrInts("perm", 1, 0)) // [3, 2]
	m.Op("MatMul", "mR", []string{"rt", "hB"}, []string{"out"})                           // relu kind through Dropout/Reshape/Transpose
	m.AddOutput("out", graph.Float, nil)

	p := quantize.DefaultParams()
	p.PerChannel = true
	plan, err := quantize.Plan(m, p)
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		kind, tied string
		transposed bool
		axis       int
		consumers  int
	}
	wants := map[string]want{
		"emb": {"weight", "", false, 0, 1},
		"x":   {"act", "", false, -1, 4},
		"A":   {"weight", "", false, 1, 1},
		"B":   {"weight", "A", false, 1, 1},
		"C":   {"weight", "", false, 1, 1},
		"D":   {"weight", "A", true, 0, 1},
		"rt":  {"relu", "", false, -1, 1},
		"hB":  {"act", "", false, -1, 1},
	}
	got := map[string]quantize.Quantizer{}
	qs := plan.Quantizers
	for _, q := range qs {
		got[q.Tensor] = q
	}
	for name, w := range wants {
		q, ok := got[name]
		if !ok {
			t.Errorf("%s not planned", name)
			continue
		}
		if q.Kind != w.kind || q.TiedTo != w.tied || q.Transposed != w.transposed || axisOf(&q) != w.axis || len(q.Consumers) != w.consumers {
			t.Errorf("%s: %+v, want %+v", name, q, w)
		}
	}
	if len(qs) != len(wants) {
		t.Errorf("%d planned, want %d (pos and bias untouched)", len(qs), len(wants))
	}
	// Inserting gives A, B and D one clip initializer.
	rec, err := quantize.Insert(m, p)
	if err != nil {
		t.Fatal(err)
	}
	if ca, cb, cd, cc := rec.Lookup("A").Clip, rec.Lookup("B").Clip, rec.Lookup("D").Clip, rec.Lookup("C").Clip; ca != cb || ca != cd || ca == cc {
		t.Errorf("clips A %s, B %s, D %s, C %s: want A, B, D shared and C its own", ca, cb, cd, cc)
	}
	if found, err := quantize.Find(m); err != nil || len(found) != len(wants) {
		t.Errorf("Find: %d quantizers, %v", len(found), err)
	}
	s, err := ort.Open(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Run(map[string]*ort.Tensor{"ids": ort.Int64([]int64{1, 2}, []int64{3, 7})}); err != nil {
		t.Errorf("onnxruntime: %v", err)
	}
}

func make40() []float32 {
	v := make([]float32, 40)
	for i := range v {
		v[i] = float32(i%7) - 3
	}
	return v
}

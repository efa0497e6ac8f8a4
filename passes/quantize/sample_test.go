package quantize_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/qatc/qatc/passes/quantize"
)

// TestSample records a sample in the PyTorch export and reads it back,
// and checks that a damaged or foreign sample is an error naming the
// metadata entry.
func TestSample(t *testing.T) {
	m := loadTorch(t, 17)
	if s, err := quantize.ReadSample(m); s != nil || err != nil {
		t.Fatalf("a fresh export has sample %+v, %v", s, err)
	}
	want := &quantize.Sample{From: "valid.src", Inputs: map[string]quantize.SampleTensor{
		"src_ids": {Shape: []int64{2, 3}, Data: []int64{5, 6, 3, 7, 3, 0}},
		"tgt_ids": {Shape: []int64{2, 2}, Data: []int64{2, 8, 2, 9}},
	}}
	if err := quantize.WriteSample(m, want); err != nil {
		t.Fatal(err)
	}
	got, err := quantize.ReadSample(m)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("read back %+v, %v; want %+v", got, err, want)
	}
	if err := quantize.WriteSample(m, &quantize.Sample{Inputs: map[string]quantize.SampleTensor{"src_ids": {Shape: []int64{2, 2}, Data: []int64{1}}}}); err == nil {
		t.Error("wrote a sample whose shape does not hold its data")
	}
	for _, tc := range []struct{ value, want string }{
		{"{", "qatc.sample"},
		{`{"inputs": {}}`, "no inputs"},
		{`{"inputs": {"src_ids": {"shape": [2, 2], "data": [1, 2, 3]}}}`, "does not hold 3 values"},
		{`{"inputs": {"source": {"shape": [1, 1], "data": [5]}}}`, `no input "source"`},
	} {
		m.SetMetadata(quantize.SampleKey, tc.value)
		if _, err := quantize.ReadSample(m); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), quantize.SampleKey) {
			t.Errorf("%s: got %v, want an error naming %s and %q", tc.value, err, quantize.SampleKey, tc.want)
		}
	}
}

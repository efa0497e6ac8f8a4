package quantize_test

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/passes/quantize"
)

func TestRecordRoundTrip(t *testing.T) {
	m := loadTorch(t, 17)
	p := quantize.DefaultParams()
	p.Exclude = []string{"linear2"}
	rec, err := quantize.Insert(m, p)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "qat.onnx")
	if err := m.Save(path); err != nil {
		t.Fatal(err)
	}
	back, err := graph.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := quantize.ReadRecord(back)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, rec) {
		t.Errorf("record after Save/Load differs:\n got %+v\nwant %+v", got, rec)
	}
	if got.Params.Exclude[0] != "linear2" || got.Params.WeightClipMax != 1 || got.Params.ActClipMax != 16 || got.Params.Strategy != "min/max" {
		t.Errorf("record params %+v", got.Params)
	}
	// 68 minus the four FFN2 weights and their four relu inputs.
	if len(got.Quantizers) != 60 {
		t.Errorf("%d quantizers recorded, want 60", len(got.Quantizers))
	}
	// Find recovers every quantizer from the graph alone, as recorded.
	found, err := quantize.Find(back)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(found, rec.Quantizers) {
		for i := range found {
			if i < len(rec.Quantizers) && !reflect.DeepEqual(found[i], rec.Quantizers[i]) {
				t.Errorf("Find[%d] = %+v\nrecord   %+v", i, found[i], rec.Quantizers[i])
				break
			}
		}
		t.Errorf("Find returned %d quantizers, record %d", len(found), len(rec.Quantizers))
	}
	// Without the record, the structure alone gives the same tensors,
	// kinds, bits and clips.
	back.Proto.MetadataProps = nil
	bare, err := quantize.Find(back)
	if err != nil {
		t.Fatal(err)
	}
	for i, q := range bare {
		r := rec.Quantizers[i]
		if q.Tensor != r.Tensor || q.Kind != r.Kind || q.Bits != r.Bits || q.Clip != r.Clip {
			t.Errorf("structural Find[%d] = %s %s/%d %s, record %s %s/%d %s", i, q.Tensor, q.Kind, q.Bits, q.Clip, r.Tensor, r.Kind, r.Bits, r.Clip)
		}
	}
	if _, err := quantize.ReadRecord(back); err == nil || !strings.Contains(err.Error(), "no qatc.quantization record") {
		t.Errorf("ReadRecord without metadata: %v", err)
	}
}

func TestFindErrors(t *testing.T) {
	tests := []struct {
		name string
		edit func(m *graph.Model, rec *quantize.Record)
		want string
	}{
		{"missing clip", func(m *graph.Model, rec *quantize.Record) {
			m.RemoveInitializer("onnx::MatMul_1051_clip_max")
		}, "clip tensor onnx::MatMul_1051_clip_max is missing"},
		{"record disagrees", func(m *graph.Model, rec *quantize.Record) {
			rec.Lookup("onnx::MatMul_1044").Kind = "relu"
			quantize.WriteRecord(m, rec)
		}, `quantizer on onnx::MatMul_1044: the graph has kind weight, 8 bits, clip "onnx::MatMul_1044_clip_max" but the qatc.quantization record says kind relu`},
		{"record lists more", func(m *graph.Model, rec *quantize.Record) {
			rec.Quantizers = append(rec.Quantizers, quantize.Quantizer{Tensor: "ghost", Kind: "act", Bits: 8})
			quantize.WriteRecord(m, rec)
		}, "record lists 1 quantizers the graph does not have (ghost)"},
	}
	for _, tt := range tests {
		m := loadTorch(t, 17)
		rec, err := quantize.Insert(m, quantize.DefaultParams())
		if err != nil {
			t.Fatal(err)
		}
		tt.edit(m, rec)
		_, err = quantize.Find(m)
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: Find error %v, want one line containing %q", tt.name, err, tt.want)
		}
	}
}

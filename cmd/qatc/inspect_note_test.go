package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/passes/quantize"
)

// TestInspectUnfoldable: a QAT graph that cannot be folded (a weight clip
// made a graph input, as in a training graph) lists its quantizers and
// says why the weights' clipped share and SQNR are missing; a foldable one
// has them and no note.
func TestInspectUnfoldable(t *testing.T) {
	dir := t.TempDir()
	model, _, _ := tinySetup(t, dir)
	qat := filepath.Join(dir, "qat.onnx")
	m, rec := insertRecord(t, model, qat)
	clip := ""
	for _, q := range rec.Quantizers {
		if q.Kind == quantize.KindWeight {
			clip = q.Clip
			break
		}
	}
	m.RemoveInitializer(clip)
	m.AddInput(clip, graph.Float, []int64{})
	unfoldable := filepath.Join(dir, "unfoldable.onnx")
	if err := m.Save(unfoldable); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		model string
		note  string // "" for none
	}{
		{qat, ""},
		{unfoldable, "the model does not fold as an export would"},
	} {
		code, out, errOut := qatc(t, "inspect", tc.model, "--json")
		if code != 0 {
			t.Fatalf("%s: %s", tc.model, errOut)
		}
		var s struct {
			Quantizers []struct {
				Kind string
				SQNR *float64 `json:"sqnr_db"`
			}
			Note string `json:"quantizers_note"`
		}
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			t.Fatal(err)
		}
		withSQNR := 0
		for _, q := range s.Quantizers {
			if q.SQNR != nil {
				withSQNR++
			}
		}
		if tc.note == "" && (s.Note != "" || withSQNR == 0) || tc.note != "" && (!strings.Contains(s.Note, tc.note) || withSQNR != 0) || len(s.Quantizers) != len(rec.Quantizers) {
			t.Errorf("%s: %d quantizers, %d with SQNR, note %q; want %d, note %q", tc.model, len(s.Quantizers), withSQNR, s.Note, len(rec.Quantizers), tc.note)
		}
		_, text, _ := qatc(t, "inspect", tc.model)
		if strings.Contains(text, "note: ") != (tc.note != "") {
			t.Errorf("%s: text output %q", tc.model, text)
		}
	}
}

package quantize

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/qatc/qatc/graph"
)

// SampleKey is the metadata key of a QAT model's sample: a few sentences
// of the data it was calibrated or fine-tuned on, as the int64 token-id
// tensors its inputs take. Export checks itself on them when no check
// data is given: random token ids give near-flat logits, whose argmax
// ties say nothing about an export.
const SampleKey = "qatc.sample"

// A Sample is a batch of real inputs recorded in a model.
type Sample struct {
	// From says where the sentences came from (a file name).
	From string `json:"from"`
	// Inputs are the batch's tensors by graph input name.
	Inputs map[string]SampleTensor `json:"inputs"`
}

// A SampleTensor is one int64 input tensor of a Sample.
type SampleTensor struct {
	Shape []int64 `json:"shape"`
	Data  []int64 `json:"data"`
}

// WriteSample records s in m's metadata.
func WriteSample(m *graph.Model, s *Sample) error {
	if err := s.check(); err != nil {
		return err
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	m.SetMetadata(SampleKey, string(b))
	return nil
}

// ReadSample returns m's recorded sample, or nil when it has none. A
// sample that does not parse, or does not fit m's inputs, is an error.
func ReadSample(m *graph.Model) (*Sample, error) {
	v, ok := m.Metadata(SampleKey)
	if !ok {
		return nil, nil
	}
	s := &Sample{}
	if err := json.Unmarshal([]byte(v), s); err != nil {
		return nil, fmt.Errorf("metadata %s: %v; delete the entry or re-run insert", SampleKey, err)
	}
	if err := s.check(); err != nil {
		return nil, fmt.Errorf("metadata %s: %v; delete the entry or re-run insert", SampleKey, err)
	}
	for name := range s.Inputs {
		if in := m.Input(name); in == nil || m.Initializer(name) != nil {
			return nil, fmt.Errorf("metadata %s: the model has no input %q; delete the entry or re-run insert", SampleKey, name)
		}
	}
	return s, nil
}

func (s *Sample) check() error {
	if len(s.Inputs) == 0 {
		return fmt.Errorf("sample has no inputs")
	}
	for name, t := range s.Inputs {
		n := int64(1)
		for _, d := range t.Shape {
			n *= d
		}
		if len(t.Shape) == 0 || slices.ContainsFunc(t.Shape, func(d int64) bool { return d <= 0 }) || n != int64(len(t.Data)) {
			return fmt.Errorf("sample input %q: shape %v does not hold %d values", name, t.Shape, len(t.Data))
		}
	}
	return nil
}

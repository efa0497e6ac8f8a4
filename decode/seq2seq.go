package decode

import (
	"fmt"
	"github.com/qatc/qatc/seq2seq"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
)

// Seq2Seq is a seq2seq model in an onnxruntime session, as decoding uses
// it: a forward pass over a batch of sources and target prefixes whose
// logits at the last target position score the next token.
type Seq2Seq struct {
	Name    string // the model in errors (its file)
	Session *ort.Session
	Roles   seq2seq.Roles
	// Special are the ids Start pads sources with (zero value:
	// DefaultSpecial).
	Special seq2seq.Special
	vocab   int
}

// Start begins decoding srcs by re-running the whole model at every step
// (see Rerun): Seq2Seq is a Model without a cache.
func (m *Seq2Seq) Start(srcs [][]int64) (State, error) {
	sp := m.Special
	if sp == (seq2seq.Special{}) {
		sp = seq2seq.DefaultSpecial()
	}
	return Rerun(m, sp).Start(srcs)
}

// NewSeq2Seq finds the roles of s's inputs and outputs (see FindRoles;
// given may name some or all) and wraps it.
func NewSeq2Seq(name string, s *ort.Session, given seq2seq.Roles) (*Seq2Seq, error) {
	r, err := seq2seq.FindRoles(name, s.Inputs(), s.Outputs(), given)
	if err != nil {
		return nil, err
	}
	m := &Seq2Seq{Name: name, Session: s, Roles: r, vocab: -1}
	for _, io := range s.Outputs() {
		if io.Name == r.Logits && len(io.Dims) == 3 && io.Dims[2] > 0 {
			m.vocab = int(io.Dims[2])
		}
	}
	for _, io := range s.Inputs() {
		if io.Name != r.Src && io.Name != r.Tgt {
			return nil, fmt.Errorf("%s has an input %s besides the source and target ids; decoding cannot feed it", name, io)
		}
	}
	return m, nil
}

// Vocab returns the size of the target vocabulary: the logits' last dim,
// from the model's declaration or, when that is symbolic, from one forward
// pass over a one-token source and the BOS-only prefix.
func (m *Seq2Seq) Vocab(sp seq2seq.Special) (int, error) {
	if m.vocab > 0 {
		return m.vocab, nil
	}
	src := ort.Int64([]int64{1, 1}, []int64{sp.EOS})
	tgt := ort.Int64([]int64{1, 1}, []int64{sp.BOS})
	_, v, err := m.NextLogits(src, tgt)
	if err != nil {
		return 0, err
	}
	m.vocab = v
	return v, nil
}

// NextLogits runs the model on src [rows, S] and tgt [rows, T] and returns
// the logits at the last target position, [rows × vocab] row-major, and
// the vocabulary size.
func (m *Seq2Seq) NextLogits(src, tgt *ort.Tensor) ([]float32, int, error) {
	out, err := m.Session.Run(map[string]*ort.Tensor{m.Roles.Src: src, m.Roles.Tgt: tgt}, m.Roles.Logits)
	if err != nil {
		return nil, 0, err
	}
	l := out[m.Roles.Logits]
	rows, steps := tgt.Shape[0], tgt.Shape[1]
	if len(l.Shape) != 3 || l.Shape[0] != rows || l.Shape[1] != steps {
		return nil, 0, fmt.Errorf("%s: logits %q have shape %v for a target of shape %v; want [%d, %d, vocab]", m.Name, m.Roles.Logits, l.Shape, tgt.Shape, rows, steps)
	}
	if l.DType() != graph.Float {
		return nil, 0, fmt.Errorf("%s: logits %q are %s; decoding reads float32 logits", m.Name, m.Roles.Logits, l.DType())
	}
	v := int(l.Shape[2])
	all := l.Float32s()
	last := make([]float32, int(rows)*v)
	for r := 0; r < int(rows); r++ {
		off := (r*int(steps) + int(steps) - 1) * v
		copy(last[r*v:(r+1)*v], all[off:off+v])
	}
	return last, v, nil
}

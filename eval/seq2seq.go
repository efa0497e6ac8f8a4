package eval

import (
	"fmt"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
)

// Roles names a seq2seq model's source-ids input, decoder-input-ids input
// and logits output. An empty field is found by FindRoles.
type Roles struct {
	Src    string `json:"src"`
	Tgt    string `json:"tgt"`
	Logits string `json:"logits"`
}

// FindRoles fills the empty fields of given from the model's inputs and
// outputs: the two int64 inputs of rank 2 ([batch, len]) and the float
// output of rank 3 ([batch, tgt_len, vocab]). Which int64 input is the
// target is decided by, in turn: the one whose second dim has the same
// symbolic name as the logits' second dim; a name that says so (tgt, trg,
// target, dec; src, source, enc); the order of the inputs (source first).
// model names the model in errors.
func FindRoles(model string, inputs, outputs []graph.IOInfo, given Roles) (Roles, error) {
	r := given
	find := func(list []graph.IOInfo, name, role, flag string) (graph.IOInfo, error) {
		for _, io := range list {
			if io.Name == name {
				return io, nil
			}
		}
		return graph.IOInfo{}, fmt.Errorf("%s has no %s %q for the %s role (it has: %s); fix %s", model, strings.TrimSuffix(role, "s"), name, strings.TrimPrefix(flag, "--"), ioList(list), flag)
	}

	// The logits.
	var logits graph.IOInfo
	if r.Logits != "" {
		io, err := find(outputs, r.Logits, "outputs", "--logits-output")
		if err != nil {
			return r, err
		}
		logits = io
	} else {
		var cands []graph.IOInfo
		for _, io := range outputs {
			if isFloat(io.Elem) && (io.Dims == nil || len(io.Dims) == 3) {
				cands = append(cands, io)
			}
		}
		switch {
		case len(cands) == 1:
			logits = cands[0]
		case len(cands) > 1:
			for _, c := range cands {
				if strings.Contains(strings.ToLower(c.Name), "logit") {
					logits = c
				}
			}
			if logits.Name == "" {
				return r, fmt.Errorf("%s has %d float outputs of rank 3 (%s): name the logits with --logits-output", model, len(cands), ioList(cands))
			}
		default:
			return r, notSeq2Seq(model, inputs, outputs)
		}
		r.Logits = logits.Name
	}
	if !isFloat(logits.Elem) || (logits.Dims != nil && len(logits.Dims) != 3) {
		return r, fmt.Errorf("%s: logits output %s is not a float [batch, tgt_len, vocab] tensor", model, logits)
	}

	// The two id inputs.
	if r.Src != "" || r.Tgt != "" {
		for _, p := range []struct {
			name *string
			flag string
		}{{&r.Src, "--src-input"}, {&r.Tgt, "--tgt-input"}} {
			if *p.name == "" {
				continue
			}
			io, err := find(inputs, *p.name, "inputs", p.flag)
			if err != nil {
				return r, err
			}
			if !isIDs(io) {
				return r, fmt.Errorf("%s: input %s is not an int64 [batch, len] tensor of token ids; fix %s", model, io, p.flag)
			}
		}
	}
	var ids []graph.IOInfo
	for _, io := range inputs {
		if isIDs(io) && io.Name != r.Src && io.Name != r.Tgt {
			ids = append(ids, io)
		}
	}
	switch {
	case r.Src != "" && r.Tgt != "":
	case r.Src != "" || r.Tgt != "":
		if len(ids) != 1 {
			return r, fmt.Errorf("%s: found %d other int64 [batch, len] inputs (%s) for the remaining role: name both --src-input and --tgt-input", model, len(ids), ioList(ids))
		}
		if r.Src == "" {
			r.Src = ids[0].Name
		} else {
			r.Tgt = ids[0].Name
		}
	case len(ids) == 2:
		src, tgt := ids[0], ids[1]
		if tgtFirst(src, tgt, logits) {
			src, tgt = tgt, src
		}
		r.Src, r.Tgt = src.Name, tgt.Name
	case len(ids) > 2:
		return r, fmt.Errorf("%s has %d int64 [batch, len] inputs (%s): name them with --src-input and --tgt-input", model, len(ids), ioList(ids))
	default:
		return r, notSeq2Seq(model, inputs, outputs)
	}
	if r.Src == r.Tgt {
		return r, fmt.Errorf("%s: input %q cannot be both the source and the target ids", model, r.Src)
	}
	return r, nil
}

// tgtFirst reports whether a (listed first) is the decoder input rather
// than b.
func tgtFirst(a, b, logits graph.IOInfo) bool {
	dim1 := func(io graph.IOInfo) string {
		if len(io.DimParams) > 1 {
			return io.DimParams[1]
		}
		return ""
	}
	if l := dim1(logits); l != "" {
		if dim1(a) == l && dim1(b) != l {
			return true
		}
		if dim1(b) == l && dim1(a) != l {
			return false
		}
	}
	at, as := nameSays(a.Name)
	bt, bs := nameSays(b.Name)
	switch {
	case at && !bt, bs && !as:
		return true
	}
	return false
}

// nameSays reports whether an input's name marks it as the target or the
// source ids.
func nameSays(name string) (tgt, src bool) {
	n := strings.ToLower(name)
	for _, w := range []string{"tgt", "trg", "target", "dec"} {
		tgt = tgt || strings.Contains(n, w)
	}
	for _, w := range []string{"src", "source", "enc"} {
		src = src || strings.Contains(n, w)
	}
	return tgt, src
}

func isFloat(t graph.DataType) bool {
	return t == graph.Float || t == graph.Float16 || t == graph.Double || t == graph.BFloat16
}

func isIDs(io graph.IOInfo) bool {
	return io.Elem == graph.Int64 && (io.Dims == nil || len(io.Dims) == 2)
}

func notSeq2Seq(model string, inputs, outputs []graph.IOInfo) error {
	return fmt.Errorf("%s is not a seq2seq model: it needs two int64 [batch, len] inputs and a float [batch, tgt_len, vocab] output, and has inputs %s and outputs %s; name the roles with --src-input, --tgt-input and --logits-output if they are there", model, ioList(inputs), ioList(outputs))
}

func ioList(list []graph.IOInfo) string {
	if len(list) == 0 {
		return "(none)"
	}
	s := make([]string, len(list))
	for i, io := range list {
		s[i] = io.String()
	}
	return strings.Join(s, ", ")
}

// Seq2Seq is a seq2seq model in an onnxruntime session, as decoding uses
// it: a forward pass over a batch of sources and target prefixes whose
// logits at the last target position score the next token.
type Seq2Seq struct {
	Name    string // the model in errors (its file)
	Session *ort.Session
	Roles   Roles
	// Special are the ids Start pads sources with (zero value:
	// DefaultSpecial).
	Special Special
	vocab   int
}

// Start begins decoding srcs by re-running the whole model at every step
// (see Rerun): Seq2Seq is a Model without a cache.
func (m *Seq2Seq) Start(srcs [][]int64) (State, error) {
	sp := m.Special
	if sp == (Special{}) {
		sp = DefaultSpecial()
	}
	return Rerun(m, sp).Start(srcs)
}

// NewSeq2Seq finds the roles of s's inputs and outputs (see FindRoles;
// given may name some or all) and wraps it.
func NewSeq2Seq(name string, s *ort.Session, given Roles) (*Seq2Seq, error) {
	r, err := FindRoles(name, s.Inputs(), s.Outputs(), given)
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
func (m *Seq2Seq) Vocab(sp Special) (int, error) {
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

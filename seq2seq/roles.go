package seq2seq

import (
	"fmt"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/passes/transformer"
)

// Roles names a seq2seq model's source-ids input, target-ids (decoder
// input) input and logits output. An empty field is found by FindRoles.
type Roles struct {
	Src    string `json:"src"`
	Tgt    string `json:"tgt"`
	Logits string `json:"logits"`
}

// Model describes a seq2seq model as data readers and decoders need it.
type Model struct {
	Roles
	// Vocab is the logits' last dimension (0 when not static).
	Vocab int
	// SrcPositions and TgtPositions are the longest source and target
	// the model reads (transformer.Positions; 0 when not known).
	SrcPositions, TgtPositions int
}

// Describe finds the roles of m (FindRoles; given may name some or all),
// its vocabulary and its positions. Errors call the model "model"; the
// caller adds the file.
func Describe(m *graph.Model, given Roles) (Model, error) {
	r, err := FindRoles("model", m.Inputs(), m.Outputs(), given)
	if err != nil {
		return Model{}, err
	}
	d := Model{Roles: r}
	for _, o := range m.Outputs() {
		if o.Name == r.Logits && len(o.Dims) == 3 && o.Dims[2] > 0 {
			d.Vocab = int(o.Dims[2])
		}
	}
	d.SrcPositions, d.TgtPositions = transformer.Positions(m, r.Src), transformer.Positions(m, r.Tgt)
	return d, nil
}

// FindRoles fills the empty fields of given from a model's inputs and
// outputs: the two int64 inputs of rank 2 ([batch, len]) and the float
// output of rank 3 ([batch, tgt_len, vocab]; among several, the one whose
// name says logits). Which int64 input is the target is decided by, in
// turn: the one whose second dim has the same symbolic name as the
// logits' second dim; a name that says so (NameSays); the order of the
// inputs (source first). model names the model in errors, which name the
// flag that fixes them.
func FindRoles(model string, inputs, outputs []graph.IOInfo, given Roles) (Roles, error) {
	r := given
	find := func(list []graph.IOInfo, name, what, flag string) (graph.IOInfo, error) {
		for _, io := range list {
			if io.Name == name {
				return io, nil
			}
		}
		return graph.IOInfo{}, fmt.Errorf("%s has no %s %q; its %ss are %s (%s); fix %s", model, what, name, what, nameList(list), ioList(list), flag)
	}
	var ids []graph.IOInfo
	for _, io := range inputs {
		if isIDs(io) && io.Name != r.Src && io.Name != r.Tgt {
			ids = append(ids, io)
		}
	}

	// The named id inputs.
	for _, p := range []struct {
		name *string
		flag string
	}{{&r.Src, "--src-input"}, {&r.Tgt, "--tgt-input"}} {
		if *p.name == "" {
			continue
		}
		io, err := find(inputs, *p.name, "input", p.flag)
		if err != nil {
			return r, err
		}
		if !isIDs(io) {
			return r, fmt.Errorf("%s: input %s is not an int64 [batch, len] tensor of token ids; fix %s", model, io, p.flag)
		}
	}

	// The logits.
	var logits graph.IOInfo
	if r.Logits != "" {
		io, err := find(outputs, r.Logits, "output", "--logits-output")
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
		case len(ids) == 2:
			return r, fmt.Errorf("%s: the model has no logits output (a float [batch, tgt_len, vocab] tensor) among %s; name it with --logits-output", model, ioList(outputs))
		default:
			return r, notSeq2Seq(model, inputs, outputs)
		}
		r.Logits = logits.Name
	}
	if !isFloat(logits.Elem) || (logits.Dims != nil && len(logits.Dims) != 3) {
		return r, fmt.Errorf("%s: logits output %s is not a float [batch, tgt_len, vocab] tensor", model, logits)
	}

	// The remaining id inputs.

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
	at, as := NameSays(a.Name)
	bt, bs := NameSays(b.Name)
	switch {
	case at && !bt, bs && !as:
		return true
	}
	return false
}

// NameSays reports whether an input's name marks it as the target (tgt,
// trg, target, dec) or the source (src, source, enc) ids.
func NameSays(name string) (tgt, src bool) {
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
	return fmt.Errorf("%s is not a seq2seq model: it needs two int64 [batch, len] inputs and a float [batch, tgt_len, vocab] output, and has inputs %s and outputs %s; name the roles with --src-input and --tgt-input (and --logits-output) if they are there", model, ioList(inputs), ioList(outputs))
}

// ioList lists values with their types.
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

// nameList lists values by name.
func nameList(list []graph.IOInfo) string {
	if len(list) == 0 {
		return "(none)"
	}
	s := make([]string, len(list))
	for i, io := range list {
		s[i] = io.Name
	}
	return strings.Join(s, ", ")
}

package train

import (
	"fmt"
	"strings"

	"github.com/qatc/qatc/onnx"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/passes/transformer"
)

// Roles names a seq2seq model's batch inputs and logits output.
type Roles struct {
	Src, Tgt, Logits string
	// Vocab is the logits' last dimension (0 when not static).
	Vocab int
	// SrcPositions and TgtPositions are the longest source and target
	// the model reads (transformer.Positions; 0 when not known).
	SrcPositions, TgtPositions int
}

// FindRoles finds a seq2seq model's source and target inputs (two int64
// inputs of rank 2 that are not initializers) and its logits output (a
// float output of rank 3). Names given in want are checked and used; the
// others are found by shape, the source being the input whose name says
// src or source, else the first.
func FindRoles(m *graph.Model, want Roles) (Roles, error) {
	r := want
	var ids []string
	for _, in := range m.Graph().Input {
		if m.Initializer(in.Name) != nil {
			continue
		}
		if dt, rank := valueType(in); dt == graph.Int64 && rank == 2 {
			ids = append(ids, in.Name)
		}
	}
	for _, name := range []string{want.Src, want.Tgt} {
		if name == "" {
			continue
		}
		in := m.Input(name)
		if in == nil {
			return r, fmt.Errorf("model has no input %q; its inputs are %s", name, inputNames(m))
		}
		if dt, rank := valueType(in); dt != graph.Int64 || rank != 2 {
			return r, fmt.Errorf("model input %q is not an int64 [batch, length] tensor of token ids", name)
		}
	}
	if r.Src == "" || r.Tgt == "" {
		var rest []string
		for _, n := range ids {
			if n != r.Src && n != r.Tgt {
				rest = append(rest, n)
			}
		}
		if r.Src == "" && r.Tgt == "" && len(rest) == 2 {
			a, b := rest[0], rest[1]
			if isTargetName(a) && !isTargetName(b) || isSourceName(b) && !isSourceName(a) {
				a, b = b, a
			}
			r.Src, r.Tgt = a, b
		} else if len(rest) == 1 {
			if r.Src == "" {
				r.Src = rest[0]
			} else {
				r.Tgt = rest[0]
			}
		}
		if r.Src == "" || r.Tgt == "" {
			return r, fmt.Errorf("cannot tell the model's source and target inputs among %s (a seq2seq model has two int64 [batch, length] inputs); name them with --src-input and --tgt-input", inputNames(m))
		}
	}
	var logits *onnx.ValueInfoProto
	if want.Logits != "" {
		if logits = m.Output(want.Logits); logits == nil {
			return r, fmt.Errorf("model has no output %q; its outputs are %s", want.Logits, outputNames(m))
		}
	} else {
		for _, out := range m.Graph().Output {
			if dt, rank := valueType(out); dt == graph.Float && rank == 3 {
				if logits != nil {
					return r, fmt.Errorf("the model has several float [batch, length, vocab] outputs (%s, %s); name the logits with --logits-output", logits.Name, out.Name)
				}
				logits = out
			}
		}
		if logits == nil {
			return r, fmt.Errorf("the model has no logits output (a float [batch, tgt_len, vocab] tensor) among %s; name it with --logits-output", outputNames(m))
		}
	}
	r.Logits = logits.Name
	r.SrcPositions, r.TgtPositions = transformer.Positions(m, r.Src), transformer.Positions(m, r.Tgt)
	if tt := logits.GetType().GetTensorType(); tt != nil && tt.Shape != nil && len(tt.Shape.Dim) == 3 {
		if v := tt.Shape.Dim[2].GetDimValue(); v > 0 {
			r.Vocab = int(v)
		}
	}
	return r, nil
}

func isSourceName(s string) bool {
	s = strings.ToLower(s)
	return strings.Contains(s, "src") || strings.Contains(s, "source") || strings.Contains(s, "enc")
}

func isTargetName(s string) bool {
	s = strings.ToLower(s)
	return strings.Contains(s, "tgt") || strings.Contains(s, "target") || strings.Contains(s, "dec")
}

// valueType returns v's element type and rank (-1 when unknown).
func valueType(v *onnx.ValueInfoProto) (graph.DataType, int) {
	tt := v.GetType().GetTensorType()
	if tt == nil {
		return graph.Undefined, -1
	}
	if tt.Shape == nil {
		return graph.DataType(tt.ElemType), -1
	}
	return graph.DataType(tt.ElemType), len(tt.Shape.Dim)
}

func inputNames(m *graph.Model) string {
	var s []string
	for _, in := range m.Graph().Input {
		if m.Initializer(in.Name) == nil {
			s = append(s, in.Name)
		}
	}
	return strings.Join(s, ", ")
}

func outputNames(m *graph.Model) string {
	var s []string
	for _, out := range m.Graph().Output {
		s = append(s, out.Name)
	}
	return strings.Join(s, ", ")
}

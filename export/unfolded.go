package export

import (
	"fmt"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/passes/fold"
	"github.com/qatc/qatc/passes/incremental"
	"github.com/qatc/qatc/seq2seq"
)

// Unfolded builds the incremental graphs of a full-sequence model that
// Export wrote, in its format: fold.Unfold reads it back into the QAT
// form, which Export must fold into the file's very integers, scales and
// kernels again (Refolds), and the graphs incremental.Build makes from
// it are converted as Incremental converts them (the key/value cache in
// integers where the format allows). export imports decode (its checks
// decode), so decode cannot call this itself: a program hands it to
// decode.RegisterExported (cmd/qatc does, in main.go).
func Unfolded(m *graph.Model, opts incremental.Options) (*seq2seq.Dir, error) {
	qat, format, err := fold.Unfold(m)
	if err != nil {
		return nil, err
	}
	if err := Refolds(m, qat, format); err != nil {
		return nil, err
	}
	set, err := incremental.Build(qat, opts)
	if err != nil {
		return nil, err
	}
	src, _ := m.Metadata(SourceKey)
	if _, err := convertDir(&set.Dir, format, src, false, intCacheFormats[format]); err != nil {
		return nil, err
	}
	return &set.Dir, nil
}

// Refolds exports qat (read back from the exported model m by
// fold.Unfold) to format and checks that the result computes what m
// computes: the same integer weights with the same scales (fold.Stored),
// the same activation scales, and the same operators.
func Refolds(m, qat *graph.Model, format string) error {
	re, _, err := Export(qat, format, nil)
	if err != nil {
		return fmt.Errorf("%w: folding it again: %v", fold.ErrUnfold, err)
	}
	if err := fold.SameArithmetic(m, re); err != nil {
		return fmt.Errorf("%w: folded again, %v", fold.ErrUnfold, err)
	}
	return nil
}

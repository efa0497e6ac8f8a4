package decode

import (
	"github.com/qatc/qatc/seq2seq"
	"path/filepath"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/passes/transformer"
)

// Positions returns the longest source and target a model reads
// (transformer.Positions of its ids inputs; 0 where not known): of a
// full-sequence file, with the roles given or found by name, or of a
// directory written by export --incremental, from its encoder and
// decoder files. Only the models' structure is read.
func Positions(path string, given seq2seq.Roles) (src, tgt int) {
	if IsIncrementalDir(path) {
		src, _ = filePositions(filepath.Join(path, seq2seq.EncoderFile), seq2seq.Roles{})
		_, tgt = filePositions(filepath.Join(path, seq2seq.DecoderFile), seq2seq.Roles{})
		return src, tgt
	}
	return filePositions(path, given)
}

// filePositions reads one file's positions. With no roles given, an ids
// input is the target when its name says so (nameSays), else the source;
// an input whose positions are found for neither role counts for both.
func filePositions(path string, given seq2seq.Roles) (src, tgt int) {
	m, err := graph.LoadStructure(path)
	if err != nil {
		return 0, 0
	}
	if given.Src != "" || given.Tgt != "" {
		return transformer.Positions(m, given.Src), transformer.Positions(m, given.Tgt)
	}
	for _, in := range m.Graph().Input {
		if m.Initializer(in.Name) != nil {
			continue
		}
		p := transformer.Positions(m, in.Name)
		if p == 0 {
			continue
		}
		isTgt, isSrc := seq2seq.NameSays(in.Name)
		switch {
		case isTgt && !isSrc:
			tgt = p
		case isSrc && !isTgt:
			src = p
		default:
			if src == 0 {
				src = p
			}
			if tgt == 0 {
				tgt = p
			}
		}
	}
	return src, tgt
}

package inspect

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/safeio"
	"github.com/qatc/qatc/seq2seq"
)

// A DirSummary describes a model directory (seq2seq's Optimum layout):
// each file, and the quantizers, each listed once with the files that
// apply it.
type DirSummary struct {
	Directory  string        `json:"directory"`
	ModelType  string        `json:"model_type"`
	Files      []FileSummary `json:"files"`
	Quantizers []Row         `json:"quantizers,omitempty"`
	QuantNote  string        `json:"quantizers_note,omitempty"`
}

// A FileSummary is one file of a directory.
type FileSummary struct {
	File string `json:"file"`
	Summary
}

// Directory reads the model directory at path and describes it: each
// file's summary (Summarize), and its quantizers merged across the files
// by their QuantizeLinear node, which qatc names alike in every file that
// applies one quantizer (a merged decoder's two branches count as two
// files).
func Directory(path string, top int) (*DirSummary, error) {
	d, err := seq2seq.ReadDir(path)
	if err != nil {
		return nil, err
	}
	s := &DirSummary{Directory: path, ModelType: d.Config.ModelType}
	for _, f := range d.Files() {
		m, err := graph.Load(d.Path(f))
		if err != nil {
			return nil, err
		}
		sum := Summarize(m, top)
		sum.Metadata = nil
		s.Files = append(s.Files, FileSummary{File: f, Summary: *sum})
	}
	at := map[string]int{}
	for _, g := range d.Parts() {
		rows, note, err := Quantizers(g.Graph)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d.Path(g.File), err)
		}
		if note != "" {
			s.QuantNote = note
		}
		for _, r := range rows {
			i, ok := at[r.key]
			if !ok {
				r.Files = []string{g.File}
				at[r.key] = len(s.Quantizers)
				s.Quantizers = append(s.Quantizers, r)
				continue
			}
			q := &s.Quantizers[i]
			q.Files = append(q.Files, g.File)
			if r.Tensor != q.Tensor {
				if q.Tensors == nil {
					q.Tensors = map[string]string{}
				}
				q.Tensors[g.File] = r.Tensor
			}
		}
	}
	return s, nil
}

// Write prints the directory's files and its quantizer table.
func (s *DirSummary) Write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "directory\t%s (model_type %s)\n", s.Directory, s.ModelType)
	for _, f := range s.Files {
		fmt.Fprintf(tw, "  %s\t%d nodes\t%d parameters (%s)\t%d inputs\t%d outputs\n",
			f.File, f.Nodes, f.Parameters, safeio.FormatSize(f.ParamBytes, 1), len(f.Inputs), len(f.Outputs))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(s.Quantizers) > 0 {
		return writeRows(w, s.Quantizers, s.QuantNote)
	}
	return nil
}

package seq2seq

import (
	"fmt"
	"os"

	"github.com/qatc/qatc/graph"
)

// Stored is what a command's MODEL argument names: one full-sequence ONNX
// file, or a directory in Optimum's seq2seq layout. Commands work on
// Graph either way; for a directory it is the composition of the encoder
// and the first-step decoder (Dir.Compose), and Save writes what the
// command did to it back into every file of the layout.
type Stored struct {
	Path  string
	Graph *graph.Model
	// Dir is the directory, nil for a file.
	Dir *Dir
}

// Load reads path: a directory (ReadDir, then Compose with pad as the
// source's padding id) or an ONNX file, whose structure is checked (nodes
// merely out of order are put in order).
func Load(path string, pad int64) (*Stored, error) {
	if IsDir(path) {
		d, err := ReadDir(path)
		if err != nil {
			return nil, err
		}
		f, err := d.Compose(pad)
		if err != nil {
			return nil, err
		}
		return &Stored{Path: path, Graph: f, Dir: d}, nil
	}
	m, err := graph.LoadValid(path)
	if err != nil {
		return nil, err
	}
	return &Stored{Path: path, Graph: m}, nil
}

// IsDir reports whether path names a directory.
func IsDir(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.IsDir()
}

// Save writes the model to out: a file's graph as one file; a directory's
// composition projected back into its files (Dir.Project) and written as a
// directory of the same layout (Dir.Write).
func (m *Stored) Save(out string) error {
	if m.Dir == nil {
		return m.Graph.Save(out)
	}
	if err := m.Dir.Project(m.Graph); err != nil {
		return err
	}
	if err := m.Dir.Write(out); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return nil
}

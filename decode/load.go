package decode

import (
	"errors"
	"fmt"
	"github.com/qatc/qatc/seq2seq"
	"os"
	"path/filepath"
	"runtime"
	"slices"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/incremental"
	"google.golang.org/protobuf/proto"
)

// ModelSpec names a model to decode.
type ModelSpec struct {
	// Name labels the model's row; empty means the file's base name.
	Name string
	// Path is an ONNX file (a full-sequence seq2seq model) or a directory
	// written by qatc export --incremental.
	Path string
	// Roles names a full-sequence model's inputs and output; empty fields
	// are found by shape (FindRoles).
	Roles seq2seq.Roles
	// Model, when set, decodes instead of onnxruntime sessions over Path (a
	// model in another format, such as a LightSeq file run by its
	// reference decoder); Vocab is then its vocabulary size.
	Model Model
	Vocab int
	// Rerun decodes a full-sequence file the way it runs: the whole model
	// at every step, without building its incremental graphs.
	Rerun bool
	// Map names tensors by role for the recogniser (transformer.Options).
	Map map[string]string
}

// Loaded is a model ready to decode.
type Loaded struct {
	Model Model
	Vocab int
	// Roles are a full-sequence model's roles when it decodes by re-running.
	Roles seq2seq.Roles
	// SizeBytes is what the model takes on disk.
	SizeBytes int64
	// Cached reports decoding with a key/value cache; Note says why a
	// full-sequence file decodes without one.
	Cached bool
	Note   string
	// Incremental is the cached model, when it is one.
	Incremental *Incremental
	closers     []func() error
}

// Close releases the model's sessions.
func (l *Loaded) Close() error {
	var errs []error
	for _, c := range l.closers {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}

// Threads returns the decoding workers for a thread count: n, or the
// number of CPUs for n ≤ 0. Decoding steps are small, so threads pay as
// independent batches (each session run on one thread) rather than as
// onnxruntime's intra-op threads, which spend more time handing work out
// than a step's operators take.
func Threads(n int) int {
	if n > 0 {
		return n
	}
	return runtime.NumCPU()
}

// Load opens spec for decoding with sessions of the given intra-op thread
// count (0: onnxruntime's default): a directory with its cache, a
// full-sequence fp32 or QAT file with the incremental graphs built from it
// in memory (a file qatc exported too, see RegisterExported), and any other seq2seq file, or one with spec.Rerun, by
// re-running it at every step (Note says why).
func Load(spec ModelSpec, sp seq2seq.Special, threads int) (*Loaded, error) {
	if sp == (seq2seq.Special{}) {
		sp = seq2seq.DefaultSpecial()
	}
	opts := &ort.Options{Threads: threads}
	if spec.Model != nil {
		st, err := os.Stat(spec.Path)
		if err != nil {
			return nil, err
		}
		return &Loaded{Model: spec.Model, Vocab: spec.Vocab, SizeBytes: st.Size()}, nil
	}
	if IsIncrementalDir(spec.Path) {
		m, err := OpenIncremental(spec.Path, opts)
		if err != nil {
			return nil, err
		}
		size := int64(0)
		for _, f := range slices.Compact(m.files[:]) {
			n, err := ModelSize(filepath.Join(spec.Path, f))
			if err != nil {
				m.Close()
				return nil, err
			}
			size += n
		}
		return &Loaded{Model: m, Vocab: m.vocab, SizeBytes: size, Cached: true, Incremental: m, closers: []func() error{m.Close}}, nil
	}
	size, err := ModelSize(spec.Path)
	if err != nil {
		return nil, err
	}
	note := "decoding by re-running the whole model at each step, as asked"
	if !spec.Rerun {
		g, err := graph.Load(spec.Path)
		if err != nil {
			return nil, err
		}
		iopts := incremental.Options{Map: spec.Map, Pad: sp.Pad, BOS: sp.BOS, EOS: sp.EOS}
		var dir *seq2seq.Dir
		set, err := incremental.Build(g, iopts)
		if err == nil {
			dir = &set.Dir
		} else if errors.Is(err, incremental.ErrFormat) && exported != nil {
			// A file qatc exported: read back into the QAT form, its
			// graphs are built and converted as its format's.
			dir, err = exported(g, iopts)
		}
		if err == nil {
			m, err := NewIncremental(spec.Path, dir, opts)
			if err != nil {
				return nil, err
			}
			return &Loaded{Model: m, Vocab: m.vocab, SizeBytes: size, Cached: true, Incremental: m, closers: []func() error{m.Close}}, nil
		}
		// Any seq2seq graph still decodes, the slow way.
		note = fmt.Sprintf("decoding without a cache (the whole model re-runs at each step): %v", err)
	}
	sess, err := ort.OpenFile(spec.Path, opts)
	if err != nil {
		return nil, err
	}
	s2s, err := NewSeq2Seq(spec.Path, sess, spec.Roles)
	if err != nil {
		sess.Close()
		return nil, err
	}
	s2s.Special = sp
	vocab, err := s2s.Vocab(sp)
	if err != nil {
		sess.Close()
		return nil, err
	}
	return &Loaded{Model: s2s, Vocab: vocab, Roles: s2s.Roles, SizeBytes: size, Note: note, closers: []func() error{sess.Close}}, nil
}

// exported builds the incremental graphs of a full-sequence model that
// qatc exported, in its format (RegisterExported).
var exported func(*graph.Model, incremental.Options) (*seq2seq.Dir, error)

// RegisterExported sets how Load builds the incremental graphs of a
// full-sequence model that qatc exported (an integer format, which
// incremental.Build refuses with ErrFormat). The builder is export's
// (export.Unfolded: read the file back into the QAT form, convert the
// graphs built from it to the file's format), and export sits above
// decode, so the program wires it in, as a database/sql driver is: qatc's
// main does. Without it, or when build fails, such a file decodes by
// re-running.
func RegisterExported(build func(*graph.Model, incremental.Options) (*seq2seq.Dir, error)) {
	exported = build
}

// ModelSize returns the bytes an ONNX model takes on disk: the file and
// the distinct external-data files its initializers name.
func ModelSize(path string) (int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("model: %v", err)
	}
	var p onnx.ModelProto
	if err := proto.Unmarshal(data, &p); err != nil || p.Graph == nil {
		return 0, fmt.Errorf("%s is not an ONNX model", path)
	}
	size := int64(len(data))
	seen := map[string]bool{}
	for _, t := range p.Graph.Initializer {
		if t.DataLocation != onnx.TensorProto_EXTERNAL {
			continue
		}
		for _, e := range t.ExternalData {
			if e.Key != "location" || seen[e.Value] {
				continue
			}
			seen[e.Value] = true
			fi, err := os.Stat(filepath.Join(filepath.Dir(path), filepath.Clean("/" + e.Value)[1:]))
			if err != nil {
				return 0, fmt.Errorf("%s: external data of %q: %v", path, t.Name, err)
			}
			size += fi.Size()
		}
	}
	return size, nil
}

package graph

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/qatc/qatc/onnx"
)

// loadExternalData reads the bytes of every tensor stored outside the
// protobuf into its RawData, reading each tensor once straight into its
// own buffer (no whole-file copy), and marks the tensor inline.
// It reports whether any tensor was external.
func loadExternalData(p *onnx.ModelProto, dir string) (bool, error) {
	r := &extReader{dir: dir, files: map[string]*extFile{}}
	defer r.close()
	var err error
	external := false
	walkTensors(p.Graph, func(t *onnx.TensorProto) {
		if err == nil && HasExternalData(t) {
			external = true
			err = r.load(t)
		}
	})
	return external, err
}

// walkTensors calls f for every tensor in g: initializers, sparse
// initializers, node attributes, and those of subgraphs.
func walkTensors(g *onnx.GraphProto, f func(*onnx.TensorProto)) {
	if g == nil {
		return
	}
	for _, t := range g.Initializer {
		f(t)
	}
	sparse := func(s *onnx.SparseTensorProto) {
		if s.Values != nil {
			f(s.Values)
		}
		if s.Indices != nil {
			f(s.Indices)
		}
	}
	for _, s := range g.SparseInitializer {
		sparse(s)
	}
	for _, n := range g.Node {
		for _, a := range n.Attribute {
			if a.T != nil {
				f(a.T)
			}
			for _, t := range a.Tensors {
				f(t)
			}
			if a.SparseTensor != nil {
				sparse(a.SparseTensor)
			}
			for _, s := range a.SparseTensors {
				sparse(s)
			}
			walkTensors(a.G, f)
			for _, sg := range a.Graphs {
				walkTensors(sg, f)
			}
		}
	}
}

type extFile struct {
	f    *os.File
	size int64
}

// extReader resolves external-data locations inside one directory and
// keeps each file open while the model loads.
type extReader struct {
	dir     string
	realDir string
	files   map[string]*extFile
}

func (r *extReader) close() {
	for _, f := range r.files {
		f.f.Close()
	}
}

func (r *extReader) load(t *onnx.TensorProto) error {
	var loc string
	var off, length int64 = 0, -1
	for _, e := range t.ExternalData {
		switch e.Key {
		case "location":
			loc = e.Value
		case "offset", "length":
			v, err := strconv.ParseInt(e.Value, 10, 64)
			if err != nil || v < 0 {
				return fmt.Errorf("tensor %q: external-data %s %q is not a non-negative integer", t.Name, e.Key, e.Value)
			}
			if e.Key == "offset" {
				off = v
			} else {
				length = v
			}
		}
	}
	if loc == "" {
		return fmt.Errorf("tensor %q is marked as external data but names no location", t.Name)
	}
	f, err := r.open(t.Name, loc)
	if err != nil {
		return err
	}
	if length < 0 {
		length = f.size - off
	}
	if want, ok := byteSize(t); ok && length != want {
		return fmt.Errorf("tensor %q: external data in %q is %d bytes, but %s%v needs %d", t.Name, loc, length, TensorType(t), t.Dims, want)
	}
	if off > f.size || length > f.size-off {
		return fmt.Errorf("tensor %q: external-data file %q is truncated: it has %d bytes, the tensor needs bytes %d to %d", t.Name, loc, f.size, off, off+length)
	}
	buf := make([]byte, length)
	if _, err := f.f.ReadAt(buf, off); err != nil && !(errors.Is(err, io.EOF) && length == 0) {
		return fmt.Errorf("tensor %q: read external data from %q: %s", t.Name, loc, oneLine(err.Error()))
	}
	t.RawData = buf
	t.DataLocation = onnx.TensorProto_DEFAULT
	t.ExternalData = nil
	return nil
}

// open resolves loc inside the model's directory, refusing any location
// that leaves it (absolute paths, "..", symbolic links pointing outside),
// so that a model file cannot make qatc read arbitrary files.
func (r *extReader) open(tensor, loc string) (*extFile, error) {
	if f, ok := r.files[loc]; ok {
		return f, nil
	}
	outside := fmt.Errorf("tensor %q: external-data location %q resolves outside the model's directory; only files next to the model are read", tensor, loc)
	if r.dir == "" {
		return nil, fmt.Errorf("tensor %q has external data (%q) but the model was not read from a file; use graph.Load", tensor, loc)
	}
	clean := filepath.Clean(filepath.FromSlash(strings.ReplaceAll(loc, `\`, "/")))
	if filepath.IsAbs(loc) || filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, ".."+string(filepath.Separator)) {
		return nil, outside
	}
	path := filepath.Join(r.dir, clean)
	if r.realDir == "" {
		d, err := filepath.EvalSymlinks(r.dir)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: model directory: %w", tensor, err)
		}
		if r.realDir, err = filepath.Abs(d); err != nil {
			return nil, fmt.Errorf("tensor %q: model directory: %w", tensor, err)
		}
	}
	real, err := filepath.EvalSymlinks(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("tensor %q: external-data file %s is missing; copy it next to the model", tensor, path)
	}
	if err != nil {
		return nil, fmt.Errorf("tensor %q: external-data file: %w", tensor, err)
	}
	if real, err = filepath.Abs(real); err != nil {
		return nil, fmt.Errorf("tensor %q: external-data file: %w", tensor, err)
	}
	if rel, err := filepath.Rel(r.realDir, real); err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return nil, outside
	}
	fh, err := os.Open(real)
	if err != nil {
		return nil, fmt.Errorf("tensor %q: external-data file: %w", tensor, err)
	}
	st, err := fh.Stat()
	if err != nil || !st.Mode().IsRegular() {
		fh.Close()
		return nil, fmt.Errorf("tensor %q: external-data location %q is not a regular file", tensor, loc)
	}
	f := &extFile{f: fh, size: st.Size()}
	r.files[loc] = f
	return f, nil
}

// byteSize returns the number of data bytes t's type and dims call for,
// when the type has a fixed size.
func byteSize(t *onnx.TensorProto) (int64, bool) {
	bits := int64(TensorType(t).Bits())
	if bits == 0 {
		return 0, false
	}
	n := int64(1)
	for _, d := range t.Dims {
		if d < 0 || (d > 0 && n > (1<<62)/d) {
			return 0, false
		}
		n *= d
	}
	return (n*bits + 7) / 8, true
}

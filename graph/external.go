package graph

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/safeio"
)

// External data is read through one validating reader: a tensor's bytes
// come from a regular file inside the model's directory, and exactly as
// many as its type and dims declare (never "the rest of the file"); no
// file gives more bytes than it holds, nor bytes it never stored (the
// holes of a sparse file); and a model whose data file was written by
// another write than its own is refused. So a model file cannot make qatc
// read arbitrary files, hang on a FIFO, or allocate memory that the files
// do not back.

// holeLimit is how many bytes of a model's external data may lie in the
// holes of sparse files. Real writers store every byte; a few zero blocks
// made sparse by a copying tool stay well below it, while a file that
// claims gigabytes it never wrote is refused before they are allocated.
const holeLimit = 16 << 20

// recordKey is the metadata_props entry with which Save ties a model to
// its data file: the file's size and a checksum of the bytes the model's
// tensors use. Load removes it after checking it.
const recordKey = "qatc.external_data"

// dataRecord is recordKey's value.
type dataRecord struct {
	Location string `json:"location"`
	Bytes    int64  `json:"bytes"`
	CRC32C   string `json:"crc32c"`
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// extFile is one external-data file, open while the model loads.
type extFile struct {
	f       *os.File
	path    string
	size    int64
	claimed int64 // bytes the model's tensors take from it
}

// extRef is one tensor's external data, validated.
type extRef struct {
	t        *onnx.TensorProto
	loc      string
	off, len int64
	file     *extFile
}

// extSet is a model's external data: every reference checked and every
// file open, before a byte is read.
type extSet struct {
	dir, realDir string
	files        map[string]*extFile
	refs         []*extRef
	holes        int64
	// rec is Save's record of the data file, taken from the model.
	rec *dataRecord
}

func (s *extSet) close() {
	for _, f := range s.files {
		f.f.Close()
	}
}

// paths returns the data files, in the order the model first uses them.
func (s *extSet) paths() []string {
	var out []string
	seen := map[*extFile]bool{}
	for _, r := range s.refs {
		if !seen[r.file] {
			seen[r.file] = true
			out = append(out, r.file.path)
		}
	}
	return out
}

// planExternal validates every external-data reference of p and opens its
// files. dir resolves locations ("" refuses external data).
func planExternal(p *onnx.ModelProto, dir string) (*extSet, error) {
	s := &extSet{dir: dir, files: map[string]*extFile{}}
	var err error
	walkTensors(p.Graph, func(t *onnx.TensorProto) {
		if err == nil && HasExternalData(t) {
			err = s.add(t)
		}
	})
	if err != nil {
		s.close()
		return nil, err
	}
	return s, nil
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

// add validates t's reference: location, offset and length, the length
// its type and dims need, the file's type, bounds and holes.
func (s *extSet) add(t *onnx.TensorProto) error {
	name := printable(t.Name)
	var loc string
	var off, length int64 = 0, -1
	for _, e := range t.ExternalData {
		switch e.Key {
		case "location":
			loc = e.Value
		case "offset", "length":
			v, err := strconv.ParseInt(e.Value, 10, 64)
			if err != nil || v < 0 {
				return fmt.Errorf("tensor %q: external-data %s %q is not a non-negative integer", name, e.Key, printable(e.Value))
			}
			if e.Key == "offset" {
				off = v
			} else {
				length = v
			}
		}
	}
	if loc == "" {
		return fmt.Errorf("tensor %q is marked as external data but names no location", name)
	}
	if TensorType(t) == String {
		return fmt.Errorf("tensor %q: a string tensor cannot have external data (ONNX stores strings inline); the model is malformed", name)
	}
	want, err := dataBytes(t)
	if err != nil {
		return err
	}
	if length >= 0 && length != want {
		return fmt.Errorf("tensor %q: external data in %q is %d bytes, but %s%v needs %d", name, printable(loc), length, TensorType(t), t.Dims, want)
	}
	f, err := s.open(name, loc)
	if err != nil {
		return err
	}
	if off > f.size || want > f.size-off {
		return fmt.Errorf("tensor %q: external-data file %q is truncated: it has %d bytes, the tensor needs bytes %d to %d", name, printable(loc), f.size, off, off+want)
	}
	if f.claimed += want; f.claimed > f.size {
		return fmt.Errorf("tensor %q: the model's tensors take %d bytes from external-data file %q, which holds %d; its tensors overlap, the model is malformed", name, f.claimed, printable(loc), f.size)
	}
	holes, err := safeio.Holes(f.f, off, want)
	if err != nil {
		return fmt.Errorf("tensor %q: external-data file %q: %v", name, printable(loc), err)
	}
	if s.holes += holes; s.holes > holeLimit {
		return fmt.Errorf("tensor %q: %d of its %d bytes in external-data file %q were never written (a sparse file); refusing to read data the file does not hold", name, holes, want, printable(loc))
	}
	s.refs = append(s.refs, &extRef{t: t, loc: loc, off: off, len: want, file: f})
	return nil
}

// open resolves loc inside the model's directory, refusing any location
// that leaves it (absolute paths, "..", symbolic links pointing outside)
// and anything but a regular file, so that a model file cannot make qatc
// read arbitrary files or block on a FIFO.
func (s *extSet) open(tensor, loc string) (*extFile, error) {
	if f, ok := s.files[loc]; ok {
		return f, nil
	}
	outside := fmt.Errorf("tensor %q: external-data location %q resolves outside the model's directory; only files next to the model are read", tensor, printable(loc))
	if s.dir == "" {
		return nil, fmt.Errorf("tensor %q has external data (%q) but the model was not read from a file; use graph.Load", tensor, printable(loc))
	}
	path, err := resolveLocation(s.dir, loc)
	if err != nil {
		return nil, outside
	}
	if s.realDir == "" {
		d, err := filepath.EvalSymlinks(s.dir)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: model directory: %s", tensor, printable(err.Error()))
		}
		if s.realDir, err = filepath.Abs(d); err != nil {
			return nil, fmt.Errorf("tensor %q: model directory: %s", tensor, printable(err.Error()))
		}
	}
	real, err := filepath.EvalSymlinks(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("tensor %q: external-data file %s is missing; copy it next to the model", tensor, printable(path))
	}
	if err != nil {
		return nil, fmt.Errorf("tensor %q: external-data file: %s", tensor, printable(err.Error()))
	}
	if real, err = filepath.Abs(real); err != nil {
		return nil, fmt.Errorf("tensor %q: external-data file: %s", tensor, printable(err.Error()))
	}
	if rel, err := filepath.Rel(s.realDir, real); err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return nil, outside
	}
	fh, st, err := safeio.OpenRegular(real)
	var nr *safeio.NotRegularError
	if errors.As(err, &nr) {
		return nil, fmt.Errorf("tensor %q: external-data location %q is %s, not a regular file", tensor, printable(loc), nr.Kind)
	}
	if err != nil {
		return nil, fmt.Errorf("tensor %q: external-data location %q: %s", tensor, printable(loc), printable(err.Error()))
	}
	f := &extFile{f: fh, path: path, size: st.Size()}
	s.files[loc] = f
	return f, nil
}

// resolveLocation joins a relative external-data location to dir,
// refusing absolute locations and ones that climb out with "..".
func resolveLocation(dir, loc string) (string, error) {
	clean := filepath.Clean(filepath.FromSlash(strings.ReplaceAll(loc, `\`, "/")))
	if filepath.IsAbs(loc) || filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, ".."+string(filepath.Separator)) || strings.ContainsRune(loc, 0) {
		return "", errors.New("outside")
	}
	return filepath.Join(dir, clean), nil
}

// read reads every tensor's bytes into its RawData (each straight into its
// own buffer) and marks it inline. It returns the checksum of each
// location's bytes, in the order of the references.
func (s *extSet) read() (map[string]uint32, error) {
	sums := map[string]uint32{}
	for _, r := range s.refs {
		buf := make([]byte, r.len)
		if _, err := r.file.f.ReadAt(buf, r.off); err != nil && !(errors.Is(err, io.EOF) && r.len == 0) {
			return nil, fmt.Errorf("tensor %q: read external data from %q: %s", printable(r.t.Name), printable(r.loc), printable(err.Error()))
		}
		sums[r.loc] = crc32.Update(sums[r.loc], castagnoli, buf)
		r.t.RawData = buf
		r.t.DataLocation = onnx.TensorProto_DEFAULT
		r.t.ExternalData = nil
	}
	return sums, nil
}

// checksums streams every reference's bytes through the checksum without
// keeping them.
func (s *extSet) checksums() (map[string]uint32, error) {
	sums := map[string]uint32{}
	buf := make([]byte, 1<<20)
	for _, r := range s.refs {
		sum := sums[r.loc]
		for done := int64(0); done < r.len; {
			n := min(int64(len(buf)), r.len-done)
			if _, err := r.file.f.ReadAt(buf[:n], r.off+done); err != nil {
				return nil, fmt.Errorf("tensor %q: read external data from %q: %s", printable(r.t.Name), printable(r.loc), printable(err.Error()))
			}
			sum = crc32.Update(sum, castagnoli, buf[:n])
			done += n
		}
		sums[r.loc] = sum
	}
	return sums, nil
}

// takeRecord removes Save's data-file record from p's metadata and
// returns it (nil when there is none, or it is not qatc's).
func takeRecord(p *onnx.ModelProto) *dataRecord {
	for i, e := range p.MetadataProps {
		if e.Key != recordKey {
			continue
		}
		p.MetadataProps = append(p.MetadataProps[:i:i], p.MetadataProps[i+1:]...)
		var r dataRecord
		if json.Unmarshal([]byte(e.Value), &r) != nil || r.Location == "" {
			return nil
		}
		return &r
	}
	return nil
}

// verify checks the data file named by rec against its size and the
// checksum of the bytes the model uses. A model and a data file from two
// different writes (two runs writing one output at once, or files copied
// from different places) are refused here instead of being run as a model
// whose weights are another's.
func (s *extSet) verify(rec *dataRecord, sums map[string]uint32) error {
	if rec == nil {
		return nil
	}
	f, ok := s.files[rec.Location]
	if !ok {
		return nil // the record is about a file the model no longer uses
	}
	sum := fmt.Sprintf("%08x", sums[rec.Location])
	if f.size != rec.Bytes || sum != rec.CRC32C {
		return fmt.Errorf("external-data file %s does not belong to this model: it has %d bytes with checksum %s, the model was written with %d bytes with checksum %s; the two files come from different writes (write the model again)",
			printable(f.path), f.size, sum, rec.Bytes, rec.CRC32C)
	}
	return nil
}

package graph

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/qatc/qatc/onnx"
	"google.golang.org/protobuf/proto"
)

// Load reads an ONNX model file and the external data its tensors refer
// to. Afterwards every tensor holds its bytes inline (RawData), so the rest
// of qatc sees plain tensors whatever the file's layout.
func Load(path string) (*Model, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read model: %w", err)
	}
	m, err := Parse(data, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// Parse decodes a serialized model; dir resolves external-data locations
// ("" refuses external data).
func Parse(data []byte, dir string) (*Model, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("empty file, not an ONNX model")
	}
	p := &onnx.ModelProto{}
	if err := proto.Unmarshal(data, p); err != nil {
		return nil, fmt.Errorf("not a valid ONNX model (protobuf: %s)", oneLine(err.Error()))
	}
	if p.Graph == nil {
		return nil, fmt.Errorf("not an ONNX model: it has no graph")
	}
	external, err := loadExternalData(p, dir)
	if err != nil {
		return nil, err
	}
	m := FromProto(p, dir)
	m.External = external
	return m, nil
}

// Marshal serializes the model with all tensor data inline. Protobuf
// cannot encode more than 2 GiB; Save handles such models.
func (m *Model) Marshal() ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(m.Proto)
}

// inlineLimit is the tensor data size beyond which Save writes external
// data: protobuf cannot encode a message over 2 GiB, and the graph itself
// needs some room. A variable so tests can lower it.
var inlineLimit int64 = 2<<30 - 64<<20

// SaveOptions choose how Save lays out tensor data.
type SaveOptions struct {
	// ExternalData writes large initializers to a separate file. It is
	// implied when the tensors together exceed protobuf's 2 GiB limit.
	ExternalData bool
	// Location is the data file's name, relative to the model's
	// directory; default "<model file name>.data".
	Location string
	// Threshold is the smallest tensor (in bytes) that goes to the data
	// file; default 1024.
	Threshold int64
}

// Save writes the model to path atomically (a temporary file in the same
// directory, then a rename). A model read with external data, or whose
// tensors exceed 2 GiB, is written with external data in
// "<file name>.data".
func (m *Model) Save(path string) error { return m.SaveWith(path, nil) }

// dataAlign is the alignment of each tensor in an external-data file, so
// that runtimes can map the file and use the tensors in place.
const dataAlign = 4096

// SaveWith writes the model to path as Save does, with options (nil means
// the defaults). With external data, tensors are streamed to the data file
// and the protobuf is encoded without their bytes, so saving never holds a
// second copy of the weights; both files are written atomically.
func (m *Model) SaveWith(path string, opts *SaveOptions) error {
	o := SaveOptions{ExternalData: m.External}
	if opts != nil {
		o = *opts
	}
	if !o.ExternalData && inlineSize(m.Proto) <= inlineLimit {
		data, err := m.Marshal()
		if err != nil {
			return fmt.Errorf("encode %s: %s", path, oneLine(err.Error()))
		}
		return WriteFileAtomic(path, data)
	}
	if o.Location == "" {
		o.Location = filepath.Base(path) + ".data"
	}
	if o.Threshold <= 0 {
		o.Threshold = 1024
	}
	if o.Location != filepath.Base(o.Location) || o.Location == "." || o.Location == ".." {
		return fmt.Errorf("save %s: external-data location %q must be a plain file name in the model's directory", path, o.Location)
	}
	dir := filepath.Dir(path)
	if filepath.Join(dir, o.Location) == filepath.Clean(path) {
		return fmt.Errorf("save %s: external-data location %q is the model file itself", path, o.Location)
	}

	// Stream the large initializers into the data file.
	df, err := os.CreateTemp(dir, "."+o.Location+".tmp*")
	if err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	dataTmp := df.Name()
	df.Chmod(0o644)
	fail := func(err error) error {
		df.Close()
		os.Remove(dataTmp)
		return err
	}
	type moved struct {
		t   *onnx.TensorProto
		raw []byte
		loc onnx.TensorProto_DataLocation
		ext []*onnx.StringStringEntryProto
	}
	var out []moved
	restore := func() {
		for _, mv := range out {
			mv.t.RawData, mv.t.DataLocation, mv.t.ExternalData = mv.raw, mv.loc, mv.ext
		}
	}
	var off int64
	pad := make([]byte, dataAlign)
	for _, t := range m.Proto.Graph.Initializer {
		if HasExternalData(t) {
			restore()
			return fail(fmt.Errorf("save %s: tensor %q still refers to external data; load the model with graph.Load first", path, t.Name))
		}
		if int64(len(t.RawData)) < o.Threshold {
			continue
		}
		if r := off % dataAlign; r != 0 {
			if _, err := df.Write(pad[:dataAlign-r]); err != nil {
				restore()
				return fail(fmt.Errorf("save %s: write %s: %w", path, o.Location, err))
			}
			off += dataAlign - r
		}
		if _, err := df.Write(t.RawData); err != nil {
			restore()
			return fail(fmt.Errorf("save %s: write %s: %w", path, o.Location, err))
		}
		out = append(out, moved{t: t, raw: t.RawData, loc: t.DataLocation, ext: t.ExternalData})
		n := int64(len(t.RawData))
		t.RawData = nil
		t.DataLocation = onnx.TensorProto_EXTERNAL
		t.ExternalData = []*onnx.StringStringEntryProto{
			{Key: "location", Value: o.Location},
			{Key: "offset", Value: fmt.Sprint(off)},
			{Key: "length", Value: fmt.Sprint(n)},
		}
		off += n
	}
	data, err := m.Marshal()
	restore()
	if err != nil {
		return fail(fmt.Errorf("encode %s: %s", path, oneLine(err.Error())))
	}
	if err := df.Close(); err != nil {
		os.Remove(dataTmp)
		return fmt.Errorf("save %s: write %s: %w", path, o.Location, err)
	}
	// Both files are complete before either replaces an older one.
	modelTmp, err := writeTemp(path, data)
	if err != nil {
		os.Remove(dataTmp)
		return err
	}
	if err := os.Rename(dataTmp, filepath.Join(dir, o.Location)); err != nil {
		os.Remove(dataTmp)
		os.Remove(modelTmp)
		return fmt.Errorf("save %s: %w", path, err)
	}
	if err := os.Rename(modelTmp, path); err != nil {
		os.Remove(modelTmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// inlineSize is an upper-bound estimate of the encoded size of the
// initializers' data, cheap enough to decide on external data.
func inlineSize(p *onnx.ModelProto) int64 {
	var n int64
	for _, t := range p.Graph.Initializer {
		n += int64(len(t.RawData)) + 4*int64(len(t.FloatData)+len(t.Int32Data)) +
			10*int64(len(t.Int64Data)+len(t.Uint64Data)) + 8*int64(len(t.DoubleData))
		for _, s := range t.StringData {
			n += int64(len(s))
		}
	}
	return n
}

// WriteFileAtomic writes data to a temporary file next to path and renames
// it into place, so that readers never see a half-written file.
func WriteFileAtomic(path string, data []byte) error {
	tmp, err := writeTemp(path, data)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// writeTemp writes data to a new temporary file in path's directory and
// returns its name.
func writeTemp(path string, data []byte) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	// CreateTemp makes the file private; a model is an ordinary file.
	f.Chmod(0o644)
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return tmp, nil
}

// oneLine folds a multi-line message (as some protobuf errors are) into
// one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

package graph

import (
	"encoding/json"
	"fmt"
	"hash/crc32"
	"path/filepath"
	"strings"

	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/safeio"
	"google.golang.org/protobuf/proto"
)

// maxModelFile is the largest model file Load reads: protobuf cannot
// encode a message over 2 GiB, so a larger file is not an ONNX model
// (large models keep their weights in external data).
const maxModelFile = 2 << 30

// Load reads an ONNX model file and the external data its tensors refer
// to. Afterwards every tensor holds its bytes inline (RawData), so the rest
// of qatc sees plain tensors whatever the file's layout. Every tensor is
// validated (see checkTensor and the external-data reader), and a model
// whose data file comes from another write than its own is refused.
func Load(path string) (*Model, error) {
	p, ext, err := openModel(path, false)
	if err != nil {
		return nil, err
	}
	defer ext.close()
	m, err := finish(p, ext, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// LoadValid is Load for a model a command works on: its structure is
// checked too (Validate), so that a broken graph (a cycle, a dangling
// input, a value written twice) is refused with one line naming the node;
// nodes merely out of order are put in order.
func LoadValid(path string) (*Model, error) {
	m, err := Load(path)
	if err != nil {
		return nil, err
	}
	if m.Validate() == nil {
		return m, nil
	}
	if err := m.TopoSort(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// LoadStructure reads a model file's structure: the graph and every
// tensor's name, type and dims, but the data only of tensors up to 4 KiB
// (shapes, bounds, scalars). Its external-data references are validated
// as Load validates them, without reading them. Use it to look at a model
// that another reader (onnxruntime) will load.
func LoadStructure(path string) (*Model, error) {
	p, ext, err := openModel(path, true)
	if err != nil {
		return nil, err
	}
	ext.close()
	m := FromProto(p, filepath.Dir(path))
	m.External = len(ext.refs) > 0
	return m, nil
}

// DataFiles returns the external-data files the model file at path uses,
// validated as Load validates them.
func DataFiles(path string) ([]string, error) {
	_, ext, err := openModel(path, true)
	if err != nil {
		return nil, err
	}
	defer ext.close()
	return ext.paths(), nil
}

// CheckFile checks a model file that onnxruntime is about to read by
// itself: a regular file under protobuf's size limit, whose external data
// passes Load's checks and, when Save wrote it, belongs to this model
// (size and checksum). onnxruntime is then never handed a FIFO, a sparse
// file's holes or a mixed model and data pair. It returns the file's
// structure, as LoadStructure reads it, from the same read.
func CheckFile(path string) (*Model, error) {
	p, ext, err := openModel(path, true)
	if err != nil {
		return nil, err
	}
	defer ext.close()
	if ext.rec != nil {
		sums, err := ext.checksums()
		if err == nil {
			err = ext.verify(ext.rec, sums)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	m := FromProto(p, filepath.Dir(path))
	m.External = len(ext.refs) > 0
	return m, nil
}

// openModel parses the model file at path (its structure only when
// structure is set) and validates and opens its external-data files,
// holding the directory's shared lock so that the files all come from one
// write (see safeio.Batch).
func openModel(path string, structure bool) (*onnx.ModelProto, *extSet, error) {
	dir := filepath.Dir(path)
	unlock := safeio.LockDirs(dir)
	defer unlock()
	f, st, err := safeio.OpenRegular(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read model: %s", oneLine(err.Error()))
	}
	defer f.Close()
	if st.Size() == 0 {
		return nil, nil, fmt.Errorf("%s: empty file, not an ONNX model", path)
	}
	if st.Size() > maxModelFile {
		return nil, nil, fmt.Errorf("%s: %d bytes, more than protobuf's 2 GiB limit, so not an ONNX model file (large models keep their weights in external data)", path, st.Size())
	}
	var p *onnx.ModelProto
	err = safeio.Map(f, st.Size(), func(data []byte) error {
		if structure {
			if s := stripData(data, structureKeep); s != nil {
				data = s
			}
		}
		var err error
		p, err = unmarshal(data)
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	rec := takeRecord(p)
	ext, err := planExternal(p, dir)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	ext.rec = rec
	return p, ext, nil
}

// unmarshal decodes a serialized model (protobuf copies what it keeps, so
// data may be a mapping that goes away).
func unmarshal(data []byte) (*onnx.ModelProto, error) {
	p := &onnx.ModelProto{}
	if err := proto.Unmarshal(data, p); err != nil {
		return nil, fmt.Errorf("not a valid ONNX model (protobuf: %s)", oneLine(err.Error()))
	}
	if p.Graph == nil {
		return nil, fmt.Errorf("not an ONNX model: it has no graph")
	}
	return p, nil
}

// Parse decodes a serialized model; dir resolves external-data locations
// ("" refuses external data). It validates as Load does.
func Parse(data []byte, dir string) (*Model, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("empty file, not an ONNX model")
	}
	p, err := unmarshal(data)
	if err != nil {
		return nil, err
	}
	rec := takeRecord(p)
	ext, err := planExternal(p, dir)
	if err != nil {
		return nil, err
	}
	defer ext.close()
	ext.rec = rec
	return finish(p, ext, dir)
}

// finish reads the external data, checks it against Save's record and
// checks every tensor.
func finish(p *onnx.ModelProto, ext *extSet, dir string) (*Model, error) {
	sums, err := ext.read()
	if err != nil {
		return nil, err
	}
	if err := ext.verify(ext.rec, sums); err != nil {
		return nil, err
	}
	if err := checkTensors(p); err != nil {
		return nil, err
	}
	m := FromProto(p, dir)
	m.External = len(ext.refs) > 0
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

// DataPath returns the data file Save writes beside a model at path
// when it writes external data with the default location.
func DataPath(path string) string { return path + ".data" }

// Save writes the model to path atomically (see SaveWith). A model read
// with external data, or whose tensors exceed 2 GiB, is written with
// external data in "<file name>.data".
func (m *Model) Save(path string) error { return m.SaveWith(path, nil) }

// dataAlign is the alignment of each tensor in an external-data file, so
// that runtimes can map the file and use the tensors in place.
const dataAlign = 4096

// SaveWith writes the model to path with options (nil means the
// defaults). With external data, tensors are streamed to the data file
// and the protobuf is encoded without their bytes, so saving never holds a
// second copy of the weights. The model and its data file are written
// under temporary names and renamed into place together (data first, see
// safeio.Batch), and the model records the data file's size and checksum,
// which Load checks: a reader never takes one write's model with another
// write's data. Nothing is left behind on failure or interruption.
func (m *Model) SaveWith(path string, opts *SaveOptions) error {
	o := SaveOptions{ExternalData: m.External}
	if opts != nil {
		o = *opts
	}
	var b safeio.Batch
	defer b.Abort()
	if !o.ExternalData && inlineSize(m.Proto) <= inlineLimit {
		data, err := m.marshalWith(nil)
		if err != nil {
			return fmt.Errorf("encode %s: %s", path, oneLine(err.Error()))
		}
		return writeBatch(&b, path, data)
	}
	if o.Location == "" {
		o.Location = filepath.Base(DataPath(path))
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
	df, err := b.Create(filepath.Join(dir, o.Location))
	if err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	type moved struct {
		t   *onnx.TensorProto
		raw []byte
		loc onnx.TensorProto_DataLocation
		ext []*onnx.StringStringEntryProto
	}
	var out []moved
	defer func() {
		for _, mv := range out {
			mv.t.RawData, mv.t.DataLocation, mv.t.ExternalData = mv.raw, mv.loc, mv.ext
		}
	}()
	var off int64
	var sum uint32
	pad := make([]byte, dataAlign)
	for _, t := range m.Proto.Graph.Initializer {
		if HasExternalData(t) {
			return fmt.Errorf("save %s: tensor %q still refers to external data; load the model with graph.Load first", path, t.Name)
		}
		if int64(len(t.RawData)) < o.Threshold {
			continue
		}
		if r := off % dataAlign; r != 0 {
			if _, err := df.Write(pad[:dataAlign-r]); err != nil {
				return fmt.Errorf("save %s: write %s: %w", path, o.Location, err)
			}
			off += dataAlign - r
		}
		if _, err := df.Write(t.RawData); err != nil {
			return fmt.Errorf("save %s: write %s: %w", path, o.Location, err)
		}
		sum = crc32.Update(sum, castagnoli, t.RawData)
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
	data, err := m.marshalWith(&dataRecord{Location: o.Location, Bytes: off, CRC32C: fmt.Sprintf("%08x", sum)})
	if err != nil {
		return fmt.Errorf("encode %s: %s", path, oneLine(err.Error()))
	}
	return writeBatch(&b, path, data)
}

// writeBatch adds the model file to b and commits it.
func writeBatch(b *safeio.Batch, path string, data []byte) error {
	if err := b.Write(path, data); err != nil {
		return err
	}
	return b.Commit()
}

// marshalWith serializes the model with rec as its data-file record (none
// when nil), leaving the model as it was.
func (m *Model) marshalWith(rec *dataRecord) ([]byte, error) {
	saved := m.Proto.MetadataProps
	defer func() { m.Proto.MetadataProps = saved }()
	props := make([]*onnx.StringStringEntryProto, 0, len(saved)+1)
	for _, e := range saved {
		if e.Key != recordKey {
			props = append(props, e)
		}
	}
	if rec != nil {
		js, err := json.Marshal(rec)
		if err != nil {
			return nil, err
		}
		props = append(props, &onnx.StringStringEntryProto{Key: recordKey, Value: string(js)})
	}
	m.Proto.MetadataProps = props
	return m.Marshal()
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

// oneLine folds a multi-line message (as some protobuf errors are) into
// one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

package ort

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/safeio"
	"github.com/sbinet/npyio"
)

// npyTypes maps NumPy dtype descriptors (little-endian, as NumPy writes on
// the machines qatc runs on) to element types.
var npyTypes = map[string]graph.DataType{
	"<f4": graph.Float, "<f8": graph.Double, "<i8": graph.Int64, "<i4": graph.Int32,
	"|i1": graph.Int8, "|u1": graph.Uint8, "|b1": graph.Bool,
}

// ReadNpy reads a NumPy .npy file of float32, float64, int64, int32, int8,
// uint8 or bool values in C order.
func ReadNpy(path string) (*Tensor, error) {
	data, err := safeio.ReadFile(path, MemoryLimit())
	if err != nil {
		return nil, err
	}
	// npyio trusts the header; check its frame first so that a damaged
	// file gets an error rather than a panic.
	if len(data) < 10 || !bytes.Equal(data[:6], npyio.Magic[:]) {
		return nil, fmt.Errorf("%s: not a NumPy .npy file (no \\x93NUMPY magic)", path)
	}
	var hlen, start int
	switch data[6] {
	case 1:
		hlen, start = int(binary.LittleEndian.Uint16(data[8:10])), 10
	case 2, 3:
		if len(data) < 12 {
			return nil, fmt.Errorf("%s: truncated .npy header", path)
		}
		hlen, start = int(binary.LittleEndian.Uint32(data[8:12])), 12
	default:
		return nil, fmt.Errorf("%s: unsupported .npy format version %d", path, data[6])
	}
	if hlen > len(data)-start || !bytes.Contains(data[start:start+hlen], []byte("\n")) {
		return nil, fmt.Errorf("%s: truncated or damaged .npy header", path)
	}
	r, err := npyio.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: not a valid .npy file (%v)", path, err)
	}
	h := r.Header.Descr
	dt, ok := npyTypes[h.Type]
	if !ok {
		return nil, fmt.Errorf("%s: unsupported dtype %q (want float32, float64, int64, int32, int8, uint8 or bool, little-endian)", path, h.Type)
	}
	if h.Fortran {
		return nil, fmt.Errorf("%s: array is in Fortran order; save it with np.save(path, np.ascontiguousarray(a))", path)
	}
	shape := make([]int64, len(h.Shape))
	n := int64(1)
	body := int64(len(data) - start - hlen)
	for i, d := range h.Shape {
		shape[i] = int64(d)
		if d < 0 || d > 0 && n > math.MaxInt64/int64(d) {
			return nil, fmt.Errorf("%s: damaged .npy header: shape %v", path, h.Shape)
		}
		n *= int64(d)
	}
	// Every element takes at least one byte; checking n first keeps the
	// byte count from overflowing.
	if n > body {
		return nil, fmt.Errorf("%s: truncated: shape %v needs %d elements, the file has %d bytes of data", path, h.Shape, n, body)
	}
	if need := n * int64(dt.Bits()/8); need > body {
		return nil, fmt.Errorf("%s: truncated: shape %v needs %d bytes of data, the file has %d", path, h.Shape, need, body)
	}
	t := &Tensor{Shape: shape}
	switch dt {
	case graph.Float:
		t.Data, err = readNpyData[float32](r, n)
	case graph.Double:
		t.Data, err = readNpyData[float64](r, n)
	case graph.Int64:
		t.Data, err = readNpyData[int64](r, n)
	case graph.Int32:
		t.Data, err = readNpyData[int32](r, n)
	case graph.Int8:
		t.Data, err = readNpyData[int8](r, n)
	case graph.Uint8:
		t.Data, err = readNpyData[uint8](r, n)
	case graph.Bool:
		t.Data, err = readNpyData[bool](r, n)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return t, nil
}

func readNpyData[T any](r *npyio.Reader, n int64) ([]T, error) {
	var d []T
	if err := r.Read(&d); err != nil {
		return nil, err
	}
	if int64(len(d)) != n {
		return nil, fmt.Errorf("read %d elements, want %d", len(d), n)
	}
	return d, nil
}

// npyDescr is the inverse of npyTypes.
var npyDescr = map[graph.DataType]string{
	graph.Float: "<f4", graph.Double: "<f8", graph.Int64: "<i8", graph.Int32: "<i4",
	graph.Int8: "|i1", graph.Uint8: "|u1", graph.Bool: "|b1",
}

// WriteNpy writes t as a NumPy .npy file (format 1.0, C order), atomically.
// npyio writes only one-dimensional slices, so the header is written here
// and the data with encoding/binary.
func WriteNpy(path string, t *Tensor) error {
	if err := t.check(); err != nil {
		return fmt.Errorf("write %s: %v", path, err)
	}
	dims := make([]string, len(t.Shape))
	for i, d := range t.Shape {
		dims[i] = fmt.Sprint(d)
	}
	shape := strings.Join(dims, ", ")
	if len(t.Shape) == 1 {
		shape += ","
	}
	hdr := fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", npyDescr[t.DType()], shape)
	// The header, with magic, version and length, is padded with spaces
	// to a multiple of 64 bytes and ends in a newline.
	pad := 64 - (10+len(hdr)+1)%64
	if pad == 64 {
		pad = 0
	}
	hdr += strings.Repeat(" ", pad) + "\n"
	if len(hdr) > 65535 {
		return fmt.Errorf("write %s: shape %v is too long for a .npy header", path, t.Shape)
	}
	var buf bytes.Buffer
	buf.Grow(10 + len(hdr) + t.Len()*t.DType().Bits()/8)
	buf.Write(npyio.Magic[:])
	buf.Write([]byte{1, 0})
	binary.Write(&buf, binary.LittleEndian, uint16(len(hdr)))
	buf.WriteString(hdr)
	if err := binary.Write(&buf, binary.LittleEndian, t.Data); err != nil {
		return fmt.Errorf("write %s: %v", path, err)
	}
	return safeio.WriteFile(path, buf.Bytes())
}

package graph

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qatc/qatc/onnx"
)

// writeUnchecked writes m to dir/model.onnx as it is (Marshal, no
// validation) and returns the path.
func writeUnchecked(t *testing.T, dir string, m *Model) string {
	t.Helper()
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "model.onnx")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// hostileModel writes a model whose one initializer is t (with an Identity
// reading it) to dir/model.onnx.
func hostileModel(t *testing.T, dir string, tensors ...*onnx.TensorProto) string {
	t.Helper()
	m := New("hostile", 17)
	for _, tp := range tensors {
		m.AddInitializer(tp)
	}
	m.Op("Identity", "id", []string{tensors[0].Name}, []string{"y"})
	m.AddOutput("y", DataType(tensors[0].DataType), nil)
	return writeUnchecked(t, dir, m)
}

// ext returns a tensor of type dt and dims whose data is external, in loc
// at offset 0, with the given length (none when negative).
func ext(name string, dt DataType, dims []int64, loc string, length int64) *onnx.TensorProto {
	tp := &onnx.TensorProto{Name: name, DataType: int32(dt), Dims: dims, DataLocation: onnx.TensorProto_EXTERNAL}
	tp.ExternalData = []*onnx.StringStringEntryProto{{Key: "location", Value: loc}, {Key: "offset", Value: "0"}}
	if length >= 0 {
		tp.ExternalData = append(tp.ExternalData, &onnx.StringStringEntryProto{Key: "length", Value: itoa(length)})
	}
	return tp
}

// sparse makes dir/name a file of size bytes that holds no data.
func sparse(t *testing.T, dir, name string, size int64) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// Hostile models and data files, each built here: every one is refused
// with one line naming the model and the tensor or file, quickly, without
// allocating what it declares and without hanging.
func TestHostileFiles(t *testing.T) {
	const gb = 1 << 30
	tests := []struct {
		name  string
		build func(t *testing.T, dir string) string
		want  string
	}{
		{"fifo as external data", func(t *testing.T, dir string) string {
			if err := syscall.Mkfifo(filepath.Join(dir, "w.data"), 0o644); err != nil {
				t.Fatal(err)
			}
			return hostileModel(t, dir, ext("w", Float, []int64{4}, "w.data", 16))
		}, `tensor "w": external-data location "w.data" is a FIFO (named pipe), not a regular file`},
		{"device as external data", func(t *testing.T, dir string) string {
			if err := os.Symlink("/dev/zero", filepath.Join(dir, "w.data")); err != nil {
				t.Fatal(err)
			}
			return hostileModel(t, dir, ext("w", Float, []int64{4}, "w.data", -1))
		}, `resolves outside the model's directory`},
		{"string tensor with external data, 64 GB sparse file", func(t *testing.T, dir string) string {
			sparse(t, dir, "w.data", 64*gb)
			return hostileModel(t, dir, ext("w", String, []int64{1}, "w.data", -1))
		}, `tensor "w": a string tensor cannot have external data`},
		{"dims of 8 GB on an 8 GB sparse file", func(t *testing.T, dir string) string {
			sparse(t, dir, "w.data", 8*gb)
			return hostileModel(t, dir, ext("w", Float, []int64{1 << 30, 2}, "w.data", -1))
		}, `tensor "w": 8589934592 of its 8589934592 bytes in external-data file "w.data" were never written (a sparse file)`},
		{"length beyond the dims", func(t *testing.T, dir string) string {
			sparse(t, dir, "w.data", gb)
			return hostileModel(t, dir, ext("w", Float, []int64{4}, "w.data", gb))
		}, `tensor "w": external data in "w.data" is 1073741824 bytes, but float32[4] needs 16`},
		{"two tensors on the same bytes", func(t *testing.T, dir string) string {
			os.WriteFile(filepath.Join(dir, "w.data"), make([]byte, 64), 0o644)
			return hostileModel(t, dir, ext("w", Float, []int64{16}, "w.data", 64), ext("v", Float, []int64{16}, "w.data", 64))
		}, `tensor "v": the model's tensors take 128 bytes from external-data file "w.data", which holds 64; its tensors overlap`},
		{"dims [1e9, 1e9] over 16 bytes", func(t *testing.T, dir string) string {
			return hostileModel(t, dir, &onnx.TensorProto{Name: "w", DataType: int32(Float), Dims: []int64{1e9, 1e9}, RawData: make([]byte, 16)})
		}, `tensor "w" declares dims [1000000000 1000000000], more elements than any file holds`},
		{"dims [1e6, 1e6] over 16 bytes", func(t *testing.T, dir string) string {
			return hostileModel(t, dir, &onnx.TensorProto{Name: "w", DataType: int32(Float), Dims: []int64{1e6, 1e6}, RawData: make([]byte, 16)})
		}, `tensor "w" declares float32[1000000 1000000], 4000000000000 bytes, but holds 16 bytes of data`},
		{"negative dims", func(t *testing.T, dir string) string {
			return hostileModel(t, dir, &onnx.TensorProto{Name: "w", DataType: int32(Float), Dims: []int64{-2, -2}, RawData: make([]byte, 16)})
		}, `tensor "w" has a negative dimension in [-2 -2]`},
		{"int64 values fewer than the dims", func(t *testing.T, dir string) string {
			return hostileModel(t, dir, &onnx.TensorProto{Name: "w", DataType: int32(Int64), Dims: []int64{1000}, Int64Data: []int64{1, 2}})
		}, `tensor "w" declares int64[1000], 1000 elements, but holds 2 values in int64_data`},
		{"undefined data type", func(t *testing.T, dir string) string {
			return hostileModel(t, dir, &onnx.TensorProto{Name: "w", DataType: 99, Dims: []int64{4}, RawData: make([]byte, 16)})
		}, `tensor "w" has data type 99, which ONNX does not define`},
		{"model file is a FIFO", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "model.onnx")
			if err := syscall.Mkfifo(p, 0o644); err != nil {
				t.Fatal(err)
			}
			return p
		}, `is a FIFO (named pipe), not a regular file`},
		{"model file is a 1.5 GB sparse file", func(t *testing.T, dir string) string {
			sparse(t, dir, "model.onnx", 3*gb/2)
			return filepath.Join(dir, "model.onnx")
		}, `not a valid ONNX model`},
		{"model file is 3 GB", func(t *testing.T, dir string) string {
			sparse(t, dir, "model.onnx", 3*gb)
			return filepath.Join(dir, "model.onnx")
		}, `more than protobuf's 2 GiB limit`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := tt.build(t, dir)
			for _, load := range []struct {
				name string
				f    func(string) error
			}{
				{"Load", func(p string) error { _, err := Load(p); return err }},
				{"CheckFile", func(p string) error { _, err := CheckFile(p); return err }},
				{"DataFiles", func(p string) error { _, err := DataFiles(p); return err }},
			} {
				if strings.HasPrefix(tt.name, "dims") || strings.HasPrefix(tt.name, "negative") || strings.HasPrefix(tt.name, "int64") || strings.HasPrefix(tt.name, "undefined") {
					if load.name != "Load" {
						continue // inline data: onnxruntime checks it itself
					}
				}
				done := make(chan error, 1)
				go func() { done <- load.f(path) }()
				var err error
				select {
				case err = <-done:
				case <-time.After(20 * time.Second):
					t.Fatalf("%s hangs", load.name)
				}
				if err == nil {
					t.Fatalf("%s accepted it; want %q", load.name, tt.want)
				}
				msg := err.Error()
				if !strings.Contains(msg, tt.want) || strings.Contains(msg, "\n") || !strings.Contains(msg, path) {
					t.Errorf("%s: error %q, want one line naming %s and containing %q", load.name, msg, path, tt.want)
				}
			}
		})
	}
}

// External data without a length takes exactly what the dims declare,
// however large the file.
func TestExternalReadsOnlyTheDims(t *testing.T) {
	dir := t.TempDir()
	sparse(t, dir, "w.data", 8<<30)
	f, err := os.OpenFile(filepath.Join(dir, "w.data"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{1, 2, 3, 4}, 0)
	f.Close()
	m, err := Load(hostileModel(t, dir, ext("w", Uint8, []int64{4}, "w.data", -1)))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Initializer("w").RawData; string(got) != "\x01\x02\x03\x04" {
		t.Fatalf("read %d bytes %v, want the 4 the dims declare", len(got), got[:min(len(got), 8)])
	}
}

// Save ties a model to its data file; a data file from another write is
// refused by Load and by CheckFile (the check before onnxruntime).
func TestDataFileOfAnotherWrite(t *testing.T) {
	dir := t.TempDir()
	a, b := tinyModel(), tinyModel()
	w, _ := Floats(b.Initializer("w"))
	w[7] = 42
	SetFloats(b.Initializer("w"), w)
	pa, pb := filepath.Join(dir, "a.onnx"), filepath.Join(dir, "b", "a.onnx")
	os.Mkdir(filepath.Dir(pb), 0o755)
	for _, s := range []struct {
		m    *Model
		path string
	}{{a, pa}, {b, pb}} {
		if err := s.m.SaveWith(s.path, &SaveOptions{ExternalData: true}); err != nil {
			t.Fatal(err)
		}
	}
	back, err := Load(pa)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := back.Metadata(recordKey); ok {
		t.Error("Load kept the data-file record in the model")
	}
	if v, _ := back.Metadata("qatc.test"); v != "value" {
		t.Error("other metadata lost")
	}
	if _, err := CheckFile(pa); err != nil {
		t.Fatal(err)
	}
	// b's data under a's model: same size, other bytes.
	data, _ := os.ReadFile(DataPath(pb))
	os.WriteFile(DataPath(pa), data, 0o644)
	for name, err := range map[string]error{"Load": func() error { _, err := Load(pa); return err }(), "CheckFile": func() error { _, err := CheckFile(pa); return err }()} {
		if err == nil || !strings.Contains(err.Error(), "does not belong to this model") || !strings.HasPrefix(err.Error(), pa) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Saved inline, the model carries no record.
	back.External = false
	if err := back.Save(pa); err != nil {
		t.Fatal(err)
	}
	again, err := Load(pa)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := again.Metadata(recordKey); ok || again.External {
		t.Error("an inline save kept the record or the external layout")
	}
}

// Concurrent saves of one output never leave one write's model with
// another's data: every state a reader can see loads.
func TestConcurrentSaves(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.onnx")
	done := make(chan error)
	for k := range 3 {
		go func() {
			m := tinyModel()
			w, _ := Floats(m.Initializer("w"))
			var err error
			for i := 0; i < 20 && err == nil; i++ {
				w[0] = float32(100*k + i)
				SetFloats(m.Initializer("w"), w)
				err = m.SaveWith(path, &SaveOptions{ExternalData: true})
			}
			done <- err
		}()
	}
	for finished := 0; finished < 3; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			finished++
		default:
			if _, err := os.Stat(path); err == nil {
				if _, err := Load(path); err != nil {
					t.Fatalf("a reader saw a broken pair: %v", err)
				}
			}
		}
	}
	if _, err := Load(path); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) > 0 {
		t.Errorf("temporaries left: %v", left)
	}
}

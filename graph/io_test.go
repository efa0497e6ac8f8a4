package graph

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/onnx"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// torchModelPaths returns the paths of every PyTorch-exported fixture.
func torchModelPaths(t testing.TB) []string {
	var paths []string
	for _, f := range fixture.Models() {
		paths = append(paths, fixture.Torch(t, f.File))
	}
	return paths
}

// assertSameModel fails unless a and b are the same protobuf, unknown
// fields included, and every initializer holds the same bytes.
func assertSameModel(t *testing.T, a, b *Model) {
	t.Helper()
	ai, bi := a.Proto.Graph.Initializer, b.Proto.Graph.Initializer
	if len(ai) != len(bi) {
		t.Fatalf("%d initializers, want %d", len(bi), len(ai))
	}
	for i := range ai {
		if ai[i].Name != bi[i].Name || !bytes.Equal(ai[i].RawData, bi[i].RawData) {
			t.Fatalf("initializer %d (%q): bytes differ after round trip", i, ai[i].Name)
		}
	}
	if !proto.Equal(a.Proto, b.Proto) {
		t.Fatalf("models differ after round trip")
	}
}

func TestRoundTripTorch(t *testing.T) {
	for _, path := range torchModelPaths(t) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			m, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Proto.Graph.Node) < 400 || len(m.Proto.Graph.Initializer) == 0 {
				t.Fatalf("loaded %d nodes, %d initializers", len(m.Proto.Graph.Node), len(m.Proto.Graph.Initializer))
			}
			dir := t.TempDir()
			out := filepath.Join(dir, "m.onnx")
			if err := m.Save(out); err != nil {
				t.Fatal(err)
			}
			m2, err := Load(out)
			if err != nil {
				t.Fatal(err)
			}
			assertSameModel(t, m, m2)

			// The original file's bytes decode to the same model.
			orig, _ := os.ReadFile(path)
			p := &onnx.ModelProto{}
			if err := proto.Unmarshal(orig, p); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(p, m2.Proto) {
				t.Fatal("saved model differs from the original file")
			}

			// With external data: the model file shrinks, tensors sit at
			// aligned offsets, and loading restores the same model.
			before := proto.Clone(m.Proto)
			ext := filepath.Join(dir, "ext.onnx")
			if err := m.SaveWith(ext, &SaveOptions{ExternalData: true}); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(before, m.Proto) {
				t.Fatal("SaveWith changed the in-memory model")
			}
			checkExternalLayout(t, ext, "ext.onnx.data", 1024)
			m3, err := Load(ext)
			if err != nil {
				t.Fatal(err)
			}
			assertSameModel(t, m, m3)
			// And back to a single file.
			if err := m3.Save(filepath.Join(dir, "back.onnx")); err != nil {
				t.Fatal(err)
			}
			m4, err := Load(filepath.Join(dir, "back.onnx"))
			if err != nil {
				t.Fatal(err)
			}
			assertSameModel(t, m, m4)
			leftovers, _ := filepath.Glob(filepath.Join(dir, ".*tmp*"))
			if len(leftovers) > 0 {
				t.Fatalf("temporary files left: %v", leftovers)
			}
		})
	}
}

// checkExternalLayout reads the saved protobuf itself and checks that the
// tensors of at least threshold bytes are external, in file location, at
// aligned offsets, and that the small ones are inline.
func checkExternalLayout(t *testing.T, path, location string, threshold int64) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := &onnx.ModelProto{}
	if err := proto.Unmarshal(data, p); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(filepath.Dir(path), location))
	if err != nil {
		t.Fatal(err)
	}
	external := 0
	for _, tp := range p.Graph.Initializer {
		n, _ := dataBytes(tp)
		if n < threshold {
			if HasExternalData(tp) {
				t.Fatalf("%q (%d bytes) is external", tp.Name, n)
			}
			continue
		}
		if !HasExternalData(tp) || tp.RawData != nil {
			t.Fatalf("%q (%d bytes) is not external", tp.Name, n)
		}
		kv := map[string]string{}
		for _, e := range tp.ExternalData {
			kv[e.Key] = e.Value
		}
		if kv["location"] != location {
			t.Fatalf("%q: location %q", tp.Name, kv["location"])
		}
		var off int64
		for _, c := range kv["offset"] {
			off = off*10 + int64(c-'0')
		}
		if off%dataAlign != 0 || off+n > st.Size() {
			t.Fatalf("%q: offset %d (length %d) in a %d-byte file", tp.Name, off, n, st.Size())
		}
		external++
	}
	if external == 0 {
		t.Fatal("no tensor went to the external file")
	}
	if int64(len(data)) > st.Size()/4 {
		t.Fatalf("model file is %d bytes next to %d bytes of data", len(data), st.Size())
	}
}

func TestSaveAutoExternal(t *testing.T) {
	m := tinyModel()
	defer func(v int64) { inlineLimit = v }(inlineLimit)
	inlineLimit = 1000 // stands in for protobuf's 2 GiB
	dir := t.TempDir()
	path := filepath.Join(dir, "auto.onnx")
	if err := m.Save(path); err != nil {
		t.Fatal(err)
	}
	checkExternalLayout(t, path, "auto.onnx.data", 1024)
	m2, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	assertSameModel(t, m, m2)
}

func TestSaveBadLocation(t *testing.T) {
	m := tinyModel()
	dir := t.TempDir()
	for _, loc := range []string{"../x.data", "/tmp/x.data", "sub/x.data", "m.onnx"} {
		err := m.SaveWith(filepath.Join(dir, "m.onnx"), &SaveOptions{ExternalData: true, Location: loc})
		if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), loc) {
			t.Errorf("location %q: error %v", loc, err)
		}
	}
	missing := filepath.Join(dir, "no-such-dir", "m.onnx")
	for _, opts := range []*SaveOptions{nil, {ExternalData: true}} {
		if err := m.SaveWith(missing, opts); err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("save into a missing directory: %v", err)
		}
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("failed saves left files: %v", left)
	}
}

// tinyModel has one 4 KiB weight, one small bias and a Gemm.
func tinyModel() *Model {
	m := New("tiny", 17)
	w := make([]float32, 32*32)
	for i := range w {
		w[i] = float32(i) * 0.5
	}
	m.AddInput("x", Float, []int64{-1, 32}, "batch")
	m.AddInitializer(FloatTensor("w", []int64{32, 32}, w))
	m.AddInitializer(FloatTensor("b", []int64{32}, w[:32]))
	m.Op("Gemm", "gemm", []string{"x", "w", "b"}, []string{"y"}, AttrInt("transB", 1))
	m.AddOutput("y", Float, []int64{-1, 32}, "batch")
	m.SetMetadata("qatc.test", "value")
	return m
}

func TestUnknownFieldsSurvive(t *testing.T) {
	m := tinyModel()
	var extra []byte
	extra = protowire.AppendTag(extra, 999, protowire.BytesType)
	extra = protowire.AppendBytes(extra, []byte("future field"))
	node := m.Proto.Graph.Node[0]
	node.ProtoReflect().SetUnknown(extra)
	w := m.Initializer("w")
	w.ProtoReflect().SetUnknown(extra)
	m.Proto.ProtoReflect().SetUnknown(extra)

	dir := t.TempDir()
	for _, opts := range []*SaveOptions{nil, {ExternalData: true}} {
		path := filepath.Join(dir, "u.onnx")
		if err := m.SaveWith(path, opts); err != nil {
			t.Fatal(err)
		}
		m2, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		assertSameModel(t, m, m2)
		if got := m2.Proto.Graph.Node[0].ProtoReflect().GetUnknown(); !bytes.Equal(got, extra) {
			t.Fatalf("node's unknown field: %x, want %x", got, extra)
		}
		if got := m2.Initializer("w").ProtoReflect().GetUnknown(); !bytes.Equal(got, extra) {
			t.Fatalf("tensor's unknown field: %x, want %x", got, extra)
		}
		if v, ok := m2.Metadata("qatc.test"); !ok || v != "value" {
			t.Fatalf("metadata: %q %v", v, ok)
		}
	}
}

// externalModel writes a model whose weight "w" lives at location with
// the given offset and length, and returns its path.
func externalModel(t *testing.T, dir, location string, offset, length int64) string {
	t.Helper()
	w := FloatTensor("w", []int64{4, 4}, make([]float32, 16))
	w.RawData = nil
	w.DataLocation = onnx.TensorProto_EXTERNAL
	w.ExternalData = []*onnx.StringStringEntryProto{
		{Key: "location", Value: location},
		{Key: "offset", Value: itoa(offset)},
		{Key: "length", Value: itoa(length)},
	}
	m := New("ext", 17)
	m.AddInitializer(w)
	m.Op("Identity", "id", []string{"w"}, []string{"y"})
	m.AddOutput("y", Float, []int64{4, 4})
	return writeUnchecked(t, dir, m)
}

func itoa(v int64) string {
	if v == 0 {
		return "0"
	}
	var b []byte
	for ; v > 0; v /= 10 {
		b = append([]byte{byte('0' + v%10)}, b...)
	}
	return string(b)
}

func TestExternalDataErrors(t *testing.T) {
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret.data")
	if err := os.WriteFile(secret, make([]byte, 64), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		location string
		setup    func(dir string)
		offset   int64
		want     string
	}{
		{"ok", "w.data", func(dir string) { os.WriteFile(filepath.Join(dir, "w.data"), make([]byte, 64), 0o644) }, 0, ""},
		{"ok-offset", "w.data", func(dir string) { os.WriteFile(filepath.Join(dir, "w.data"), make([]byte, 128), 0o644) }, 64, ""},
		{"absolute", secret, nil, 0, `tensor "w": external-data location "` + secret + `" resolves outside the model's directory`},
		{"dotdot", "../x", nil, 0, `tensor "w": external-data location "../x" resolves outside the model's directory`},
		{"dotdot-inside", "sub/../../x", nil, 0, `resolves outside the model's directory`},
		{"symlink", "link.data", func(dir string) { os.Symlink(secret, filepath.Join(dir, "link.data")) }, 0, `tensor "w": external-data location "link.data" resolves outside the model's directory`},
		{"symlinked-dir", "sub/secret.data", func(dir string) { os.Symlink(outside, filepath.Join(dir, "sub")) }, 0, `resolves outside the model's directory`},
		{"symlink-inside", "alias.data", func(dir string) {
			os.WriteFile(filepath.Join(dir, "w.data"), make([]byte, 64), 0o644)
			os.Symlink("w.data", filepath.Join(dir, "alias.data"))
		}, 0, ""},
		{"missing", "gone.data", nil, 0, `tensor "w": external-data file`},
		{"truncated", "w.data", func(dir string) { os.WriteFile(filepath.Join(dir, "w.data"), make([]byte, 40), 0o644) }, 0, `tensor "w": external-data file "w.data" is truncated`},
		{"truncated-offset", "w.data", func(dir string) { os.WriteFile(filepath.Join(dir, "w.data"), make([]byte, 64), 0o644) }, 32, `is truncated`},
		{"directory", "d", func(dir string) { os.Mkdir(filepath.Join(dir, "d"), 0o755) }, 0, `is a directory, not a regular file`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.setup != nil {
				tt.setup(dir)
			}
			path := externalModel(t, dir, tt.location, tt.offset, 64)
			m, err := Load(path)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				w := m.Initializer("w")
				if HasExternalData(w) || len(w.RawData) != 64 || w.ExternalData != nil {
					t.Fatalf("tensor not loaded inline: %v", w)
				}
				return
			}
			if err == nil {
				t.Fatalf("loaded; want error %q", tt.want)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) || strings.Contains(msg, "\n") || !strings.HasPrefix(msg, path) {
				t.Fatalf("error %q, want one line starting with the path and containing %q", msg, tt.want)
			}
			if tt.name == "missing" && !strings.Contains(msg, "gone.data") {
				t.Fatalf("error %q does not name the file", msg)
			}
		})
	}
}

func TestExternalDataLengthMismatch(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "w.data"), make([]byte, 128), 0o644)
	path := externalModel(t, dir, "w.data", 0, 60)
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), `tensor "w": external data in "w.data" is 60 bytes, but float32[4 4] needs 64`) {
		t.Fatalf("error %v", err)
	}
}

func TestParseExternalWithoutDir(t *testing.T) {
	dir := t.TempDir()
	path := externalModel(t, dir, "w.data", 0, 64)
	data, _ := os.ReadFile(path)
	_, err := Parse(data, "")
	if err == nil || !strings.Contains(err.Error(), "not read from a file") {
		t.Fatalf("error %v", err)
	}
}

func TestBadFiles(t *testing.T) {
	good, err := tinyModel().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(1))
	random := make([]byte, 4096)
	rng.Read(random)
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "empty file, not an ONNX model"},
		{"random", random, "not a valid ONNX model"},
		{"truncated", good[:len(good)/2], "not a valid ONNX model"},
		{"text", []byte("hello, this is not a model\n"), "not"},
		{"no-graph", []byte{0x08, 0x07}, "not an ONNX model: it has no graph"},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name+".onnx")
			os.WriteFile(path, tt.data, 0o644)
			_, err := Load(path)
			if err == nil {
				t.Fatal("loaded")
			}
			if !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q, want one line naming the file and containing %q", err, tt.want)
			}
		})
	}
	if _, err := Load(filepath.Join(dir, "nonexistent.onnx")); err == nil || !strings.Contains(err.Error(), "nonexistent.onnx") {
		t.Fatalf("missing file: %v", err)
	}
}

// FuzzParse feeds mutated models to the parser and every analysis, with
// their external data resolved in a directory of hostile neighbours: a
// data file, a FIFO, a 1 GiB sparse file, a subdirectory and a symbolic
// link out of the directory. Run it for ten minutes with
//
//	nice -n 10 go test ./graph -run '^$' -fuzz FuzzParse -fuzztime 10m -timeout 20m
func FuzzParse(f *testing.F) {
	dir := fuzzDir(f)
	good, err := tinyModel().Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/3])
	f.Add([]byte{})
	f.Add([]byte{0x3a, 0x00})
	m := New("shape", 13)
	m.AddInput("x", Float, []int64{-1, 4, 8}, "batch")
	m.AddInitializer(Int64Tensor("s", []int64{3}, []int64{0, -1, 2}))
	m.Op("Shape", "", []string{"x"}, []string{"sh"})
	m.Op("Reshape", "", []string{"x", "s"}, []string{"r"})
	m.Op("Transpose", "", []string{"r"}, []string{"t"}, AttrInts("perm", 2, 0, 1))
	m.AddOutput("t", Float, nil)
	shape, _ := m.Marshal()
	f.Add(shape)
	for _, loc := range []string{"w.data", "fifo", "sparse.data", "sub", "out/x", "../w.data"} {
		for _, dt := range []DataType{Float, String, Int4} {
			for _, length := range []int64{-1, 64, 1 << 40} {
				m := New("ext", 17)
				m.AddInitializer(ext("w", dt, []int64{4, 4}, loc, length))
				m.Op("Identity", "id", []string{"w"}, []string{"y"})
				m.AddOutput("y", dt, []int64{4, 4})
				data, _ := m.Marshal()
				f.Add(data)
			}
		}
	}
	var b bytes.Buffer
	if err := tinyModel().SaveWith(filepath.Join(dir, "saved.onnx"), &SaveOptions{ExternalData: true, Threshold: 16}); err == nil {
		data, _ := os.ReadFile(filepath.Join(dir, "saved.onnx"))
		b.Write(data)
		f.Add(b.Bytes())
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkParse(t, data, dir) })
}

// fuzzDir makes the directory of hostile neighbours FuzzParse resolves
// external data in.
func fuzzDir(f *testing.F) string {
	dir := f.TempDir()
	ramp := make([]byte, 4096)
	for i := range ramp {
		ramp[i] = byte(i)
	}
	if err := os.WriteFile(filepath.Join(dir, "w.data"), ramp, 0o644); err != nil {
		f.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		f.Fatal(err)
	}
	sf, err := os.Create(filepath.Join(dir, "sparse.data"))
	if err != nil {
		f.Fatal(err)
	}
	sf.Truncate(1 << 30)
	sf.Close()
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	os.Symlink(f.TempDir(), filepath.Join(dir, "out"))
	return dir
}

// checkParse parses data and, when it is a model, runs every analysis
// over it: none may panic, and every error must be one line.
func checkParse(t *testing.T, data []byte, dir string) {
	m, err := Parse(data, dir)
	if err != nil {
		if strings.Contains(err.Error(), "\n") {
			t.Fatalf("multi-line error %q", err)
		}
		return
	}
	for _, err := range m.Problems() {
		if strings.Contains(err.Error(), "\n") {
			t.Fatalf("multi-line problem %q", err)
		}
	}
	if _, err := m.InferShapes(); err != nil && strings.Contains(err.Error(), "\n") {
		t.Fatalf("multi-line error %q", err)
	}
	m.KnownInts()
	m.ValueNames()
	m.TopoSort()
	m.Marshal()
}

// TestParseMutations is a deterministic complement to FuzzParse that runs
// in every test run: a few thousand random edits of a valid model.
func TestParseMutations(t *testing.T) {
	good, err := tinyModel().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(2))
	for it := 0; it < 20000; it++ {
		d := append([]byte(nil), good...)
		for k := 0; k < 1+rng.Intn(4); k++ {
			i := rng.Intn(len(d))
			switch rng.Intn(3) {
			case 0:
				d[i] = byte(rng.Intn(256))
			case 1:
				d = append(d[:i], d[i+1:]...)
			case 2:
				d = append(d[:i], append([]byte{byte(rng.Intn(256))}, d[i:]...)...)
			}
		}
		checkParse(t, d, "")
	}
}

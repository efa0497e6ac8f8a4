package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/ort"
	"github.com/urfave/cli/v2"
)

// Hostile and careless input, one test per way it went wrong (issue 18).
// Every refusal is checked the same way: one line on stderr naming the
// file, flag or line, the right exit code, no stack trace, and the
// directory exactly as it was (inputs byte-identical, no output, no
// temporary file).

// snapshot records every entry of a directory tree: files by content,
// symbolic links by target, FIFOs and directories by kind. Nothing is
// opened but regular files.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	s := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(path)
			s[rel] = "link " + target
		case d.IsDir():
			s[rel] = "dir"
		case d.Type().IsRegular():
			st, _ := os.Stat(path)
			if st.Size() > 64<<20 {
				s[rel] = fmt.Sprintf("large %d", st.Size()) // sparse test files
				return nil
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			s[rel] = hex.EncodeToString(sum[:])
		default:
			s[rel] = d.Type().String()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// unchanged fails when dir differs from before.
func unchanged(t *testing.T, dir string, before map[string]string) {
	t.Helper()
	after := snapshot(t, dir)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s changed or vanished", k)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			t.Errorf("%s left behind", k)
		}
	}
}

// refused runs qatc in-process and checks a refusal: exit code, one line
// mentioning mention, no stack trace, dir unchanged.
func refused(t *testing.T, dir string, code int, mention string, args ...string) {
	t.Helper()
	before := snapshot(t, dir)
	got, _, errOut := qatc(t, args...)
	wantError(t, got, errOut, code, mention)
	if strings.Contains(errOut, "goroutine") || strings.Contains(errOut, "internal error") {
		t.Errorf("stack trace or internal error: %s", errOut)
	}
	unchanged(t, dir, before)
}

// tinyFiles writes the tiny test model (inline and with external data)
// and a copy task to dir.
func tinyFiles(t *testing.T, dir string) (model, ext, src, tgt string) {
	t.Helper()
	model, src, tgt = tinySetup(t, dir)
	m, err := graph.Load(model)
	if err != nil {
		t.Fatal(err)
	}
	ext = filepath.Join(dir, "good_ext.onnx")
	if err := m.SaveWith(ext, &graph.SaveOptions{ExternalData: true, Location: "good_ext.data"}); err != nil {
		t.Fatal(err)
	}
	return model, ext, src, tgt
}

// unwritableDir makes a directory nobody can create files in: mode 0555,
// and for root, whom modes do not stop, the immutable attribute.
func unwritableDir(t *testing.T, parent string) string {
	t.Helper()
	dir := filepath.Join(parent, "readonly")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o555)
	t.Cleanup(func() { setImmutable(dir, false); os.Chmod(dir, 0o755) })
	if syscall.Access(dir, 2) == nil {
		if err := setImmutable(dir, true); err != nil {
			t.Fatalf("cannot make %s unwritable for this user: %v", dir, err)
		}
	}
	if f, err := os.Create(filepath.Join(dir, "probe")); err == nil {
		f.Close()
		t.Fatalf("%s is still writable", dir)
	}
	return dir
}

// setImmutable sets or clears a directory's immutable attribute
// (FS_IOC_SETFLAGS with FS_IMMUTABLE_FL).
func setImmutable(path string, on bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	const getFlags, setFlags, immutable = 0x80086601, 0x40086602, 0x10
	var flags int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), getFlags, uintptr(unsafe.Pointer(&flags))); e != 0 {
		return e
	}
	if on {
		flags |= immutable
	} else {
		flags &^= immutable
	}
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), setFlags, uintptr(unsafe.Pointer(&flags))); e != 0 {
		return e
	}
	return nil
}

// Items 1 and 2: no output, nor the data file written beside it, may be
// one of the inputs' files, however the path is spelled.
func TestOutputIsAnInput(t *testing.T) {
	dir := t.TempDir()
	model, ext, src, tgt := tinyFiles(t, dir)
	qat := filepath.Join(dir, "qat.onnx")
	mustQatc(t, "insert", model, "-o", qat)
	link := filepath.Join(t.TempDir(), "linkdir")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	hard := filepath.Join(dir, "hard.onnx")
	if err := os.Link(model, hard); err != nil {
		t.Fatal(err)
	}
	via := func(p string) string { return filepath.Join(link, filepath.Base(p)) }
	for _, tc := range []struct {
		name    string
		args    []string
		mention string
	}{
		{"output's data file is the input's", []string{"insert", ext, "-o", filepath.Join(dir, "good_ext")}, "good_ext.data, the external data of the input"},
		{"output is the input's data file", []string{"insert", ext, "-o", filepath.Join(dir, "good_ext.data")}, "the external data of the input"},
		{"same path", []string{"insert", ext, "-o", ext}, "--in-place"},
		{"through a symlinked directory", []string{"insert", model, "-o", via(model)}, "is the input model"},
		{"export through a symlinked directory", []string{"export", qat, "-o", via(qat)}, "is the input model"},
		{"finetune through a symlinked directory", []string{"finetune", qat, "-o", via(qat), "--src", src, "--tgt", tgt}, "is the input model"},
		{"a hard link", []string{"insert", model, "-o", hard}, "is the input model"},
		{"translations over the source", []string{"translate", model, "--src", src, "-o", via(src)}, "is the input"},
		{"incremental export over its input", []string{"export", qat, "--incremental", "--format", "fp32", "-o", dir}, "holds the input"},
		{"the data file as output", []string{"train", model, "-o", filepath.Join(dir, "x.onnx"), "--src", src, "--tgt", tgt, "--save-training-graph", src}, "is the input"},
		{"two outputs one file", []string{"train", model, "-o", filepath.Join(dir, "x.onnx"), "--src", src, "--tgt", tgt, "--save-training-graph", via(filepath.Join(dir, "x.onnx"))}, "are the same file"},
	} {
		t.Run(tc.name, func(t *testing.T) { refused(t, dir, 2, tc.mention, tc.args...) })
	}
	// --in-place replaces the model and its data file together.
	if code, _, errOut := qatc(t, "insert", ext, "-o", ext, "--in-place"); code != 0 {
		t.Fatalf("--in-place: %s", errOut)
	}
	if _, err := graph.Load(ext); err != nil {
		t.Fatalf("after --in-place: %v", err)
	}
}

// Item 6: an output that cannot be written is refused before training.
func TestUnwritableOutput(t *testing.T) {
	dir := t.TempDir()
	model, _, src, tgt := tinyFiles(t, dir)
	ro := unwritableDir(t, dir)
	existing := filepath.Join(dir, "existing")
	os.Mkdir(existing, 0o755)
	args := []string{model, "--src", src, "--tgt", tgt, "--steps", "1000000"}
	for _, tc := range []struct {
		name    string
		extra   []string
		code    int
		mention string
	}{
		{"directory not writable", []string{"-o", filepath.Join(ro, "x.onnx")}, 1, "cannot write in directory " + ro},
		{"output is a directory", []string{"-o", existing}, 2, existing + " is a directory"},
		{"directory missing", []string{"-o", filepath.Join(dir, "nope", "x.onnx")}, 1, "does not exist"},
		{"checkpoint directory is a file", []string{"-o", filepath.Join(dir, "x.onnx"), "--checkpoint-dir", src}, 2, "--checkpoint-dir " + src + " is a file"},
		{"checkpoint directory not writable", []string{"-o", filepath.Join(dir, "x.onnx"), "--checkpoint-dir", filepath.Join(ro, "ckpt")}, 1, "--checkpoint-dir"},
		{"training graph in an unwritable directory", []string{"-o", filepath.Join(dir, "x.onnx"), "--save-training-graph", filepath.Join(ro, "g.onnx")}, 1, "--save-training-graph"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			refused(t, dir, tc.code, tc.mention, append(append([]string{"train"}, args...), tc.extra...)...)
			if d := time.Since(start); d > 20*time.Second {
				t.Errorf("refused after %v: it trained first", d)
			}
		})
	}
}

// hostileFile is a model file built to hurt, with what inspect must do.
type hostileFile struct {
	name  string
	build func(t *testing.T, dir string) string
	code  int
	want  string
}

// tensorModel writes a one-initializer model to dir/model.onnx.
func tensorModel(t *testing.T, dir string, tp *onnx.TensorProto) string {
	t.Helper()
	m := graph.New("hostile", 17)
	m.AddInitializer(tp)
	m.Op("Identity", "id", []string{tp.Name}, []string{"y"})
	m.AddOutput("y", graph.DataType(tp.DataType), nil)
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

// extTensor is a tensor whose data is external, at offset 0 of loc.
func extTensor(dt graph.DataType, dims []int64, loc string) *onnx.TensorProto {
	return &onnx.TensorProto{Name: "w", DataType: int32(dt), Dims: dims, DataLocation: onnx.TensorProto_EXTERNAL,
		ExternalData: []*onnx.StringStringEntryProto{{Key: "location", Value: loc}, {Key: "offset", Value: "0"}}}
}

// sparseFile makes dir/name a file of size bytes with no data.
func sparseFile(t *testing.T, dir, name string, size int64) {
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

func hostileFiles() []hostileFile {
	const gb = 1 << 30
	return []hostileFile{
		{"FIFO as external data", func(t *testing.T, dir string) string {
			syscall.Mkfifo(filepath.Join(dir, "w.data"), 0o644)
			return tensorModel(t, dir, extTensor(graph.Float, []int64{4}, "w.data"))
		}, 1, "is a FIFO (named pipe), not a regular file"},
		{"string tensor in a 64 GB sparse file", func(t *testing.T, dir string) string {
			sparseFile(t, dir, "w.data", 64*gb)
			return tensorModel(t, dir, extTensor(graph.String, []int64{1}, "w.data"))
		}, 1, "a string tensor cannot have external data"},
		{"8 GB of dims in an 8 GB sparse file", func(t *testing.T, dir string) string {
			sparseFile(t, dir, "w.data", 8*gb)
			return tensorModel(t, dir, extTensor(graph.Float, []int64{1 << 30, 2}, "w.data"))
		}, 1, "were never written (a sparse file)"},
		{"4 floats from an 8 GB sparse file", func(t *testing.T, dir string) string {
			sparseFile(t, dir, "w.data", 8*gb)
			return tensorModel(t, dir, extTensor(graph.Float, []int64{4}, "w.data"))
		}, 0, ""},
		{"dims [1e9, 1e9] over 16 bytes", func(t *testing.T, dir string) string {
			return tensorModel(t, dir, &onnx.TensorProto{Name: "w", DataType: int32(graph.Float), Dims: []int64{1e9, 1e9}, RawData: make([]byte, 16)})
		}, 1, "more elements than any file holds"},
		{"negative dims", func(t *testing.T, dir string) string {
			return tensorModel(t, dir, &onnx.TensorProto{Name: "w", DataType: int32(graph.Float), Dims: []int64{-2, -2}, RawData: make([]byte, 16)})
		}, 1, "negative dimension"},
		{"model is /dev/zero", func(t *testing.T, dir string) string {
			os.Symlink("/dev/zero", filepath.Join(dir, "zero.onnx"))
			return filepath.Join(dir, "zero.onnx")
		}, 1, "is a character device, not a regular file"},
		{"model is a FIFO", func(t *testing.T, dir string) string {
			syscall.Mkfifo(filepath.Join(dir, "fifo.onnx"), 0o644)
			return filepath.Join(dir, "fifo.onnx")
		}, 1, "is a FIFO (named pipe), not a regular file"},
		{"model is a 1.5 GB sparse file", func(t *testing.T, dir string) string {
			sparseFile(t, dir, "sparse.onnx", 3*gb/2)
			return filepath.Join(dir, "sparse.onnx")
		}, 1, "not a valid ONNX model"},
		{"model is a 3 GB sparse file", func(t *testing.T, dir string) string {
			sparseFile(t, dir, "huge.onnx", 3*gb)
			return filepath.Join(dir, "huge.onnx")
		}, 1, "more than protobuf's 2 GiB limit"},
	}
}

// Items 3, 4, 5 and 12, and the memory bound: inspect on every
// hostile file, as a process, ends quickly with one line and a peak RSS
// of at most 200 MB.
func TestHostileFilesInspect(t *testing.T) {
	for _, h := range hostileFiles() {
		t.Run(h.name, func(t *testing.T) {
			dir := t.TempDir()
			path := h.build(t, dir)
			before := snapshot(t, dir)
			cmd := qatcProcess("inspect", path)
			peak := filepath.Join(t.TempDir(), "peak")
			cmd.Env = append(cmd.Env, peakEnv+"="+peak)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatal("inspect hangs")
			}
			code := cmd.ProcessState.ExitCode()
			if h.code == 0 {
				if code != 0 {
					t.Fatalf("exit %d: %s", code, stderr.String())
				}
			} else {
				wantError(t, code, stderr.String(), h.code, h.want)
			}
			rss := processPeak(t, peak) // KiB
			t.Logf("peak RSS %.1f MB", float64(rss)/1024)
			if rss > 200*1000 {
				t.Errorf("peak RSS %d KiB, over 200 MB", rss)
			}
			unchanged(t, dir, before)
		})
	}
}

// Items 4, 5 and 12 through insert: the FIFO does not hang it, the
// declared dims are not allocated.
func TestHostileFilesInsert(t *testing.T) {
	for _, h := range hostileFiles() {
		if h.code == 0 || !strings.Contains(h.name, "FIFO") && !strings.Contains(h.name, "dims") {
			continue
		}
		t.Run(h.name, func(t *testing.T) {
			dir := t.TempDir()
			path := h.build(t, dir)
			refused(t, dir, 1, h.want, "insert", path, "-o", filepath.Join(dir, "out.onnx"), "--per-channel")
		})
	}
}

// Items 5 and 11: the commands that hand a file to onnxruntime check it
// first, so onnxruntime neither blocks on a FIFO nor speaks for the file.
func TestHostileFilesOnnxruntime(t *testing.T) {
	for _, h := range hostileFiles() {
		if !strings.Contains(h.name, "FIFO as") && !strings.Contains(h.name, "64 GB") {
			continue
		}
		t.Run(h.name, func(t *testing.T) {
			dir := t.TempDir()
			path := h.build(t, dir)
			refused(t, dir, 1, h.want, "compare", path, path)
			refused(t, dir, 1, h.want, "run", path)
			refused(t, dir, 1, h.want, "bench", path)
		})
	}
}

// Item 3: sizes asked for by flags, or fixed by the model, that no
// machine holds are refused before allocating, naming the flags.
func TestSizeLimits(t *testing.T) {
	dir := t.TempDir()
	model, _, _, _ := tinyFiles(t, dir)
	qat := filepath.Join(dir, "qat.onnx")
	mustQatc(t, "insert", model, "-o", qat)
	fixed := graph.New("fixed", 17)
	fixed.AddInput("x", graph.Float, []int64{1e9, 4})
	fixed.Op("Relu", "relu", []string{"x"}, []string{"y"})
	fixed.AddOutput("y", graph.Float, []int64{1e9, 4})
	fixedPath := filepath.Join(dir, "fixed.onnx")
	if err := fixed.Save(fixedPath); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		code    int
		mention string
		args    []string
	}{
		{"compare", 2, "lower --batch or --len", []string{"compare", model, model, "--batch", "1000000", "--len", "1000000"}},
		{"bench", 2, "lower --batch or --src-len", []string{"bench", model, "--batch", "1000000", "--src-len", "1000000"}},
		{"export", 2, "lower --batch or --len", []string{"export", qat, "-o", filepath.Join(dir, "x.onnx"), "--batch", "1000000", "--len", "1000000"}},
		{"a dim fixed at 1e9", 1, `dim 0 of "x" (fixed by the model)`, []string{"compare", fixedPath, fixedPath}},
		{"train batch tokens", 2, "lower --batch-tokens", []string{"train", model, "-o", filepath.Join(dir, "x.onnx"), "--src", model, "--tgt", model, "--batch-tokens", "2000000000000"}},
	} {
		t.Run(tc.name, func(t *testing.T) { refused(t, dir, tc.code, tc.mention, tc.args...) })
	}
}

// temporaries lists qatc's temporary files in dir.
func temporaries(t *testing.T, dir string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, ".*.qatc-tmp.*"))
	return m
}

// Item 7: SIGINT or SIGTERM while insert writes removes its temporaries;
// after a SIGKILL, the next write into the directory removes them.
func TestSignalDuringWrite(t *testing.T) {
	dir := t.TempDir()
	_, ext, _, _ := tinyFiles(t, dir)
	out := filepath.Join(dir, "out.onnx")
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			before := snapshot(t, dir)
			hold := filepath.Join(t.TempDir(), "holding")
			cmd := qatcProcess("insert", ext, "-o", out)
			cmd.Env = append(cmd.Env, "QATC_TEST_HOLD_COMMIT="+hold)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
				if _, err := os.Stat(hold); err == nil {
					break
				}
				if time.Now().After(deadline) {
					cmd.Process.Kill()
					t.Fatal("insert never reached its write")
				}
			}
			if n := len(temporaries(t, dir)); n != 2 {
				t.Fatalf("%d temporaries while writing, want the model's and the data file's", n)
			}
			cmd.Process.Signal(sig)
			err := cmd.Wait()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != sig {
				t.Fatalf("insert ended with %v, want death by %v", err, sig)
			}
			if sig == syscall.SIGKILL {
				if n := len(temporaries(t, dir)); n != 2 {
					t.Fatalf("%d temporaries after SIGKILL, want 2", n)
				}
				// The next write into the directory removes them.
				other := filepath.Join(dir, "other.onnx")
				mustQatc(t, "insert", ext, "-o", other)
				os.Remove(other)
				os.Remove(graph.DataPath(other))
			}
			unchanged(t, dir, before)
		})
	}
}

// Item 8: two inserts writing one output at once never leave one run's
// model with the other's data; a pair mixed by hand is refused.
func TestConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	_, ext, _, _ := tinyFiles(t, dir)
	// A second model with other weights, so that the two writers' data
	// files differ.
	m, err := graph.Load(ext)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range m.InitializerNames() {
		if w := m.Initializer(name); len(w.RawData) >= 1024 {
			w.RawData[0] ^= 0x40 // a data-file tensor
		}
	}
	ext2 := filepath.Join(dir, "other_ext.onnx")
	if err := m.Save(ext2); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.onnx")
	for trial := range 5 {
		var cmds []*exec.Cmd
		var holds []string
		for i, in := range []string{ext, ext2} {
			hold := filepath.Join(t.TempDir(), fmt.Sprint("hold", i))
			cmd := qatcProcess("insert", in, "-o", out)
			cmd.Env = append(cmd.Env, "QATC_TEST_HOLD_COMMIT="+hold)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			cmds, holds = append(cmds, cmd), append(holds, hold)
		}
		// Both hold with all their files written; release them together.
		for _, h := range holds {
			for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
				if _, err := os.Stat(h); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("a writer never reached its write")
				}
			}
		}
		for _, h := range holds {
			os.Remove(h)
		}
		for _, c := range cmds {
			if err := c.Wait(); err != nil {
				t.Fatalf("trial %d: %v", trial, err)
			}
		}
		if code, _, errOut := qatc(t, "inspect", out); code != 0 {
			t.Fatalf("trial %d: the pair left by two writers does not load: %s", trial, errOut)
		}
	}
	if left := temporaries(t, dir); len(left) > 0 {
		t.Errorf("temporaries left: %v", left)
	}
	// One run's model beside another run's data file.
	other := filepath.Join(dir, "other.onnx")
	mustQatc(t, "insert", ext2, "-o", other)
	mustQatc(t, "insert", ext, "-o", out)
	data, err := os.ReadFile(graph.DataPath(other))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(graph.DataPath(out), data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"inspect", "compare"} {
		args := []string{cmd, out}
		if cmd == "compare" {
			args = append(args, ext)
		}
		refused(t, dir, 1, "does not belong to this model", args...)
	}
}

// Item 9: a missing required flag is named as such.
func TestMissingRequiredFlag(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args    []string
		mention string
	}{
		{[]string{"insert", "m.onnx"}, "insert needs -o/--output"},
		{[]string{"export", "m.onnx"}, "export needs -o/--output"},
		{[]string{"train", "m.onnx", "-o", "x.onnx", "--tgt", "t"}, "train needs --src"},
		{[]string{"finetune", "m.onnx", "-o", "x.onnx", "--src", "s"}, "finetune needs --tgt"},
		{[]string{"eval", "m.onnx", "--ref", "r"}, "eval needs --src"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) { refused(t, dir, 2, tc.mention, tc.args...) })
	}
}

// Item 10: every numeric flag is checked against its range, by name, as a
// usage error.
func TestFlagRanges(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args    []string
		mention string
	}{
		{[]string{"finetune", "m.onnx", "-o", "x", "--src", "s", "--tgt", "t", "--lr", "NaN"}, "--lr NaN: must be a finite number greater than 0"},
		{[]string{"train", "m.onnx", "-o", "x", "--src", "s", "--tgt", "t", "--lr", "Inf"}, "--lr +Inf"},
		{[]string{"train", "m.onnx", "-o", "x", "--src", "s", "--tgt", "t", "--steps", "-1"}, "--steps -1: must be an integer of at least 0"},
		{[]string{"train", "m.onnx", "-o", "x", "--src", "s", "--tgt", "t", "--keep-checkpoints", "-1"}, "--keep-checkpoints -1"},
		{[]string{"train", "m.onnx", "-o", "x", "--src", "s", "--tgt", "t", "--checkpoint-every", "-2"}, "--checkpoint-every -2"},
		{[]string{"train", "m.onnx", "-o", "x", "--src", "s", "--tgt", "t", "--max-len", "-1"}, "--max-len -1"},
		{[]string{"train", "m.onnx", "-o", "x", "--src", "s", "--tgt", "t", "--threads", "-1"}, "--threads -1: must be an integer of at least 0"},
		{[]string{"train", "m.onnx", "-o", "x", "--src", "s", "--tgt", "t", "--batch-tokens", "0"}, "--batch-tokens 0"},
		{[]string{"finetune", "m.onnx", "-o", "x", "--src", "s", "--tgt", "t", "--accumulate", "0"}, "--accumulate 0: must be an integer of at least 1"},
		{[]string{"finetune", "m.onnx", "-o", "x", "--src", "s", "--tgt", "t", "--label-smoothing", "1"}, "--label-smoothing 1: must be a finite number in [0, 1)"},
		{[]string{"eval", "m.onnx", "--src", "s", "--ref", "r", "--beam", "0"}, "--beam 0: must be an integer of at least 1"},
		{[]string{"eval", "m.onnx", "--src", "s", "--ref", "r", "--batch", "0"}, "--batch 0"},
		{[]string{"compare", "a.onnx", "b.onnx", "--batch", "-1"}, "--batch -1"},
		{[]string{"compare", "a.onnx", "b.onnx", "--len", "0"}, "--len 0"},
		{[]string{"compare", "a.onnx", "b.onnx", "--vocab", "3"}, "--vocab 3: must be 0 or an integer of at least 5"},
		{[]string{"insert", "m.onnx", "-o", "x", "--bits", "9"}, "--bits 9: must be an integer from 2 to 8"},
		{[]string{"insert", "m.onnx", "-o", "x", "--act-clip-max", "-1"}, "--act-clip-max -1"},
		{[]string{"insert", "m.onnx", "-o", "x", "--calib-percentile", "0"}, "--calib-percentile 0"},
		{[]string{"bench", "m.onnx", "--iters", "0"}, "--iters 0"},
	} {
		t.Run(strings.Join(tc.args[:1], " ")+" "+tc.mention, func(t *testing.T) { refused(t, dir, 2, tc.mention, tc.args...) })
	}
}

// Every numeric flag of every command has a range in flagRanges, so that
// a new flag cannot skip the check.
func TestEveryNumericFlagHasARange(t *testing.T) {
	for _, cmd := range commands() {
		for _, f := range cmd.Flags {
			switch f.(type) {
			case *cli.IntFlag, *cli.Int64Flag, *cli.Uint64Flag, *cli.Float64Flag, *cli.UintFlag:
				if _, ok := flagRanges[f.Names()[0]]; !ok {
					t.Errorf("qatc %s --%s has no range in flagRanges", cmd.Name, f.Names()[0])
				}
			}
		}
	}
}

// Item 11: data the model cannot read is named by file and line for
// every command that reads data, not left to onnxruntime.
func TestDataAgainstModel(t *testing.T) {
	dir := t.TempDir()
	model, _, _, _ := tinyFiles(t, dir)
	qat := filepath.Join(dir, "qat.onnx")
	mustQatc(t, "insert", model, "-o", qat)
	// The tiny model has 64 positions and 64 ids.
	long := strings.TrimSpace(strings.Repeat("5 ", 70))
	longSrc := writeFile(t, dir, "long.src", "5 6\n7 8\n"+long+"\n")
	short := writeFile(t, dir, "short.tgt", "5 6\n7 8\n9 10\n")
	beyond := writeFile(t, dir, "beyond.src", "5 6\n7 600\n9 10\n")
	out := filepath.Join(dir, "out.onnx")
	for _, tc := range []struct {
		name    string
		args    []string
		mention string
	}{
		{"finetune", []string{"finetune", qat, "-o", out, "--src", longSrc, "--tgt", short}, longSrc + ":3: the sentence has 71 tokens (EOS included) but the model has 64 source positions"},
		{"train", []string{"train", model, "-o", out, "--src", short, "--tgt", longSrc}, longSrc + ":3: the sentence has 71 tokens (EOS included) but the model has 64 target positions"},
		{"calibration", []string{"insert", model, "-o", out, "--calib-src", longSrc}, longSrc + ":3: the sentence has 71 tokens"},
		{"export check batch", []string{"export", qat, "-o", out, "--src", longSrc}, longSrc + ":3: the sentence has 71 tokens"},
		{"eval", []string{"eval", model, "--src", longSrc, "--ref", short}, longSrc + ":3: the sentence has 71 tokens (EOS included) but " + model + " has 64 source positions"},
		{"eval beyond the vocabulary", []string{"eval", model, "--src", beyond, "--ref", short}, beyond + ":2: token id 600 is beyond the vocabulary of 64 tokens"},
		{"translate", []string{"translate", model, "--src", longSrc}, longSrc + ":3: the sentence has 71 tokens"},
		{"bench --src", []string{"bench", model, "--src", beyond}, beyond + ":2: token id 600 is beyond the vocabulary"},
		{"finetune beyond the vocabulary", []string{"finetune", qat, "-o", out, "--src", beyond, "--tgt", short}, beyond + ":2: token id 600 is beyond the vocabulary"},
	} {
		t.Run(tc.name, func(t *testing.T) { refused(t, dir, 1, tc.mention, tc.args...) })
	}
}

// Item 13: outputs that would overwrite one another are refused before
// any work.
func TestNameCollisions(t *testing.T) {
	dir := t.TempDir()
	model, _, src, tgt := tinyFiles(t, dir)
	two := graph.New("two", 17)
	two.AddInput("x", graph.Float, []int64{2})
	two.Op("Identity", "", []string{"x"}, []string{"a/b"})
	two.Op("Relu", "", []string{"x"}, []string{"a_b"})
	two.AddOutput("a/b", graph.Float, []int64{2})
	two.AddOutput("a_b", graph.Float, []int64{2})
	twoPath := filepath.Join(dir, "two.onnx")
	if err := two.Save(twoPath); err != nil {
		t.Fatal(err)
	}
	x := filepath.Join(dir, "x.npy")
	writeNpy(t, x)
	for _, d := range []string{"d1", "d2"} {
		os.Mkdir(filepath.Join(dir, d), 0o755)
		data, _ := os.ReadFile(model)
		os.WriteFile(filepath.Join(dir, d, "model.onnx"), data, 0o644)
	}
	for _, tc := range []struct {
		name    string
		args    []string
		mention string
	}{
		{"run --save", []string{"run", twoPath, "--input", "x=" + x, "--save", filepath.Join(dir, "out")}, `outputs "a/b" and "a_b" would both be written to`},
		{"eval --hyp-dir", []string{"eval", filepath.Join(dir, "d1", "model.onnx"), filepath.Join(dir, "d2", "model.onnx"), "--src", src, "--ref", tgt, "--hyp-dir", filepath.Join(dir, "hyp")}, "would both write"},
		{"eval --hyp-dir is a file", []string{"eval", model, "--src", src, "--ref", tgt, "--hyp-dir", src}, "--hyp-dir " + src + " is a file, not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) { refused(t, dir, 2, tc.mention, tc.args...) })
	}
}

// writeNpy writes a float32 [2] array to path.
func writeNpy(t *testing.T, path string) {
	t.Helper()
	if err := ort.WriteNpy(path, ort.Float32([]int64{2}, []float32{1, -1})); err != nil {
		t.Fatal(err)
	}
}

// Item 14: text is UTF-8, a BOM is dropped, other bytes and NUL are
// refused by line; without a validation set nothing reports a validation
// loss.
func TestTextData(t *testing.T) {
	dir := t.TempDir()
	model, _, src, tgt := tinyFiles(t, dir)
	latin := writeFile(t, dir, "latin1.src", "5 6\ncaf\xe9 7\n")
	nul := writeFile(t, dir, "nul.src", "5 6\n7\x008\n")
	out := filepath.Join(dir, "out.onnx")
	two := writeFile(t, dir, "two.tgt", "5 6\n7 8\n")
	refused(t, dir, 1, latin+":2: byte 0xE9 at column 4 is not UTF-8", "train", model, "-o", out, "--src", latin, "--tgt", two)
	refused(t, dir, 1, nul+":2: a NUL byte at column 2", "train", model, "-o", out, "--src", nul, "--tgt", two)
	refused(t, dir, 1, latin+":2: byte 0xE9", "eval", model, "--src", latin, "--ref", two)
	// A 10 MB line is not a sentence: refused as read, before tokenizing.
	big := writeFile(t, dir, "big.src", "5 6\n"+strings.Repeat("5 ", 5<<20)+"\n")
	refused(t, dir, 1, big+":2: the line is longer than 1048576 bytes", "eval", model, "--src", big, "--ref", two)
	refused(t, dir, 1, big+":2: the line is longer than 1048576 bytes", "train", model, "-o", out, "--src", big, "--tgt", two)
	// A BOM changes nothing: the same run with and without it ends with
	// the same weights.
	data, _ := os.ReadFile(src)
	bom := writeFile(t, dir, "bom.src", "\xef\xbb\xbf"+string(data))
	var results []string
	for i, s := range []string{src, bom} {
		o := filepath.Join(dir, fmt.Sprint("run", i, ".onnx"))
		code, stdout, errOut := qatc(t, "train", model, "-o", o, "--src", s, "--tgt", tgt, "--steps", "2", "--batch-tokens", "256", "--threads", "1")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		if strings.Contains(stdout+errOut, "NaN") || strings.Contains(stdout, "validation") {
			t.Errorf("without a validation set the run reports a validation loss: %s", stdout)
		}
		m, err := graph.Load(o)
		if err != nil {
			t.Fatal(err)
		}
		var sb strings.Builder
		for _, name := range m.InitializerNames() {
			sb.Write(m.Initializer(name).RawData)
		}
		results = append(results, sb.String())
	}
	if results[0] != results[1] {
		t.Error("a byte-order mark changed the training")
	}
}

// Flag defaults need no check at run time: each lies in its range, or is
// 0 where 0 means "not given".
func TestFlagDefaultsInRange(t *testing.T) {
	for _, cmd := range commands() {
		for _, f := range cmd.Flags {
			b, ok := flagRanges[f.Names()[0]]
			if !ok {
				continue
			}
			var v float64
			switch f := f.(type) {
			case *cli.IntFlag:
				v = float64(f.Value)
			case *cli.Int64Flag:
				v = float64(f.Value)
			case *cli.Uint64Flag:
				v = float64(f.Value)
			case *cli.Float64Flag:
				v = f.Value
			}
			if v != 0 && !b.Holds(v) {
				t.Errorf("qatc %s --%s defaults to %v, outside its range", cmd.Name, f.Names()[0], v)
			}
		}
	}
}

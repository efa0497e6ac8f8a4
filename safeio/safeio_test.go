package safeio

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests run this binary again as a child that writes or waits, so
// that a signal can reach it at a known point.
const childEnv = "SAFEIO_TEST_CHILD"

func TestMain(m *testing.M) {
	if what := os.Getenv(childEnv); what != "" {
		child(what, os.Getenv("SAFEIO_TEST_DIR"))
		return
	}
	os.Exit(m.Run())
}

// child runs one scenario in dir and reports progress through files.
func child(what, dir string) {
	switch what {
	case "write":
		// A batch of two files, held before its renames.
		os.Setenv(holdEnv, filepath.Join(dir, "holding"))
		var b Batch
		for _, name := range []string{"m.onnx.data", "m.onnx"} {
			f, err := b.Create(filepath.Join(dir, name))
			if err != nil {
				os.Exit(3)
			}
			f.Write([]byte("new " + name))
		}
		b.Commit()
		os.Exit(0)
	case "graceful":
		ctx, stop := NotifyContext(context.Background())
		defer stop()
		var b Batch
		b.Create(filepath.Join(dir, "x"))
		os.WriteFile(filepath.Join(dir, "ready"), nil, 0o644)
		<-ctx.Done()
		b.Abort()
		os.WriteFile(filepath.Join(dir, "stopped gracefully"), nil, 0o644)
		os.Exit(0)
	}
	os.Exit(4)
}

func startChild(t *testing.T, what, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+what, "SAFEIO_TEST_DIR="+dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

func waitFor(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
	}
	t.Fatalf("%s never appeared", path)
}

// temps lists the qatc temporaries in dir.
func temps(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.Contains(e.Name(), tempTag) {
			out = append(out, e.Name())
		}
	}
	return out
}

func write(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// SIGINT and SIGTERM while a batch's temporaries exist: the process dies
// by the signal, its temporaries are gone, the old files are untouched.
func TestSignalRemovesTemporaries(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			write(t, filepath.Join(dir, "m.onnx"), "old model")
			write(t, filepath.Join(dir, "m.onnx.data"), "old data")
			cmd := startChild(t, "write", dir)
			waitFor(t, filepath.Join(dir, "holding"))
			if n := len(temps(t, dir)); n != 2 {
				t.Fatalf("%d temporaries while holding, want 2", n)
			}
			cmd.Process.Signal(sig)
			err := cmd.Wait()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != sig {
				t.Fatalf("child ended with %v, want death by %v", err, sig)
			}
			if left := temps(t, dir); len(left) > 0 {
				t.Errorf("temporaries left: %v", left)
			}
			if read(t, filepath.Join(dir, "m.onnx")) != "old model" || read(t, filepath.Join(dir, "m.onnx.data")) != "old data" {
				t.Errorf("the old files changed")
			}
		})
	}
}

// SIGKILL leaves temporaries; the next write into the directory removes
// them, but never those of a live writer.
func TestStaleTemporaries(t *testing.T) {
	dir := t.TempDir()
	cmd := startChild(t, "write", dir)
	waitFor(t, filepath.Join(dir, "holding"))
	CleanStale(dir)
	if n := len(temps(t, dir)); n != 2 {
		t.Fatalf("CleanStale removed a live writer's temporaries: %d left of 2", n)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if n := len(temps(t, dir)); n != 2 {
		t.Fatalf("%d temporaries after SIGKILL, want the 2 it could not remove", n)
	}
	if err := WriteFile(filepath.Join(dir, "other"), []byte("x")); err != nil {
		t.Fatal(err)
	}
	if left := temps(t, dir); len(left) > 0 {
		t.Errorf("stale temporaries not removed by the next write: %v", left)
	}
}

// A command that stops gracefully gets the first signal as a cancelled
// context and is not killed.
func TestNotifyContext(t *testing.T) {
	dir := t.TempDir()
	cmd := startChild(t, "graceful", dir)
	waitFor(t, filepath.Join(dir, "ready"))
	cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("graceful child: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "stopped gracefully")); err != nil {
		t.Errorf("the context was not cancelled: %v", err)
	}
	if left := temps(t, dir); len(left) > 0 {
		t.Errorf("temporaries left: %v", left)
	}
}

// Commit renames in creation order under the directory lock; a reader
// holding the shared lock sees both files of one batch. Two writers of the
// same pair never leave a mixed pair.
func TestBatchPairs(t *testing.T) {
	dir := t.TempDir()
	data, model := filepath.Join(dir, "m.onnx.data"), filepath.Join(dir, "m.onnx")
	writePair := func(tag string) error {
		var b Batch
		defer b.Abort()
		for _, p := range []string{data, model} {
			f, err := b.Create(p)
			if err != nil {
				return err
			}
			f.WriteString(tag)
		}
		return b.Commit()
	}
	done := make(chan error)
	for w := range 4 {
		go func() {
			var err error
			for i := 0; i < 50 && err == nil; i++ {
				err = writePair(fmt.Sprintf("writer %d run %d", w, i))
			}
			done <- err
		}()
	}
	mixed := 0
	for finished := 0; finished < 4; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			finished++
		default:
			unlock := LockDirs(dir)
			a, errA := os.ReadFile(data)
			b, errB := os.ReadFile(model)
			unlock()
			if errA == nil && errB == nil && string(a) != string(b) {
				mixed++
			}
		}
	}
	if mixed > 0 {
		t.Errorf("a reader holding the lock saw %d mixed pairs", mixed)
	}
	if read(t, data) != read(t, model) {
		t.Errorf("final pair mixed: %q vs %q", read(t, data), read(t, model))
	}
	if left := temps(t, dir); len(left) > 0 {
		t.Errorf("temporaries left: %v", left)
	}
}

func TestAbortAndDirectories(t *testing.T) {
	dir := t.TempDir()
	var b Batch
	f, err := b.Create(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("x")
	b.Abort()
	b.Abort()
	if _, err := os.Stat(filepath.Join(dir, "a")); err == nil {
		t.Error("an aborted file appeared")
	}
	if left := temps(t, dir); len(left) > 0 {
		t.Errorf("temporaries left: %v", left)
	}
	// A directory replaces an existing one whole.
	final := filepath.Join(dir, "ckpt")
	for i, name := range []string{"first", "second"} {
		var b Batch
		tmp, err := b.CreateDir(final)
		if err != nil {
			t.Fatal(err)
		}
		// A batch inside the temporary directory (a checkpoint's model).
		if err := WriteFile(filepath.Join(tmp, name), []byte(name)); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		ents, _ := os.ReadDir(final)
		if len(ents) != 1 || ents[0].Name() != name {
			t.Errorf("commit %d: directory holds %v", i, ents)
		}
	}
	if left := temps(t, dir); len(left) > 0 {
		t.Errorf("temporaries left: %v", left)
	}
}

// Neither a FIFO nor a device nor a directory is opened as a file, and
// opening a FIFO without a writer does not block.
func TestOpenRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	reg := filepath.Join(dir, "file")
	write(t, reg, "abc")
	for _, tc := range []struct{ path, kind string }{
		{fifo, "a FIFO (named pipe)"},
		{"/dev/zero", "a character device"},
		{dir, "a directory"},
	} {
		start := time.Now()
		_, _, err := OpenRegular(tc.path)
		var nr *NotRegularError
		if !errors.As(err, &nr) || nr.Kind != tc.kind {
			t.Errorf("%s: %v, want %s", tc.path, err, tc.kind)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s: took %v", tc.path, d)
		}
	}
	if _, err := ReadFile(reg, 2); err == nil || !strings.Contains(err.Error(), "3 bytes") {
		t.Errorf("ReadFile over its limit: %v", err)
	}
	if b, err := ReadFile(reg, 3); err != nil || string(b) != "abc" {
		t.Errorf("ReadFile: %q, %v", b, err)
	}
}

func TestHoles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sparse")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const mb = 1 << 20
	// 1 MiB of data, a 62 MiB hole, 1 MiB of data.
	block := make([]byte, mb)
	for i := range block {
		block[i] = 1
	}
	f.Write(block)
	f.WriteAt(block, 63*mb)
	for _, tc := range []struct{ off, n, want int64 }{
		{0, mb, 0},
		{0, 64 * mb, 62 * mb},
		{mb / 2, 2 * mb, (3 * mb) / 2},
		{63 * mb, mb, 0},
	} {
		got, err := Holes(f, tc.off, tc.n)
		if err != nil || got != tc.want {
			t.Errorf("Holes(%d, %d) = %d, %v; want %d", tc.off, tc.n, got, err, tc.want)
		}
	}
}

func TestReadLines(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, text string
		want       []string
		err        string
	}{
		{"plain", "a b\nc\n", []string{"a b", "c"}, ""},
		{"no final newline", "a\nb", []string{"a", "b"}, ""},
		{"crlf", "a\r\nb\r\n", []string{"a", "b"}, ""},
		{"bom", "\xef\xbb\xbfa\nb\n", []string{"a", "b"}, ""},
		{"latin1", "ok\ncaf\xe9\n", nil, ":2: byte 0xE9 at column 4 is not UTF-8"},
		{"nul", "a\x00b\n", nil, ":1: a NUL byte at column 2"},
		{"long", "x\n" + strings.Repeat("y", MaxLineBytes+1) + "\n", nil, ":2: the line is longer than"},
		{"empty", "", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name)
			write(t, path, tc.text)
			var got []string
			err := ReadLines(path, func(n int, line string) error {
				if n != len(got)+1 {
					t.Errorf("line number %d, want %d", n, len(got)+1)
				}
				got = append(got, line)
				return nil
			})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), path+tc.err) {
					t.Errorf("error %v, want %q", err, path+tc.err)
				}
				return
			}
			if err != nil || strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("lines %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if err := ReadLines(dir, func(int, string) error { return nil }); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("a directory: %v", err)
	}
}

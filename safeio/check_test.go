package safeio

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	model, data := filepath.Join(dir, "m.onnx"), filepath.Join(dir, "m.data")
	write(t, model, "model")
	write(t, data, "data")
	other := filepath.Join(dir, "other.onnx")
	write(t, other, "other")
	link := filepath.Join(t.TempDir(), "link")
	os.Symlink(dir, link)
	hard := filepath.Join(dir, "hard.onnx")
	os.Link(model, hard)
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o755)
	fifo := filepath.Join(dir, "fifo")
	syscall.Mkfifo(fifo, 0o644)
	in := []Group{{Flag: "MODEL", Path: model, Parts: []string{data}}, {Flag: "--src", Path: other}}
	out := func(path string, parts ...string) []Group { return []Group{{Flag: "-o", Path: path, Parts: parts}} }
	for _, tc := range []struct {
		name    string
		plan    Plan
		usage   bool
		mention string
	}{
		{"new file", Plan{Inputs: in, Outputs: out(filepath.Join(dir, "new.onnx"), filepath.Join(dir, "new.onnx.data"))}, false, ""},
		{"replace another file", Plan{Inputs: in, Outputs: out(filepath.Join(dir, "sub", "x"))}, false, ""},
		{"the input", Plan{Inputs: in, Outputs: out(model), InPlaceFlag: "--in-place"}, true, "is the input model " + model + "; give another path, or --in-place to replace it"},
		{"the input, no in-place flag", Plan{Inputs: in, Outputs: out(model)}, true, "is the input model " + model + "; give another path"},
		{"the input in place", Plan{Inputs: in, Outputs: out(model, data), InPlace: true}, false, ""},
		{"through a symlinked directory", Plan{Inputs: in, Outputs: out(filepath.Join(link, "m.onnx"))}, true, "is the input model"},
		{"a hard link", Plan{Inputs: in, Outputs: out(hard)}, true, "is the input model"},
		{"data file is the input's", Plan{Inputs: in, Outputs: out(filepath.Join(dir, "m2.onnx"), data)}, true, "is " + data + ", the external data of the input " + model},
		{"data file is the input's, in place", Plan{Inputs: in, Outputs: out(filepath.Join(dir, "m2.onnx"), data), InPlace: true}, true, "the external data of the input"},
		{"another input, in place", Plan{Inputs: in, Outputs: out(other), InPlace: true, InPlaceFlag: "--in-place"}, true, "-o " + other + " is the input --src " + other + "; give another path"},
		{"a directory", Plan{Inputs: in, Outputs: out(sub)}, true, "is a directory"},
		{"a FIFO", Plan{Inputs: in, Outputs: out(fifo)}, true, "is a FIFO (named pipe); qatc writes regular files only"},
		{"a device", Plan{Outputs: out("/dev/null")}, true, "is a character device"},
		{"missing directory", Plan{Outputs: out(filepath.Join(dir, "nope", "x"))}, false, "directory " + filepath.Join(dir, "nope") + " does not exist"},
		{"parent is a file", Plan{Outputs: out(filepath.Join(other, "x"))}, false, "is not a directory"},
		{"two outputs one file", Plan{Outputs: []Group{{Flag: "-o", Path: filepath.Join(dir, "x")}, {Flag: "--graph", Path: filepath.Join(link, "x")}}}, true, "-o " + filepath.Join(dir, "x") + " and --graph"},
		{"output dir is a file", Plan{Dirs: []Dir{{Flag: "--save", Path: other}}}, true, "--save " + other + " is a file, not a directory"},
		{"output dir to create", Plan{Dirs: []Dir{{Flag: "--save", Path: filepath.Join(dir, "a", "b")}}, Outputs: []Group{{Flag: "--save", Path: filepath.Join(dir, "a", "b", "x.npy")}}}, false, ""},
		{"output dir under a file", Plan{Dirs: []Dir{{Flag: "--save", Path: filepath.Join(other, "b")}}}, true, "is a file, not a directory"},
		{"output dir and file one path", Plan{Dirs: []Dir{{Flag: "--checkpoint-dir", Path: filepath.Join(dir, "c")}}, Outputs: out(filepath.Join(dir, "c"))}, true, "are the same file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Check(tc.plan)
			if tc.mention == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var ce *CheckError
			if !errors.As(err, &ce) || ce.Usage != tc.usage || !strings.Contains(err.Error(), tc.mention) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %v (usage %v), want one line mentioning %q (usage %v)", err, ce != nil && ce.Usage, tc.mention, tc.usage)
			}
		})
	}
	if err := Check(Plan{Inputs: in, Outputs: out(model)}); err == nil || strings.Contains(err.Error(), "in-place") {
		t.Errorf("a command without an in-place flag suggests one: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "a")); err == nil {
		t.Error("Check created a directory")
	}
}

func TestFormatSize(t *testing.T) {
	for _, c := range []struct {
		n        int64
		decimals int
		want     string
	}{
		{0, 2, "0 B"},
		{1023, 2, "1023 B"},
		{1536, 2, "1.50 KiB"},
		{10 << 20, 2, "10.00 MiB"},
		{3 << 30, 2, "3.00 GiB"},
		{1536, 1, "1.5 KiB"},
		{(3 << 20) / 2, 1, "1.5 MiB"},
		{1<<20 - 1, 1, "1024.0 KiB"},
		{5 << 50, 1, "5.0 PiB"},
	} {
		if got := FormatSize(c.n, c.decimals); got != c.want {
			t.Errorf("FormatSize(%d, %d) = %q, want %q", c.n, c.decimals, got, c.want)
		}
	}
}

package ort

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qatc/qatc/internal/fixture"
)

// checkErr fails unless err is a single line containing every want.
func checkErr(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one mentioning %q", want)
	}
	msg := err.Error()
	t.Log(msg)
	if strings.Contains(msg, "\n") {
		t.Errorf("error is not one line: %q", msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not mention %q", msg, w)
		}
	}
}

func TestBadInputs(t *testing.T) {
	model := fixture.Torch(t, "transformer_opset14.onnx")
	s, err := OpenFile(model, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	src := mustReadNpy(t, "transformer_src_ids.npy")
	tgt := mustReadNpy(t, "transformer_tgt_ids.npy")
	logits := mustReadNpy(t, "transformer_logits.npy")
	src32 := make([]int32, src.Len())
	for i, v := range src.Int64s() {
		src32[i] = int32(v)
	}
	tests := []struct {
		name    string
		inputs  map[string]*Tensor
		outputs []string
		want    []string
	}{
		{"wrong dtype", map[string]*Tensor{"src_ids": Int32(src.Shape, src32), "tgt_ids": tgt}, nil,
			[]string{model, `input "src_ids"`, "given int32[2,9]", "expects int64[batch,src_len]"}},
		{"npy of the wrong dtype", map[string]*Tensor{"src_ids": src, "tgt_ids": logits}, nil,
			[]string{`input "tgt_ids"`, "given float32[2,7,512]", "expects int64[batch,tgt_len]"}},
		{"wrong rank", map[string]*Tensor{"src_ids": Int64([]int64{18}, src.Int64s()), "tgt_ids": tgt}, nil,
			[]string{`input "src_ids"`, "given int64[18] (rank 1)", "expects int64[batch,src_len] (rank 2)"}},
		{"shape and data disagree", map[string]*Tensor{"src_ids": Int64([]int64{2, 10}, src.Int64s()), "tgt_ids": tgt}, nil,
			[]string{`input "src_ids"`, "shape [2 10] needs 20 elements but Data has 18"}},
		{"unsupported Go type", map[string]*Tensor{"src_ids": {Shape: []int64{2, 9}, Data: make([]uint16, 18)}, "tgt_ids": tgt}, nil,
			[]string{`input "src_ids"`, "unsupported Go data type []uint16"}},
		{"missing input", map[string]*Tensor{"src_ids": src}, nil,
			[]string{`missing input "tgt_ids"`, "int64[batch,tgt_len]"}},
		{"nil input", map[string]*Tensor{"src_ids": src, "tgt_ids": nil}, nil,
			[]string{`missing input "tgt_ids"`}},
		{"unknown input", map[string]*Tensor{"src_ids": src, "tgt_ids": tgt, "src_mask": src}, nil,
			[]string{`unknown input "src_mask"`, "src_ids, tgt_ids"}},
		{"unknown output", map[string]*Tensor{"src_ids": src, "tgt_ids": tgt}, []string{"probs"},
			[]string{`unknown output "probs"`, "logits", "Options.Outputs"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Run(tt.inputs, tt.outputs...)
			checkErr(t, err, tt.want...)
		})
	}
}

func TestBadModels(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.onnx")
	junk := filepath.Join(dir, "junk.onnx")
	os.WriteFile(empty, nil, 0o644)
	os.WriteFile(junk, []byte("\xff\xff\xff\xff not a protobuf"), 0o644)
	model := fixture.Torch(t, "transformer_opset14.onnx")
	tests := []struct {
		name string
		path string
		opts *Options
		want []string
	}{
		{"missing file", filepath.Join(dir, "nope.onnx"), nil, []string{"nope.onnx", "no such file"}},
		{"empty file", empty, nil, []string{empty, "empty file"}},
		{"not a model", junk, nil, []string{junk, "not a valid ONNX model"}},
		{"directory", dir, nil, []string{dir, "directory"}},
		{"unknown intermediate", model, &Options{Outputs: []string{"/no/such/value"}}, []string{model, "Options.Outputs", `"/no/such/value"`}},
		{"initializer as output", model, &Options{Outputs: []string{"emb.weight"}}, []string{model, `"emb.weight" is an initializer`}},
		{"input as output", model, &Options{Outputs: []string{"src_ids"}}, []string{model, `"src_ids" is a graph input`}},
		{"negative threads", model, &Options{Threads: -1}, []string{model, "Options.Threads is -1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := OpenFile(tt.path, tt.opts)
			if err == nil {
				s.Close()
			}
			checkErr(t, err, tt.want...)
		})
	}
}

// TestInitMessages runs Init in child processes whose environment points
// at no usable library, and checks that the error says what to run.
func TestInitMessages(t *testing.T) {
	if mode := os.Getenv("QATC_RUNTIME_INIT_CHILD"); mode != "" {
		var err error
		if mode == "none" {
			initMu.Lock()
			err = loadFirst([]string{"/nonexistent/libonnxruntime.so.1", "libqatc-no-such-library.so"})
			initMu.Unlock()
		} else {
			err = Init()
		}
		if err != nil {
			os.Stdout.WriteString(err.Error())
			os.Exit(3)
		}
		os.Exit(0)
	}
	notLib := filepath.Join(t.TempDir(), "libonnxruntime.so.1")
	os.WriteFile(notLib, []byte("not an ELF file"), 0o644)
	tests := []struct {
		name string
		env  []string
		want []string
	}{
		{"QATC_ORT_LIB missing", []string{"QATC_ORT_LIB=/nonexistent/libonnxruntime.so"},
			[]string{"QATC_ORT_LIB=/nonexistent/libonnxruntime.so", "no such file", "scripts/install-onnxruntime.sh"}},
		{"QATC_ORT_LIB not a library", []string{"QATC_ORT_LIB=" + notLib},
			[]string{"QATC_ORT_LIB=" + notLib, "file too short", "scripts/install-onnxruntime.sh"}},
		{"no library anywhere", []string{"QATC_RUNTIME_INIT_CHILD=none"},
			[]string{"onnxruntime library not found", "/nonexistent/libonnxruntime.so.1, libqatc-no-such-library.so", "run scripts/install-onnxruntime.sh", "QATC_ORT_LIB"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestInitMessages$")
			cmd.Env = append(os.Environ(), "QATC_RUNTIME_INIT_CHILD=1")
			cmd.Env = append(cmd.Env, tt.env...) // later entries win
			out, err := cmd.Output()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
				t.Fatalf("child: %v, output %q", err, out)
			}
			msg := string(out)
			t.Log(msg)
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not mention %q", msg, w)
				}
			}
		})
	}
}

func TestLibraryCandidates(t *testing.T) {
	t.Setenv("QATC_ORT_DIR", "/opt/ort")
	t.Setenv("XDG_CACHE_HOME", "/xdg")
	got := strings.Join(libraryCandidates(), " ")
	want := "/opt/ort/libonnxruntime.so.1 /xdg/qatc/onnxruntime-1.30.0/libonnxruntime.so.1 libonnxruntime.so.1 libonnxruntime.so"
	if got != want {
		t.Errorf("candidates %q, want %q", got, want)
	}
	t.Setenv("QATC_ORT_DIR", "")
	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if got := libraryCandidates()[0]; got != "/home/u/.cache/qatc/onnxruntime-1.30.0/libonnxruntime.so.1" {
		t.Errorf("first candidate %q, want the install script's default location", got)
	}
}

func TestVersionAtLeast(t *testing.T) {
	for _, tt := range []struct {
		v  string
		ok bool
	}{{"1.30.0", true}, {"1.24.0", true}, {"1.23.2", false}, {"2.0.0", true}, {"0.99.1", false}, {"1.9.0", false}} {
		if got := versionAtLeast(tt.v, 1, 24); got != tt.ok {
			t.Errorf("versionAtLeast(%q, 1, 24) = %v, want %v", tt.v, got, tt.ok)
		}
	}
	if err := Init(); err != nil {
		t.Fatal(err)
	}
	path, v := Library()
	t.Logf("onnxruntime %s from %s", v, path)
	if !versionAtLeast(v, 1, 24) {
		t.Errorf("loaded onnxruntime %s, want ≥ 1.24", v)
	}
}

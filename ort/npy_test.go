package ort

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/qatc/qatc/internal/fixture"
	"github.com/sbinet/npyio"
)

// TestNpyRoundTrip writes each supported type at several ranks, reads it
// back, and reads the 1-D files with npyio's own decoder as well.
func TestNpyRoundTrip(t *testing.T) {
	dir := t.TempDir()
	tests := []*Tensor{
		Float32([]int64{2, 3}, []float32{1, -2, 3.5, 0, 1e-30, 7}),
		Float64([]int64{3}, []float64{1, -2, 3.25}),
		Int64([]int64{1, 2, 2}, []int64{1 << 40, -1, 0, 7}),
		Int32([]int64{}, []int32{-9}),
		Int8([]int64{4}, []int8{-128, 127, 0, 1}),
		Uint8([]int64{2, 0}, []uint8{}),
		Bool([]int64{3}, []bool{true, false, true}),
	}
	for _, x := range tests {
		t.Run(x.String(), func(t *testing.T) {
			path := filepath.Join(dir, x.String()+".npy")
			if err := WriteNpy(path, x); err != nil {
				t.Fatal(err)
			}
			got, err := ReadNpy(path)
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != x.String() || !reflect.DeepEqual(got.Data, x.Data) {
				t.Errorf("read back %s %v, wrote %s %v", got, got.Data, x, x.Data)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			r, err := npyio.NewReader(f)
			if err != nil {
				t.Fatalf("npyio: %v", err)
			}
			if len(r.Header.Descr.Shape) != len(x.Shape) || r.Header.Descr.Fortran {
				t.Errorf("npyio reads header %v for %s", r.Header, x)
			}
			if len(x.Shape) == 1 {
				v := reflect.New(reflect.TypeOf(x.Data))
				if err := r.Read(v.Interface()); err != nil {
					t.Fatalf("npyio: %v", err)
				}
				if !reflect.DeepEqual(v.Elem().Interface(), x.Data) {
					t.Errorf("npyio reads %v, wrote %v", v.Elem().Interface(), x.Data)
				}
			}
		})
	}
}

// TestNpyShared checks ReadNpy against the raw little-endian copies of the
// shared arrays.
func TestNpyShared(t *testing.T) {
	for _, name := range []string{"transformer_src_ids", "transformer_logits"} {
		x := mustReadNpy(t, name+".npy")
		raw, err := os.ReadFile(fixture.Torch(t, name+map[bool]string{true: ".f32", false: ".i64"}[x.DType().String() == "float32"]))
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		binary.Write(&buf, binary.LittleEndian, x.Data)
		if !bytes.Equal(buf.Bytes(), raw) {
			t.Errorf("%s.npy: %s does not match the raw file", name, x)
		}
	}
}

func TestNpyErrors(t *testing.T) {
	dir := t.TempDir()
	header := func(dict string) []byte {
		h := []byte{0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0}
		binary.LittleEndian.PutUint16(h[8:], uint16(len(dict)+1))
		return append(append(h, dict...), '\n')
	}
	good := header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }")
	tests := []struct {
		name string
		data []byte
		want []string
	}{
		{"empty", nil, []string{"not a NumPy .npy file"}},
		{"text", []byte("src_ids = [[1, 2, 3]]\n"), []string{"not a NumPy .npy file"}},
		{"header cut", good[:20], []string{"truncated or damaged .npy header"}},
		{"data cut", append(good, make([]byte, 12)...), []string{"truncated", "needs 16 bytes", "has 12"}},
		{"half-precision", append(header("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }"), 0, 0, 0, 0), []string{`unsupported dtype "<f2"`, "float32"}},
		{"big-endian", append(header("{'descr': '>i8', 'fortran_order': False, 'shape': (1,), }"), make([]byte, 8)...), []string{`unsupported dtype ">i8"`, "little-endian"}},
		{"fortran", append(header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }"), make([]byte, 16)...), []string{"Fortran order", "ascontiguousarray"}},
		{"version", append([]byte{0x93, 'N', 'U', 'M', 'P', 'Y', 9, 0, 0, 0}, good[10:]...), []string{"unsupported .npy format version 9"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name+".npy")
			if err := os.WriteFile(path, tt.data, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := ReadNpy(path)
			checkErr(t, err, append(tt.want, path)...)
		})
	}
	_, err := ReadNpy(filepath.Join(dir, "missing.npy"))
	checkErr(t, err, "missing.npy")
	err = WriteNpy(filepath.Join(dir, "bad.npy"), Float32([]int64{3}, []float32{1}))
	checkErr(t, err, "bad.npy", "shape [3] needs 3 elements but Data has 1")
}

// FuzzReadNpy feeds ReadNpy damaged files: it must return an error or a
// tensor whose data matches its shape, never panic.
func FuzzReadNpy(f *testing.F) {
	dir := f.TempDir()
	for i, x := range []*Tensor{Float32([]int64{2, 2}, []float32{1, 2, 3, 4}), Bool([]int64{1}, []bool{true}), Int64([]int64{}, []int64{5})} {
		path := filepath.Join(dir, fmt.Sprint(i))
		if err := WriteNpy(path, x); err != nil {
			f.Fatal(err)
		}
		data, _ := os.ReadFile(path)
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "x.npy")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		x, err := ReadNpy(path)
		if err != nil {
			return
		}
		if err := x.check(); err != nil {
			t.Errorf("ReadNpy returned an inconsistent tensor: %v", err)
		}
	})
}

//go:build mpi

package mpi

import (
	"bytes"
	"fmt"
	"os"
	"testing"
)

// These tests run on every rank of an MPI job: TestBindingUnderMpirun (in
// the ordinary build) starts them with mpirun -np 3.

var world0 *Comm

func TestMain(m *testing.M) {
	c, err := Init()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	world0 = c
	code := m.Run()
	if err := c.Finalize(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

// value is what rank r contributes at index i.
func value(r, i int) float32 { return float32((r+1)*1000 + i%997) }

func TestAllReduce(t *testing.T) {
	c := world0
	for _, tc := range []struct {
		name     string
		n        int
		maxCount int
	}{
		{"one value", 1, maxCount},
		{"one call", 100_003, maxCount},
		{"buckets", 25_000, 1_000},
	} {
		saved := maxCount
		maxCount = tc.maxCount
		buf := make([]float32, tc.n)
		for i := range buf {
			buf[i] = value(c.Rank(), i)
		}
		err := c.AllReduce(buf)
		maxCount = saved
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		for i, got := range buf {
			var want float32
			for r := range c.Size() {
				want += value(r, i)
			}
			if got != want {
				t.Fatalf("%s: rank %d: sum[%d] = %g, want %g", tc.name, c.Rank(), i, got, want)
			}
		}
	}
}

func TestAllGather(t *testing.T) {
	c := world0
	// Rank r sends 5r bytes of value r: rank 0 sends nothing.
	msg := bytes.Repeat([]byte{byte(c.Rank())}, 5*c.Rank())
	all, err := c.AllGather(msg)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != c.Size() {
		t.Fatalf("%d messages from %d ranks", len(all), c.Size())
	}
	for r, m := range all {
		if want := bytes.Repeat([]byte{byte(r)}, 5*r); !bytes.Equal(m, want) {
			t.Errorf("rank %d got %v from rank %d, want %v", c.Rank(), m, r, want)
		}
	}
}

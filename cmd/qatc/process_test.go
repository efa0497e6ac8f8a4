package main

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// mainEnv makes the test binary run qatc's main with its arguments, so
// that tests can run qatc as a process (to signal it, to measure its
// memory) without building it.
const mainEnv = "QATC_TEST_MAIN"

// peakEnv names a file where the process started by qatcProcess writes
// its peak resident memory (VmHWM, in KiB) as it exits.
const peakEnv = "QATC_TEST_PEAK_FILE"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
		code := run(append([]string{"qatc"}, os.Args[1:]...), os.Stdout, os.Stderr)
		if f := os.Getenv(peakEnv); f != "" {
			writePeak(f)
		}
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// qatcProcess returns the command that runs qatc with args as a process.
func qatcProcess(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	return cmd
}

// writePeak writes this process's VmHWM line's value (KiB) to path.
func writePeak(path string) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			os.WriteFile(path, []byte(f[1]), 0o644)
		}
	}
}

// processPeak returns the peak resident memory (KiB) of a process that
// qatcProcess started with cmd.Env holding peakEnv=path, as it wrote it.
// (The wait status's Maxrss will not do: an exec records the memory of
// the mapping it replaces, and Go starts a child on its parent's mapping,
// so a child's Maxrss is at least the test binary's own peak.)
func processPeak(t testing.TB, path string) int64 {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the qatc process wrote no peak memory: %v", err)
	}
	kib, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		t.Fatalf("peak memory %q: %v", data, err)
	}
	return kib
}

package main

import (
	"os"
	"os/exec"
	"testing"
)

// mainEnv makes the test binary run qatc's main with its arguments, so
// that tests can run qatc as a process (to signal it, to measure its
// memory) without building it.
const mainEnv = "QATC_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
		os.Exit(run(append([]string{"qatc"}, os.Args[1:]...), os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// qatcProcess returns the command that runs qatc with args as a process.
func qatcProcess(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	return cmd
}

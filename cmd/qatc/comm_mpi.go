//go:build mpi

package main

import (
	"os"
	"syscall"
	"time"

	"github.com/qatc/qatc/mpi"
	"github.com/urfave/cli/v2"
)

// The qatc-mpi build: train and finetune run data-parallel on the ranks
// of an MPI job (mpirun -np N qatc-mpi finetune ...).
func init() {
	progName = "qatc-mpi"
	stopSignals = []os.Signal{syscall.SIGCONT}
	startComm = func() (rankComm, error) {
		c, err := mpi.Init()
		if err != nil {
			return nil, err
		}
		return mpiComm{c}, nil
	}
	commFlags = []cli.Flag{
		&cli.DurationFlag{Name: "comm-timeout", Value: mpi.DefaultTimeout, Usage: "give up on a collective call (and end the job) when a rank has not joined it for this long"},
	}
}

// mpiComm adapts *mpi.Comm to rankComm.
type mpiComm struct{ *mpi.Comm }

func (c mpiComm) SetTimeout(d time.Duration) { c.Timeout = d }

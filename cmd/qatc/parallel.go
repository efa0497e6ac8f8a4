package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"time"

	"github.com/qatc/qatc/internal/cmdline"
	"github.com/qatc/qatc/train"
	"github.com/urfave/cli/v2"
)

// progName prefixes messages: qatc, or qatc-mpi in the MPI build.
var progName = "qatc"

// rankComm is what the command line needs of an MPI job: the trainer's
// collectives, ending the job and leaving it.
type rankComm interface {
	train.Comm
	SetTimeout(d time.Duration)
	Abort(code int)
	Finalize() error
}

// startComm joins the MPI job; it is set only in the qatc-mpi build
// (comm_mpi.go), and commFlags are that build's extra training flags.
var (
	startComm func() (rankComm, error)
	commFlags []cli.Flag
)

// stopSignals are the signals that, beside Ctrl-C and SIGTERM (which
// safeio routes), stop training with a checkpoint. The qatc-mpi build
// adds SIGCONT: OpenMPI's mpirun, on Ctrl-C or when a rank failed, sends
// every rank SIGCONT, then SIGTERM and SIGKILL, each
// odls_base_sigkill_timeout seconds (default 1) after the one before, so
// SIGCONT is the earliest notice that the job ends.
var stopSignals []os.Signal

// notifyStop returns ctx, also cancelled by stopSignals.
func notifyStop(ctx context.Context) (context.Context, func()) {
	if len(stopSignals) == 0 {
		return ctx, func() {}
	}
	return signal.NotifyContext(ctx, stopSignals...)
}

// parallelCommands are the commands qatc-mpi runs on several ranks.
var parallelCommands = []string{"train", "finetune"}

// ranks is the job as run sees it: it notes whether any collective has
// run, so that a rank failing before the trainer's start-up exchange
// still takes part in it (train.Join).
type ranks struct {
	rankComm
	gathered bool
}

func (r *ranks) AllGather(msg []byte) ([][]byte, error) {
	r.gathered = true
	return r.rankComm.AllGather(msg)
}

// commKey is the app metadata key under which run leaves the job.
const commKey = "comm"

// commOf returns the MPI job of a data-parallel run, or nil.
func commOf(c *cli.Context) *ranks {
	r, _ := c.App.Metadata[commKey].(*ranks)
	return r
}

// refuseCommand returns a usage error for a command that qatc-mpi does not
// run on several ranks (each rank would write the same outputs).
func refuseCommand(app *cli.App, args []string) error {
	for _, a := range args[1:] {
		if a == "" || a[0] == '-' {
			continue
		}
		if app.Command(a) == nil || slices.Contains(parallelCommands, a) {
			return nil
		}
		return usagef("%s runs train and finetune on several ranks; run %s with qatc (or with mpirun -np 1)", progName, a)
	}
	return nil
}

// settleRanks ends a command on every rank alike: a rank that failed
// before any collective joins the start-up exchange with its error, so
// the others learn of it; an error every rank shares (a
// *train.CollectiveError) is left for rank 0 to print; any other error
// is this rank's alone, and the others may be waiting for it in a
// collective, so it is printed with the rank and the whole job aborted.
func settleRanks(r *ranks, err error, stderr io.Writer) error {
	if r == nil || r.Size() <= 1 {
		return err
	}
	if !r.gathered {
		err = train.Join(r, err)
	}
	var ce *train.CollectiveError
	if err != nil && !errors.As(err, &ce) {
		fmt.Fprintf(stderr, "%s: rank %d: %s\n", progName, r.Rank(), cmdline.OneLine(err.Error()))
		r.Abort(exitFailure)
	}
	return err
}

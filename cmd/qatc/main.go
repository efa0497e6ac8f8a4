// Command qatc does quantization-aware training of transformer models on
// their ONNX graphs: insert quantizers, fine-tune them with onnxruntime,
// export int8 models, inspect and evaluate them.
//
// Every command is its flags, one call into a library package (train,
// export, eval, inspect) and the printing of its result; the plumbing
// shared by the commands is internal/cmdline. See the README's layout
// section for which package owns what.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/qatc/qatc/decode"
	"github.com/qatc/qatc/export"
	"github.com/qatc/qatc/internal/cmdline"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/safeio"
	"github.com/qatc/qatc/seq2seq"
	"github.com/qatc/qatc/train"
	"github.com/urfave/cli/v2"
)

// Exit codes, as the design fixes them.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// unknownCommand is the app metadata key set when the command is unknown
// (urfave/cli reports that through a callback, not an error).
const unknownCommand = "unknown-command"

// usagef formats an error in how the command was called (exit 2).
func usagef(format string, args ...any) error { return cmdline.Usagef(format, args...) }

// Exported full-sequence files (qdq, qoperator) decode through a cache
// built by export, which decode cannot import: the program wires it in.
func init() { decode.RegisterExported(export.Unfolded) }

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// run executes qatc with args and returns the exit code; main is the only
// caller that exits, so tests can call run directly.
func run(args []string, stdout, stderr io.Writer) (code int) {
	debug := false
	for _, a := range args[1:] {
		if a == "--debug" {
			debug = true
		}
	}
	// In an MPI job (qatc-mpi) every rank runs the command; rank 0
	// alone prints, except for a rank's own failure (settleRanks).
	var comm *ranks
	rankErr := stderr
	if startComm != nil {
		c, err := startComm()
		if err != nil {
			fmt.Fprintf(stderr, "%s: %s\n", progName, cmdline.OneLine(err.Error()))
			return exitFailure
		}
		comm = &ranks{rankComm: c}
		defer comm.Finalize()
		if c.Rank() != 0 {
			stdout, stderr = io.Discard, io.Discard
		}
	}
	app := newApp(stdout, stderr)
	app.Metadata[commKey] = comm
	defer func() {
		if r := recover(); r != nil {
			if debug {
				panic(r)
			}
			fmt.Fprintf(rankErr, "%s: internal error: %v (run again with --debug for a stack trace, and please report it)\n", progName, r)
			if comm != nil && comm.Size() > 1 {
				comm.Abort(exitFailure)
			}
			code = exitFailure
		}
	}()
	var err error
	if comm != nil && comm.Size() > 1 {
		err = refuseCommand(app, args)
	}
	if err == nil {
		err = app.Run(cmdline.ReorderArgs(app, args, twoValued))
	}
	err = settleRanks(comm, err, rankErr)
	if app.Metadata[unknownCommand] == true {
		return exitUsage
	}
	if err == nil {
		return exitOK
	}
	if isUsage(err) {
		fmt.Fprintf(stderr, "%s: %s\n", progName, cmdline.OneLine(err.Error()))
		return exitUsage
	}
	fmt.Fprintf(stderr, "%s: %s\n", progName, cmdline.OneLine(err.Error()))
	return exitFailure
}

// isUsage reports whether err is the command line's fault (exit 2): a
// usage error, urfave/cli's own flag errors, an output path that is an
// input, a flag asking for more memory than the machine has.
func isUsage(err error) bool {
	var ue cmdline.UsageError
	var ce *safeio.CheckError
	var se *ort.SizeError
	var oe *train.OptionError
	return errors.As(err, &ue) || cmdline.IsFlagError(err) || errors.As(err, &oe) ||
		errors.As(err, &ce) && ce.Usage || errors.As(err, &se) && len(se.Flags) > 0
}

func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:            progName,
		Usage:           "quantization-aware training and int8 export of transformer ONNX models",
		Writer:          stdout,
		ErrWriter:       stderr,
		HideHelpCommand: true,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "debug", Usage: "show stack traces on internal errors"},
		},
		Commands: commands(),
		CommandNotFound: func(c *cli.Context, name string) {
			var names []string
			for _, cmd := range c.App.Commands {
				names = append(names, cmd.Name)
			}
			fmt.Fprintf(c.App.ErrWriter, "%s: unknown command %q (commands: %s; see %s --help)\n", progName, name, strings.Join(names, ", "), progName)
			c.App.Metadata[unknownCommand] = true
		},
		Metadata: map[string]any{},
		// Errors are printed once, by run.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return cmdline.UsageError{Msg: err.Error()}
		},
	}
	for _, c := range app.Commands {
		c.OnUsageError = app.OnUsageError
	}
	(&cmdline.Checker{Ranges: flagRanges}).Install(app)
	return app
}

// commands lists the registered commands; only working commands are here.
func commands() []*cli.Command {
	return []*cli.Command{
		inspectCommand(),
		runCommand(),
		compareCommand(),
		insertCommand(),
		trainCommand(),
		finetuneCommand(),
		exportCommand(),
		evalCommand(),
		translateCommand(),
		benchCommand(),
	}
}

// loadModel reads a MODEL argument: an ONNX file, whose structure is
// checked (a cycle, a dangling input or a value written twice is refused
// naming the node; nodes merely out of order are put in order), or a
// seq2seq directory, which commands work on as the composition of its
// encoder and decoder (seq2seq.Load), masks from the padding id.
func loadModel(c *cli.Context, path string) (*seq2seq.Stored, error) {
	return seq2seq.Load(path, specialIDs(c).Pad)
}

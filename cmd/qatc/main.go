// Command qatc does quantization-aware training of transformer models on
// their ONNX graphs: insert quantizers, fine-tune them with onnxruntime,
// export int8 models, inspect and evaluate them.
//
// Every command is a thin layer over the project's packages (graph, passes,
// runtime, train, export, eval); see DESIGN.md for the data flow.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

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

// usageError marks an error in how the command was called (exit 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

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
			fmt.Fprintf(stderr, "%s: %s\n", progName, oneLine(err.Error()))
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
		err = app.Run(reorderArgs(app, args))
	}
	err = settleRanks(comm, err, rankErr)
	if app.Metadata[unknownCommand] == true {
		return exitUsage
	}
	if err == nil {
		return exitOK
	}
	if isUsage(err) {
		fmt.Fprintf(stderr, "%s: %s\n", progName, oneLine(err.Error()))
		return exitUsage
	}
	fmt.Fprintf(stderr, "%s: %s\n", progName, oneLine(err.Error()))
	return exitFailure
}

// isUsage reports whether err is the command line's fault (exit 2): a
// usage error, urfave/cli's own flag errors, an output path that is an
// input, a flag asking for more memory than the machine has.
func isUsage(err error) bool {
	var ue usageError
	var ce *safeio.CheckError
	var se *ort.SizeError
	var oe *train.OptionError
	return errors.As(err, &ue) || isFlagError(err) || errors.As(err, &oe) ||
		errors.As(err, &ce) && ce.Usage || errors.As(err, &se) && len(se.Flags) > 0
}

// isFlagError recognises urfave/cli's own usage errors.
func isFlagError(err error) bool {
	s := err.Error()
	return strings.HasPrefix(s, "flag provided but not defined") ||
		strings.HasPrefix(s, "invalid value") ||
		strings.HasPrefix(s, "Required flag") ||
		strings.HasPrefix(s, "flag needs an argument") ||
		strings.HasPrefix(s, "No help topic")
}

// oneLine folds a multi-line message so that every error is one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
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
			return usageError{err.Error()}
		},
	}
	for _, c := range app.Commands {
		c.OnUsageError = app.OnUsageError
		takeRequired(c)
		if own := c.Before; own != nil {
			c.Before = func(ctx *cli.Context) error {
				if err := checkFlags(ctx); err != nil {
					return err
				}
				return own(ctx)
			}
		} else {
			c.Before = checkFlags
		}
	}
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

// reorderArgs moves a command's flags before its positional arguments, so
// that "qatc inspect MODEL --json" works as the design writes it (the flag
// package stops at the first positional argument).
func reorderArgs(app *cli.App, args []string) []string {
	out := []string{args[0]}
	i := 1
	for i < len(args) && strings.HasPrefix(args[i], "-") { // global flags
		out = append(out, args[i])
		i++
	}
	if i >= len(args) {
		return out
	}
	cmd := app.Command(args[i])
	out = append(out, args[i])
	i++
	if cmd == nil {
		return append(out, args[i:]...)
	}
	takesValue := map[string]bool{}
	for _, f := range cmd.Flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			takesValue[n] = !isBool
		}
	}
	var flags, positional []string
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			positional = append(positional, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			positional = append(positional, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if !strings.Contains(name, "=") && takesValue[name] && i+1 < len(args) {
			flags = append(flags, args[i+1])
			i++
		}
		if second, ok := twoValued[strings.SplitN(name, "=", 2)[0]]; ok && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			flags = append(flags, "--"+second, args[i+1])
			i++
		}
	}
	out = append(out, flags...)
	if len(positional) > 0 {
		out = append(out, "--")
		out = append(out, positional...)
	}
	return out
}

// loadModel reads a MODEL argument: an ONNX file, whose structure is
// checked (a cycle, a dangling input or a value written twice is refused
// naming the node; nodes merely out of order are put in order), or a
// seq2seq directory, which commands work on as the composition of its
// encoder and decoder (seq2seq.Load), masks from the padding id.
func loadModel(c *cli.Context, path string) (*seq2seq.Stored, error) {
	return seq2seq.Load(path, specialIDs(c).Pad)
}

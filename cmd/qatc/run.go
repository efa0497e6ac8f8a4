package main

import (
	"errors"
	"strings"

	"github.com/qatc/qatc/eval"
	"github.com/qatc/qatc/safeio"
	"github.com/urfave/cli/v2"
)

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "run a model on .npy inputs, print or save its outputs, optionally check them",
		ArgsUsage: "MODEL",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "input", Usage: "NAME=FILE.npy, one per model input"},
			&cli.StringFlag{Name: "save", Usage: "write every output as DIR/NAME.npy"},
			&cli.StringSliceFlag{Name: "expect", Usage: "NAME=FILE.npy: fail unless the output matches"},
			&cli.Float64Flag{Name: "atol", Value: 1e-5, Usage: "absolute tolerance for --expect"},
			&cli.Float64Flag{Name: "rtol", Value: 1e-4, Usage: "relative tolerance for --expect"},
			&cli.IntFlag{Name: "threads", Usage: "intra-op threads (0: onnxruntime's default)"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON document"},
		},
		Action: runAction,
	}
}

// namedFiles parses NAME=FILE arguments of flag.
func namedFiles(c *cli.Context, flag string) (map[string]string, []string, error) {
	out := map[string]string{}
	var order []string
	for _, a := range c.StringSlice(flag) {
		name, file, ok := strings.Cut(a, "=")
		if !ok || name == "" || file == "" {
			return nil, nil, usagef("--%s %q: want NAME=FILE.npy", flag, a)
		}
		if _, dup := out[name]; dup {
			return nil, nil, usagef("--%s %s given twice", flag, name)
		}
		out[name] = file
		order = append(order, name)
	}
	return out, order, nil
}

func runAction(c *cli.Context) error {
	path, err := oneArg(c, "MODEL")
	if err != nil {
		return err
	}
	inFiles, _, err := namedFiles(c, "input")
	if err != nil {
		return err
	}
	expFiles, _, err := namedFiles(c, "expect")
	if err != nil {
		return err
	}
	plan := safeio.Plan{Inputs: []safeio.Group{modelInput("MODEL", path)}}
	for _, files := range []map[string]string{inFiles, expFiles} {
		for _, f := range files {
			plan.Inputs = append(plan.Inputs, safeio.Group{Flag: "--input", Path: f})
		}
	}
	if dir := c.String("save"); dir != "" {
		plan.Dirs = []safeio.Dir{{Flag: "--save", Path: dir}}
	}
	if err := safeio.Check(plan); err != nil {
		return err
	}
	atol, rtol := c.Float64("atol"), c.Float64("rtol")
	reports, err := eval.RunFile(path, eval.RunOptions{Inputs: inFiles, Expect: expFiles, Atol: atol, Rtol: rtol,
		SaveDir: c.String("save"), Plan: plan, Threads: c.Int("threads")})
	var mismatch *eval.MismatchError
	if err != nil && !errors.As(err, &mismatch) {
		return err
	}
	if c.Bool("json") {
		if err := writeJSON(c.App.Writer, reports); err != nil {
			return err
		}
	} else {
		eval.WriteOutputs(c.App.Writer, reports, atol, rtol)
	}
	return err
}

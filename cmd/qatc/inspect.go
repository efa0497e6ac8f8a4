package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/qatc/qatc/inspect"
	"github.com/qatc/qatc/safeio"
	"github.com/qatc/qatc/seq2seq"
	"github.com/urfave/cli/v2"
)

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "describe a model (a file, or a model directory: each file, and each quantizer once with the files that apply it): inputs, outputs, opsets, operators, parameters, quantizers, a weight's integers",
		ArgsUsage: "MODEL",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print one JSON document"},
			&cli.IntFlag{Name: "top", Value: 10, Usage: "how many of the largest initializers to list"},
			&cli.StringFlag{Name: "tensor", Usage: "print the integers of this quantized weight (its name or its integer initializer's), of a QAT or an exported model"},
			&cli.StringFlag{Name: "plot", Usage: "with --tensor on a QAT model: draw the float weight's histogram with the clip range marked to this file (.png)"},
		},
		Action: inspectAction,
	}
}

// inspectAction prints the model summary (with the quantizer table of a
// QAT or exported model), or with --tensor one weight's integers.
func inspectAction(c *cli.Context) error {
	path, err := oneArg(c, "MODEL")
	if err != nil {
		return err
	}
	if c.IsSet("plot") && (!c.IsSet("tensor") || c.String("plot") == "") {
		return usagef("--plot FILE.png draws one weight: name it with --tensor NAME")
	}
	if f := c.String("plot"); f != "" {
		if err := safeio.Check(safeio.Plan{
			Inputs:  []safeio.Group{modelInput("MODEL", path)},
			Outputs: []safeio.Group{{Flag: "--plot", Path: f}},
		}); err != nil {
			return err
		}
	}
	if name := c.String("tensor"); c.IsSet("tensor") {
		v, err := inspect.TensorFile(path, name)
		if err != nil {
			return err
		}
		if plotPath := c.String("plot"); plotPath != "" {
			if err := v.WritePlot(plotPath); err != nil {
				return err
			}
		}
		if c.Bool("json") {
			return writeJSON(c.App.Writer, v)
		}
		v.Write(c.App.Writer)
		if v.Plot != "" {
			fmt.Fprintf(c.App.Writer, "wrote %s\n", v.Plot)
		}
		return nil
	}
	if seq2seq.IsDir(path) {
		s, err := inspect.Directory(path, c.Int("top"))
		if err != nil {
			return err
		}
		if c.Bool("json") {
			return writeJSON(c.App.Writer, s)
		}
		return s.Write(c.App.Writer)
	}
	s, err := inspect.File(path, c.Int("top"))
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, s)
	}
	return s.Write(c.App.Writer)
}

// oneArg returns the command's single positional argument.
func oneArg(c *cli.Context, what string) (string, error) {
	if c.NArg() != 1 {
		return "", usagef("%s takes one %s argument, got %d (see qatc %s --help)", c.Command.Name, what, c.NArg(), c.Command.Name)
	}
	return c.Args().First(), nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

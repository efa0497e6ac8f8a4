package main

import (
	"fmt"
	"math"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/cmdline"
	"github.com/qatc/qatc/safeio"
	"github.com/qatc/qatc/seq2seq"
	"github.com/urfave/cli/v2"
)

// Every numeric flag is checked against its range before the command
// runs (cmdline.Checker, installed by newApp). A flag's range is a
// property of its name, the same in every command; a numeric flag
// without a range is a programming error that
// TestEveryNumericFlagHasARange catches.

// The ranges flagRanges uses besides cmdline's common ones.
var (
	inf         = math.Inf(1)
	positive    = cmdline.Positive
	nonNegative = cmdline.NonNegative
	above0      = cmdline.Above0
	bits        = cmdline.Range{Lo: 2, Hi: 8}
)

// flagRanges are the numeric flags' ranges, by flag name.
var flagRanges = map[string]cmdline.Range{
	// sizes and counts
	"batch": positive, "len": positive, "src-len": positive, "tgt-len": positive,
	"batch-tokens": positive, "calib-batches": positive, "epochs": positive, "accumulate": positive,
	"iters": positive, "beam": positive, "rounds": positive,
	"vocab":      {Lo: 5, Hi: inf, Zero: true},
	"block-size": {Lo: 2, Hi: inf, Zero: true},
	"threads":    nonNegative, "top": nonNegative, "max-len": nonNegative, "max-extra": nonNegative,
	"steps": nonNegative, "warmup": nonNegative, "initial-step": nonNegative,
	"valid-every": nonNegative, "checkpoint-every": nonNegative, "keep-checkpoints": nonNegative,
	"pad-id": nonNegative, "bos-id": nonNegative, "eos-id": nonNegative,
	"seed": cmdline.AnyValue,
	// quantization
	"bits": bits, "weight-bits": bits, "act-bits": bits,
	"weight-clip-max": above0, "act-clip-max": above0,
	"calib-percentile": {Lo: 0, LoOpen: true, Hi: 100},
	"smooth":           {Lo: 0, LoOpen: true, Hi: 1, Zero: true},
	// training
	"lr": above0, "clip-lr": nonNegative, "weight-decay": nonNegative, "grad-clip": nonNegative,
	"label-smoothing": {Lo: 0, Hi: 1, HiOpen: true},
	"kd-weight":       nonNegative, "temperature": above0, "kd-hidden": nonNegative,
	"weight-clip-l2": nonNegative, "act-clip-l2": nonNegative, "adam-eps": above0,
	// checks and decoding
	"atol": nonNegative, "rtol": nonNegative, "length-penalty": nonNegative,
}

// modelInput is an input model with its external-data files (for a model
// directory, every file of its layout). A model whose files cannot be
// listed yet is still an input: the command's own load reports why.
func modelInput(flag, path string) safeio.Group {
	if seq2seq.IsDir(path) {
		return safeio.Group{Flag: flag, Path: path, Parts: seq2seq.InputFiles(path)}
	}
	files, _ := graph.DataFiles(path)
	return safeio.Group{Flag: flag, Path: path, Parts: files}
}

// checkModelOutput checks plan with the output of a command that writes
// a model of the input's kind to out: a file (with its data file), or for
// a model directory a directory that replaces out whole, which must be
// absent, empty or one qatc wrote. out "" (a dry run) writes nothing.
func checkModelOutput(plan safeio.Plan, in, out string) error {
	dir := seq2seq.IsDir(in)
	switch {
	case out == "":
	case dir:
		plan.Dirs = append(plan.Dirs, safeio.Dir{Flag: "-o", Path: out, Replace: true})
	default:
		plan.Outputs = append(plan.Outputs, modelOutput("-o", out))
	}
	if err := safeio.Check(plan); err != nil {
		return err
	}
	if dir && out != "" {
		return seq2seq.CheckOutput(out)
	}
	return nil
}

// fileInputs lists plain input files (data, vocabularies) by flag; empty
// flags are skipped.
func fileInputs(c *cli.Context, flags ...string) []safeio.Group {
	var out []safeio.Group
	for _, f := range flags {
		if p := c.String(f); p != "" {
			out = append(out, safeio.Group{Flag: cmdline.FlagName(f), Path: p})
		}
	}
	return out
}

// modelOutput is an output model with the data file Save may write
// beside it.
func modelOutput(flag, path string) safeio.Group {
	return safeio.Group{Flag: flag, Path: path, Parts: []string{graph.DataPath(path)}}
}

// pipelineFlags are the flags of the commands that run a pipeline of
// passes (insert, finetune, export).
func pipelineFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "dump-after", Usage: "PASS|all DIR: write the graph after the named pass (comma-separated passes, or all) to DIR/NN-PASS.onnx"},
		&cli.StringFlag{Name: "dump-dir", Hidden: true},
		&cli.BoolFlag{Name: "passes", Usage: "list the command's passes (what each requires and produces) and exit"},
	}
}

// twoValued are flags that take two values (--dump-after PASS DIR):
// cmdline.ReorderArgs passes the second one as the hidden flag named here.
var twoValued = map[string]string{"dump-after": "dump-dir"}

// dumpFlags reads --dump-after PASS|all DIR into a pipeline's dump
// options (after and dir; dumped says on standard error what each dump
// wrote), checks the passes with check (the pipeline's CheckDump) and adds
// DIR to plan's directories.
func dumpFlags(c *cli.Context, plan *safeio.Plan, after *[]string, dir *string, dumped *func(pass, file string), check func([]string) error) error {
	if !c.IsSet("dump-after") {
		return nil
	}
	if c.String("dump-after") == "" || c.String("dump-dir") == "" {
		return usagef("--dump-after takes a pass (or all) and a directory: --dump-after PASS|all DIR")
	}
	*after, *dir = strings.Split(c.String("dump-after"), ","), c.String("dump-dir")
	if err := check(*after); err != nil {
		return cmdline.UsageError{Msg: err.Error()}
	}
	plan.Dirs = append(plan.Dirs, safeio.Dir{Flag: "--dump-after", Path: *dir})
	*dumped = func(pass, file string) { fmt.Fprintf(c.App.ErrWriter, "dumped %s after %s\n", file, pass) }
	return nil
}

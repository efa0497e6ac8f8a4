package main

import (
	"fmt"
	"math"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/safeio"
	"github.com/qatc/qatc/seq2seq"
	"github.com/urfave/cli/v2"
)

// Every command's flags are checked in one place, before the command does
// any work: required flags are present (named as such, not mistaken for
// a command by the help fallback), and every numeric flag lies in its
// range. A flag's range is a property of its name, the same in every
// command; a numeric flag without a range is a programming error that
// TestEveryNumericFlagHasARange catches.

// bound is a numeric flag's range: lo..hi, each end included unless open;
// zero also allows 0 where 0 means "the default".
type bound struct {
	lo, hi         float64
	loOpen, hiOpen bool
	zero           bool
}

var inf = math.Inf(1)

// Common ranges.
var (
	positive    = bound{lo: 1, hi: inf}
	nonNegative = bound{lo: 0, hi: inf}
	above0      = bound{lo: 0, loOpen: true, hi: inf}
	bits        = bound{lo: 2, hi: 8}
	anyValue    = bound{lo: -inf, hi: inf}
)

// flagRanges are the numeric flags' ranges, by flag name.
var flagRanges = map[string]bound{
	// sizes and counts
	"batch": positive, "len": positive, "src-len": positive, "tgt-len": positive,
	"batch-tokens": positive, "calib-batches": positive, "epochs": positive, "accumulate": positive,
	"iters": positive, "beam": positive, "rounds": positive,
	"vocab":      {lo: 5, hi: inf, zero: true},
	"block-size": {lo: 2, hi: inf, zero: true},
	"threads":    nonNegative, "top": nonNegative, "max-len": nonNegative, "max-extra": nonNegative,
	"steps": nonNegative, "warmup": nonNegative, "initial-step": nonNegative,
	"valid-every": nonNegative, "checkpoint-every": nonNegative, "keep-checkpoints": nonNegative,
	"pad-id": nonNegative, "bos-id": nonNegative, "eos-id": nonNegative,
	"seed": anyValue,
	// quantization
	"bits": bits, "weight-bits": bits, "act-bits": bits,
	"weight-clip-max": above0, "act-clip-max": above0,
	"calib-percentile": {lo: 0, loOpen: true, hi: 100},
	"smooth":           {lo: 0, loOpen: true, hi: 1, zero: true},
	// training
	"lr": above0, "clip-lr": nonNegative, "weight-decay": nonNegative, "grad-clip": nonNegative,
	"label-smoothing": {lo: 0, hi: 1, hiOpen: true},
	"kd-weight":       nonNegative, "temperature": above0, "kd-hidden": nonNegative,
	"weight-clip-l2": nonNegative, "act-clip-l2": nonNegative, "adam-eps": above0,
	// checks and decoding
	"atol": nonNegative, "rtol": nonNegative, "length-penalty": nonNegative,
}

// holds reports whether v lies in the range; NaN and infinities never do.
func (b bound) holds(v float64) bool {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return false
	}
	if b.zero && v == 0 {
		return true
	}
	return !(v < b.lo || b.loOpen && v == b.lo || v > b.hi || b.hiOpen && v == b.hi)
}

// describe says what a flag of this range takes.
func (b bound) describe(integer bool) string {
	noun := "a finite number"
	if integer {
		noun = "an integer"
	}
	var s string
	switch {
	case math.IsInf(b.hi, 1) && b.loOpen:
		s = fmt.Sprintf("%s greater than %g", noun, b.lo)
	case math.IsInf(b.hi, 1):
		s = fmt.Sprintf("%s of at least %g", noun, b.lo)
	default:
		lo, hi := "[", "]"
		if b.loOpen {
			lo = "("
		}
		if b.hiOpen {
			hi = ")"
		}
		if integer && !b.loOpen && !b.hiOpen {
			s = fmt.Sprintf("%s from %g to %g", noun, b.lo, b.hi)
		} else {
			s = fmt.Sprintf("%s in %s%g, %g%s", noun, lo, b.lo, b.hi, hi)
		}
	}
	if b.zero {
		s = "0 or " + s
	}
	return s
}

// flagName is how errors name a flag: its long form.
func flagName(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// requiredFlags are the flags each command must be given; newApp moves
// them here from urfave/cli, whose own check falls back to help and
// reports the first argument as an unknown command.
var requiredFlags = map[string][]cli.Flag{}

// takeRequired records cmd's required flags and clears the flags' own
// Required, so that checkFlags reports them.
func takeRequired(cmd *cli.Command) {
	for _, f := range cmd.Flags {
		switch f := f.(type) {
		case *cli.StringFlag:
			if f.Required {
				f.Required = false
				requiredFlags[cmd.Name] = append(requiredFlags[cmd.Name], f)
			}
		case *cli.IntFlag:
			if f.Required {
				f.Required = false
				requiredFlags[cmd.Name] = append(requiredFlags[cmd.Name], f)
			}
		}
	}
}

// checkFlags is every command's Before: required flags, then ranges.
func checkFlags(c *cli.Context) error {
	for _, f := range requiredFlags[c.Command.Name] {
		names := f.Names()
		if c.IsSet(names[0]) {
			continue
		}
		spelled := flagName(names[0])
		for _, a := range names[1:] {
			spelled = flagName(a) + "/" + spelled
		}
		usage := ""
		if d, ok := f.(cli.DocGenerationFlag); ok && d.GetUsage() != "" {
			usage = " (" + d.GetUsage() + ")"
		}
		return usagef("%s needs %s%s; see qatc %s --help", c.Command.Name, spelled, usage, c.Command.Name)
	}
	for _, f := range c.Command.Flags {
		name := f.Names()[0]
		b, ok := flagRanges[name]
		if !ok || !c.IsSet(name) {
			continue // defaults are in range (TestFlagDefaultsInRange)
		}
		var v float64
		integer := true
		switch x := c.Value(name).(type) {
		case int:
			v = float64(x)
		case int64:
			v = float64(x)
		case uint64:
			v = float64(x)
		case float64:
			v, integer = x, false
		default:
			continue
		}
		if !b.holds(v) {
			return usagef("%s %v: must be %s", flagName(name), c.Value(name), b.describe(integer))
		}
	}
	return nil
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
			out = append(out, safeio.Group{Flag: flagName(f), Path: p})
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
// reorderArgs passes the second one as the hidden flag named here.
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
		return usageError{err.Error()}
	}
	plan.Dirs = append(plan.Dirs, safeio.Dir{Flag: "--dump-after", Path: *dir})
	*dumped = func(pass, file string) { fmt.Fprintf(c.App.ErrWriter, "dumped %s after %s\n", file, pass) }
	return nil
}

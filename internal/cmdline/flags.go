package cmdline

import (
	"fmt"
	"math"

	"github.com/urfave/cli/v2"
)

// Every command's flags are checked in one place, before the command does
// any work: required flags are present (named as such, not mistaken for
// a command by the help fallback), and every numeric flag lies in its
// range. A flag's range is a property of its name, the same in every
// command.

// A Range is a numeric flag's range: Lo..Hi, each end included unless
// open; Zero also allows 0 where 0 means "the default".
type Range struct {
	Lo, Hi         float64
	LoOpen, HiOpen bool
	Zero           bool
}

var inf = math.Inf(1)

// Common ranges.
var (
	Positive    = Range{Lo: 1, Hi: inf}
	NonNegative = Range{Lo: 0, Hi: inf}
	Above0      = Range{Lo: 0, LoOpen: true, Hi: inf}
	AnyValue    = Range{Lo: -inf, Hi: inf}
)

// Holds reports whether v lies in the range; NaN and infinities never do.
func (r Range) Holds(v float64) bool {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return false
	}
	if r.Zero && v == 0 {
		return true
	}
	return !(v < r.Lo || r.LoOpen && v == r.Lo || v > r.Hi || r.HiOpen && v == r.Hi)
}

// Describe says what a flag of this range takes.
func (r Range) Describe(integer bool) string {
	noun := "a finite number"
	if integer {
		noun = "an integer"
	}
	var s string
	switch {
	case math.IsInf(r.Hi, 1) && r.LoOpen:
		s = fmt.Sprintf("%s greater than %g", noun, r.Lo)
	case math.IsInf(r.Hi, 1):
		s = fmt.Sprintf("%s of at least %g", noun, r.Lo)
	default:
		lo, hi := "[", "]"
		if r.LoOpen {
			lo = "("
		}
		if r.HiOpen {
			hi = ")"
		}
		if integer && !r.LoOpen && !r.HiOpen {
			s = fmt.Sprintf("%s from %g to %g", noun, r.Lo, r.Hi)
		} else {
			s = fmt.Sprintf("%s in %s%g, %g%s", noun, lo, r.Lo, r.Hi, hi)
		}
	}
	if r.Zero {
		s = "0 or " + s
	}
	return s
}

// FlagName is how errors name a flag: its long form.
func FlagName(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// A Checker checks every command's flags before it runs: the required
// ones are given, the numeric ones lie in their Ranges (by flag name).
type Checker struct {
	Ranges   map[string]Range
	required map[string][]cli.Flag
}

// Install makes the check every command's first Before. It takes the
// commands' required flags over from urfave/cli, whose own check falls
// back to help and reports the first argument as an unknown command.
func (k *Checker) Install(app *cli.App) {
	k.required = map[string][]cli.Flag{}
	for _, cmd := range app.Commands {
		for _, f := range cmd.Flags {
			switch f := f.(type) {
			case *cli.StringFlag:
				if f.Required {
					f.Required = false
					k.required[cmd.Name] = append(k.required[cmd.Name], f)
				}
			case *cli.IntFlag:
				if f.Required {
					f.Required = false
					k.required[cmd.Name] = append(k.required[cmd.Name], f)
				}
			}
		}
		if own := cmd.Before; own != nil {
			cmd.Before = func(ctx *cli.Context) error {
				if err := k.Check(ctx); err != nil {
					return err
				}
				return own(ctx)
			}
		} else {
			cmd.Before = k.Check
		}
	}
}

// Check checks c's required flags, then their ranges.
func (k *Checker) Check(c *cli.Context) error {
	for _, f := range k.required[c.Command.Name] {
		names := f.Names()
		if c.IsSet(names[0]) {
			continue
		}
		spelled := FlagName(names[0])
		for _, a := range names[1:] {
			spelled = FlagName(a) + "/" + spelled
		}
		usage := ""
		if d, ok := f.(cli.DocGenerationFlag); ok && d.GetUsage() != "" {
			usage = " (" + d.GetUsage() + ")"
		}
		return Usagef("%s needs %s%s; see %s %s --help", c.Command.Name, spelled, usage, c.App.Name, c.Command.Name)
	}
	for _, f := range c.Command.Flags {
		name := f.Names()[0]
		r, ok := k.Ranges[name]
		if !ok || !c.IsSet(name) {
			continue // defaults are in range (tested by the commands)
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
		if !r.Holds(v) {
			return Usagef("%s %v: must be %s", FlagName(name), c.Value(name), r.Describe(integer))
		}
	}
	return nil
}

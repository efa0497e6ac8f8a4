package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
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

// readInputs reads NAME=FILE.npy inputs.
func readInputs(files map[string]string) (map[string]*ort.Tensor, error) {
	inputs := map[string]*ort.Tensor{}
	for name, file := range files {
		t, err := ort.ReadNpy(file)
		if err != nil {
			return nil, fmt.Errorf("input %s: %w", name, err)
		}
		inputs[name] = t
	}
	return inputs, nil
}

type outputReport struct {
	Name  string  `json:"name"`
	Type  string  `json:"type"`
	Shape []int64 `json:"shape"`
	Min   float64 `json:"min"`
	Max   float64 `json:"max"`
	Mean  float64 `json:"mean"`
	Std   float64 `json:"std"`
	// Check is set when --expect named this output.
	Check *checkReport `json:"check,omitempty"`
}

type checkReport struct {
	File      string  `json:"file"`
	OK        bool    `json:"ok"`
	MaxAbsErr float64 `json:"max_abs_error"`
	Worst     []int64 `json:"worst_index,omitempty"`
	Got       float64 `json:"got"`
	Want      float64 `json:"want"`
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
	inputs, err := readInputs(inFiles)
	if err != nil {
		return err
	}
	expects := map[string]*ort.Tensor{}
	for name, file := range expFiles {
		t, err := ort.ReadNpy(file)
		if err != nil {
			return fmt.Errorf("--expect %s: %w", name, err)
		}
		expects[name] = t
	}
	s, err := ort.OpenFile(path, &ort.Options{Threads: c.Int("threads")})
	if err != nil {
		return err
	}
	defer s.Close()
	for name := range expects {
		if !hasIO(s.Outputs(), name) {
			return fmt.Errorf("--expect %s: %s has no output %q (outputs: %s)", name, path, name, ioNames(s.Outputs()))
		}
	}
	// The files --save writes are known from the outputs' names: two
	// names that map to one file are refused before running.
	saveFiles := map[string]string{}
	if dir := c.String("save"); dir != "" {
		byFile := map[string]string{}
		for _, info := range s.Outputs() {
			file := filepath.Join(dir, sanitize(info.Name)+".npy")
			if other, ok := byFile[file]; ok {
				return usagef("--save: outputs %q and %q would both be written to %s", other, info.Name, file)
			}
			byFile[file] = info.Name
			saveFiles[info.Name] = file
			plan.Outputs = append(plan.Outputs, safeio.Group{Flag: "--save", Path: file})
		}
		if err := safeio.Check(plan); err != nil {
			return err
		}
	}
	outs, err := s.Run(inputs)
	if err != nil {
		return err
	}
	var reports []outputReport
	failed := 0
	for _, info := range s.Outputs() {
		t := outs[info.Name]
		r := outputReport{Name: info.Name, Type: t.DType().String(), Shape: t.Shape}
		r.Min, r.Max, r.Mean, r.Std = stats(t)
		if want, ok := expects[info.Name]; ok {
			chk, err := check(t, want, c.Float64("atol"), c.Float64("rtol"))
			if err != nil {
				return fmt.Errorf("--expect %s: %w", info.Name, err)
			}
			chk.File = expFiles[info.Name]
			if !chk.OK {
				failed++
			}
			r.Check = chk
		}
		reports = append(reports, r)
	}
	if dir := c.String("save"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("--save: %w", err)
		}
	}
	for name, t := range outs {
		if file, ok := saveFiles[name]; ok {
			if err := ort.WriteNpy(file, t); err != nil {
				return fmt.Errorf("--save %s: %w", name, err)
			}
		}
	}
	if c.Bool("json") {
		if err := writeJSON(c.App.Writer, reports); err != nil {
			return err
		}
	} else {
		printOutputs(c.App.Writer, reports, c.Float64("atol"), c.Float64("rtol"))
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d checked outputs differ beyond atol %g + rtol %g", failed, len(expects), c.Float64("atol"), c.Float64("rtol"))
	}
	return nil
}

func hasIO(list []graph.IOInfo, name string) bool {
	for _, v := range list {
		if v.Name == name {
			return true
		}
	}
	return false
}

func ioNames(list []graph.IOInfo) string {
	names := make([]string, len(list))
	for i, v := range list {
		names[i] = v.Name
	}
	return strings.Join(names, ", ")
}

// sanitize makes a value name usable as a file name.
func sanitize(name string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r == ':' || r == 0 {
			return '_'
		}
		return r
	}, name)
}

func printOutputs(w io.Writer, reports []outputReport, atol, rtol float64) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	defer tw.Flush()
	fmt.Fprintln(tw, "output\ttype\tshape\tmin\tmax\tmean\tstd\tcheck")
	for _, r := range reports {
		chk := ""
		if r.Check != nil {
			if r.Check.OK {
				chk = fmt.Sprintf("ok (max abs err %.3g)", r.Check.MaxAbsErr)
			} else {
				chk = fmt.Sprintf("FAIL at %v: got %.7g, want %.7g (max abs err %.3g > atol %g + rtol %g·|want|)",
					r.Check.Worst, r.Check.Got, r.Check.Want, r.Check.MaxAbsErr, atol, rtol)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%.6g\t%.6g\t%.6g\t%.6g\t%s\n", r.Name, r.Type, r.Shape, r.Min, r.Max, r.Mean, r.Std, chk)
	}
}

// values returns t's elements as float64.
func values(t *ort.Tensor) ([]float64, error) {
	switch d := t.Data.(type) {
	case []float32:
		out := make([]float64, len(d))
		for i, v := range d {
			out[i] = float64(v)
		}
		return out, nil
	case []float64:
		return d, nil
	case []int64:
		out := make([]float64, len(d))
		for i, v := range d {
			out[i] = float64(v)
		}
		return out, nil
	case []int32:
		out := make([]float64, len(d))
		for i, v := range d {
			out[i] = float64(v)
		}
		return out, nil
	case []int8:
		out := make([]float64, len(d))
		for i, v := range d {
			out[i] = float64(v)
		}
		return out, nil
	case []uint8:
		out := make([]float64, len(d))
		for i, v := range d {
			out[i] = float64(v)
		}
		return out, nil
	case []bool:
		out := make([]float64, len(d))
		for i, v := range d {
			if v {
				out[i] = 1
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("unsupported element type %T", t.Data)
}

func stats(t *ort.Tensor) (lo, hi, mean, std float64) {
	v, err := values(t)
	if err != nil || len(v) == 0 {
		return math.NaN(), math.NaN(), math.NaN(), math.NaN()
	}
	lo, hi = math.Inf(1), math.Inf(-1)
	var sum, sq float64
	for _, x := range v {
		lo, hi = math.Min(lo, x), math.Max(hi, x)
		sum += x
	}
	mean = sum / float64(len(v))
	for _, x := range v {
		sq += (x - mean) * (x - mean)
	}
	return lo, hi, mean, math.Sqrt(sq / float64(len(v)))
}

// check compares got with want elementwise: |got − want| ≤ atol + rtol·|want|.
func check(got, want *ort.Tensor, atol, rtol float64) (*checkReport, error) {
	if fmt.Sprint(got.Shape) != fmt.Sprint(want.Shape) {
		return nil, fmt.Errorf("shape %v, expected file has %v", got.Shape, want.Shape)
	}
	g, err := values(got)
	if err != nil {
		return nil, err
	}
	w, err := values(want)
	if err != nil {
		return nil, err
	}
	r := &checkReport{OK: true}
	worst, worstExcess := -1, math.Inf(-1)
	for i := range g {
		d := math.Abs(g[i] - w[i])
		if math.IsNaN(d) {
			d = math.Inf(1)
		}
		r.MaxAbsErr = math.Max(r.MaxAbsErr, d)
		if excess := d - (atol + rtol*math.Abs(w[i])); excess > worstExcess {
			worst, worstExcess = i, excess
		}
	}
	if worst >= 0 {
		r.OK = worstExcess <= 0
		r.Worst = unravel(worst, got.Shape)
		r.Got, r.Want = g[worst], w[worst]
	}
	return r, nil
}

// unravel turns a flat index into a multi-index over shape.
func unravel(i int, shape []int64) []int64 {
	idx := make([]int64, len(shape))
	for d := len(shape) - 1; d >= 0; d-- {
		if shape[d] > 0 {
			idx[d] = int64(i) % shape[d]
			i /= int(shape[d])
		}
	}
	return idx
}

package eval

import (
	"fmt"
	"github.com/qatc/qatc/decode"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/safeio"
)

// Running a model on tensors and comparing outputs: qatc run and qatc
// compare, and the statistics they report.

// RunOptions configure RunFile.
type RunOptions struct {
	// Inputs and Expect map names to .npy files: the model's inputs, and
	// outputs that must match within Atol + Rtol·|want|.
	Inputs, Expect map[string]string
	Atol, Rtol     float64
	// SaveDir, when set, receives every output as NAME.npy; Plan is the
	// command's file plan, checked again with those files before the run
	// (two outputs that would share a file are refused).
	SaveDir string
	Plan    safeio.Plan
	Threads int
}

// OutputReport describes one output of a run.
type OutputReport struct {
	Name  string  `json:"name"`
	Type  string  `json:"type"`
	Shape []int64 `json:"shape"`
	Min   float64 `json:"min"`
	Max   float64 `json:"max"`
	Mean  float64 `json:"mean"`
	Std   float64 `json:"std"`
	// Check is set when RunOptions.Expect named this output.
	Check *CheckReport `json:"check,omitempty"`
}

// CheckReport is an output's check against its expected values.
type CheckReport struct {
	File      string  `json:"file"`
	OK        bool    `json:"ok"`
	MaxAbsErr float64 `json:"max_abs_error"`
	Worst     []int64 `json:"worst_index,omitempty"`
	Got       float64 `json:"got"`
	Want      float64 `json:"want"`
}

// A MismatchError says how many checked outputs differ beyond the
// tolerance; the reports were still made.
type MismatchError struct {
	Failed, Checked int
	Atol, Rtol      float64
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("%d of %d checked outputs differ beyond atol %g + rtol %g", e.Failed, e.Checked, e.Atol, e.Rtol)
}

// RunFile runs the model at path (a file, or a model directory on its
// composed inputs, through its cache) on the .npy inputs, describes every
// output, checks the expected ones and saves the outputs when asked. A
// failed check returns the reports with a *MismatchError.
func RunFile(path string, o RunOptions) ([]OutputReport, error) {
	inputs, err := ReadNpys(o.Inputs, "input")
	if err != nil {
		return nil, err
	}
	expects, err := ReadNpys(o.Expect, "--expect")
	if err != nil {
		return nil, err
	}
	s, err := openRunner(path, &ort.Options{Threads: o.Threads})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	for name := range expects {
		if !slices.ContainsFunc(s.Outputs(), func(v graph.IOInfo) bool { return v.Name == name }) {
			return nil, fmt.Errorf("--expect %s: %s has no output %q (outputs: %s)", name, path, name, ioNames(s.Outputs()))
		}
	}
	// The files SaveDir gets are known from the outputs' names: two names
	// that map to one file are refused before running.
	saveFiles := map[string]string{}
	if o.SaveDir != "" {
		byFile := map[string]string{}
		for _, info := range s.Outputs() {
			file := filepath.Join(o.SaveDir, fileName(info.Name)+".npy")
			if other, ok := byFile[file]; ok {
				return nil, &safeio.CheckError{Usage: true, Msg: fmt.Sprintf("--save: outputs %q and %q would both be written to %s", other, info.Name, file)}
			}
			byFile[file] = info.Name
			saveFiles[info.Name] = file
			o.Plan.Outputs = append(o.Plan.Outputs, safeio.Group{Flag: "--save", Path: file})
		}
		if err := safeio.Check(o.Plan); err != nil {
			return nil, err
		}
	}
	outs, err := s.Run(inputs)
	if err != nil {
		return nil, err
	}
	var reports []OutputReport
	failed := 0
	for _, info := range s.Outputs() {
		t := outs[info.Name]
		r := OutputReport{Name: info.Name, Type: t.DType().String(), Shape: t.Shape}
		r.Min, r.Max, r.Mean, r.Std = Stats(t)
		if want, ok := expects[info.Name]; ok {
			chk, err := Check(t, want, o.Atol, o.Rtol)
			if err != nil {
				return nil, fmt.Errorf("--expect %s: %w", info.Name, err)
			}
			chk.File = o.Expect[info.Name]
			if !chk.OK {
				failed++
			}
			r.Check = chk
		}
		reports = append(reports, r)
	}
	if o.SaveDir != "" {
		if err := os.MkdirAll(o.SaveDir, 0o755); err != nil {
			return nil, fmt.Errorf("--save: %w", err)
		}
	}
	for name, t := range outs {
		if file, ok := saveFiles[name]; ok {
			if err := ort.WriteNpy(file, t); err != nil {
				return nil, fmt.Errorf("--save %s: %w", name, err)
			}
		}
	}
	if failed > 0 {
		return reports, &MismatchError{failed, len(expects), o.Atol, o.Rtol}
	}
	return reports, nil
}

// WriteOutputs prints a run's reports as an aligned table.
func WriteOutputs(w io.Writer, reports []OutputReport, atol, rtol float64) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
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
	return tw.Flush()
}

// ReadNpys reads NAME=FILE.npy tensors; what names them in errors (the
// flag).
func ReadNpys(files map[string]string, what string) (map[string]*ort.Tensor, error) {
	out := map[string]*ort.Tensor{}
	for name, file := range files {
		t, err := ort.ReadNpy(file)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", what, name, err)
		}
		out[name] = t
	}
	return out, nil
}

func ioNames(list []graph.IOInfo) string {
	names := make([]string, len(list))
	for i, v := range list {
		names[i] = v.Name
	}
	return strings.Join(names, ", ")
}

// fileName makes a value name usable as a file name.
func fileName(name string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r == ':' || r == 0 {
			return '_'
		}
		return r
	}, name)
}

// Float64s returns t's elements as float64.
func Float64s(t *ort.Tensor) ([]float64, error) {
	switch d := t.Data.(type) {
	case []float32:
		return widen(d), nil
	case []float64:
		return d, nil
	case []int64:
		return widen(d), nil
	case []int32:
		return widen(d), nil
	case []int8:
		return widen(d), nil
	case []uint8:
		return widen(d), nil
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

func widen[T float32 | int64 | int32 | int8 | uint8](d []T) []float64 {
	out := make([]float64, len(d))
	for i, v := range d {
		out[i] = float64(v)
	}
	return out
}

// Stats returns the minimum, maximum, mean and standard deviation of t's
// elements (NaN for an empty or unsupported tensor).
func Stats(t *ort.Tensor) (lo, hi, mean, std float64) {
	v, err := Float64s(t)
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

// Check compares got with want elementwise: |got − want| ≤ atol + rtol·|want|.
func Check(got, want *ort.Tensor, atol, rtol float64) (*CheckReport, error) {
	if fmt.Sprint(got.Shape) != fmt.Sprint(want.Shape) {
		return nil, fmt.Errorf("shape %v, expected file has %v", got.Shape, want.Shape)
	}
	g, err := Float64s(got)
	if err != nil {
		return nil, err
	}
	w, err := Float64s(want)
	if err != nil {
		return nil, err
	}
	r := &CheckReport{OK: true}
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

// runner is what run and compare run: an onnxruntime session over a
// file, or a model directory, which takes its composed model's inputs and
// runs teacher-forced through its cache (Incremental.Run).
type runner interface {
	Inputs() []graph.IOInfo
	Outputs() []graph.IOInfo
	Run(inputs map[string]*ort.Tensor, outputs ...string) (map[string]*ort.Tensor, error)
	Close() error
}

// openRunner opens path, a model file or a model directory.
func openRunner(path string, opts *ort.Options) (runner, error) {
	if decode.IsIncrementalDir(path) {
		return decode.OpenIncremental(path, opts)
	}
	return ort.OpenFile(path, opts)
}

// CompareOptions configure CompareFiles.
type CompareOptions struct {
	// Inputs maps input names to .npy files; without them valid random
	// inputs are generated (ort.RandomInputs) with Batch, Len, Vocab (0: the
	// logits' last dimension) and Seed.
	Inputs            map[string]string
	Batch, Len, Vocab int
	Seed              uint64
	Threads           int
}

// Comparison holds the error figures of one output.
type Comparison struct {
	Output    string  `json:"output"`
	Shape     []int64 `json:"shape"`
	MaxAbsErr Num     `json:"max_abs_error"`
	RelErr    Num     `json:"relative_error"`
	SQNR      Num     `json:"sqnr_db"`
	Top1      Num     `json:"top1_agreement"`
}

// Num is a float64 whose JSON form is null when it is not finite (NaN for
// "not applicable", +Inf for an exact match's SQNR).
type Num float64

// MarshalJSON writes null for a value that is not finite.
func (n Num) MarshalJSON() ([]byte, error) {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return []byte(strconv.FormatFloat(f, 'g', -1, 64)), nil
}

// CompareFiles runs the models at pathA and pathB (files, or model
// directories teacher-forced through their cache on their composed inputs,
// input_ids and decoder_input_ids, with logits out) on the same inputs and
// compares every output they share, B against the reference A.
func CompareFiles(pathA, pathB string, o CompareOptions) ([]Comparison, error) {
	opts := &ort.Options{Threads: o.Threads}
	a, err := openRunner(pathA, opts)
	if err != nil {
		return nil, err
	}
	defer a.Close()
	b, err := openRunner(pathB, opts)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	var inputs map[string]*ort.Tensor
	if len(o.Inputs) > 0 {
		if inputs, err = ReadNpys(o.Inputs, "input"); err != nil {
			return nil, err
		}
	} else {
		vocab := o.Vocab
		if vocab == 0 {
			vocab = vocabOf(a.Outputs())
		}
		if vocab > 0 {
			if err := ort.CheckSize("logits", 4, ort.Factor{Name: "--batch", Value: int64(o.Batch)},
				ort.Factor{Name: "--len", Value: int64(o.Len)}, ort.Factor{Name: "vocabulary", Value: int64(vocab)}); err != nil {
				return nil, err
			}
		}
		pad := int64(-1)
		for _, r := range []runner{a, b} {
			if m, ok := r.(*decode.Incremental); ok {
				pad = m.Config.PadID
			}
		}
		if inputs, err = ort.RandomInputs(a.Inputs(), o.Batch, o.Len, vocab, pad, o.Seed); err != nil {
			return nil, fmt.Errorf("%s: %w", pathA, err)
		}
	}
	for _, in := range b.Inputs() {
		if inputs[in.Name] == nil {
			return nil, fmt.Errorf("%s needs input %q that %s does not have; give it with --input", pathB, in.Name, pathA)
		}
	}
	outA, err := a.Run(inputs)
	if err != nil {
		return nil, err
	}
	inB := map[string]*ort.Tensor{}
	for _, in := range b.Inputs() {
		inB[in.Name] = inputs[in.Name]
	}
	outB, err := b.Run(inB)
	if err != nil {
		return nil, err
	}
	var rows []Comparison
	for _, out := range a.Outputs() {
		tb, ok := outB[out.Name]
		if !ok {
			continue
		}
		r, err := CompareTensors(outA[out.Name], tb)
		if err != nil {
			return nil, fmt.Errorf("output %s: %w", out.Name, err)
		}
		r.Output = out.Name
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("%s and %s have no output name in common (A: %s; B: %s)", pathA, pathB, ioNames(a.Outputs()), ioNames(b.Outputs()))
	}
	return rows, nil
}

// vocabOf guesses the vocabulary from a float output of rank 3 with a
// static last dimension (the logits).
func vocabOf(outs []graph.IOInfo) int {
	for _, o := range outs {
		if o.Elem == graph.Float && len(o.Dims) == 3 && o.Dims[2] > 0 {
			return int(o.Dims[2])
		}
	}
	return 0
}

// CompareTensors computes error figures of b against the reference a:
// max abs error, relative error, SQNR and, for a last axis of several
// classes, the share of rows whose argmax agrees.
func CompareTensors(a, b *ort.Tensor) (Comparison, error) {
	r := Comparison{Shape: a.Shape}
	if fmt.Sprint(a.Shape) != fmt.Sprint(b.Shape) {
		return r, fmt.Errorf("shapes differ: %v vs %v", a.Shape, b.Shape)
	}
	va, err := Float64s(a)
	if err != nil {
		return r, err
	}
	vb, err := Float64s(b)
	if err != nil {
		return r, err
	}
	var sig, noise, maxAbs float64
	for i := range va {
		d := va[i] - vb[i]
		maxAbs = math.Max(maxAbs, math.Abs(d))
		sig += va[i] * va[i]
		noise += d * d
	}
	r.MaxAbsErr = Num(maxAbs)
	r.RelErr = Num(math.Sqrt(noise / sig))
	r.SQNR = Num(10 * math.Log10(sig/noise))
	r.Top1 = Num(math.NaN())
	if len(a.Shape) >= 2 && a.Shape[len(a.Shape)-1] > 1 {
		k := int(a.Shape[len(a.Shape)-1])
		agree, rows := 0, len(va)/k
		for i := 0; i < rows; i++ {
			if decode.Argmax(va[i*k:(i+1)*k]) == decode.Argmax(vb[i*k:(i+1)*k]) {
				agree++
			}
		}
		r.Top1 = Num(float64(agree) / float64(rows))
	}
	return r, nil
}

// WriteComparisons prints comparisons as an aligned table.
func WriteComparisons(w io.Writer, rows []Comparison) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "output\tshape\tmax abs err\trel err\tSQNR dB\ttop-1 agree")
	for _, r := range rows {
		top1 := "-"
		if !math.IsNaN(float64(r.Top1)) {
			top1 = fmt.Sprintf("%.2f%%", 100*r.Top1)
		}
		fmt.Fprintf(tw, "%s\t%v\t%.4g\t%.4g\t%.1f\t%s\n", r.Output, r.Shape, r.MaxAbsErr, r.RelErr, r.SQNR, top1)
	}
	return tw.Flush()
}

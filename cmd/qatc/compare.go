package main

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strconv"
	"text/tabwriter"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/urfave/cli/v2"
)

func compareCommand() *cli.Command {
	return &cli.Command{
		Name:      "compare",
		Usage:     "run two models on the same inputs and compare their outputs (e.g. fp32 vs QAT or int8)",
		ArgsUsage: "MODEL_A MODEL_B",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "input", Usage: "NAME=FILE.npy (default: valid random inputs from the shapes)"},
			&cli.IntFlag{Name: "batch", Value: 4, Usage: "batch size of generated inputs"},
			&cli.IntFlag{Name: "len", Value: 16, Usage: "sequence length of generated inputs"},
			&cli.IntFlag{Name: "vocab", Usage: "token ids of generated inputs lie in [4, vocab) (default: the logits' last dimension)"},
			&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "seed of generated inputs"},
			&cli.IntFlag{Name: "threads", Usage: "intra-op threads (0: onnxruntime's default)"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON document"},
		},
		Action: compareAction,
	}
}

// comparison holds the error figures of one output.
type comparison struct {
	Output    string  `json:"output"`
	Shape     []int64 `json:"shape"`
	MaxAbsErr num     `json:"max_abs_error"`
	RelErr    num     `json:"relative_error"`
	SQNR      num     `json:"sqnr_db"`
	Top1      num     `json:"top1_agreement"`
}

// num is a float64 whose JSON form is null when it is not finite (NaN for
// "not applicable", +Inf for an exact match's SQNR).
type num float64

func (n num) MarshalJSON() ([]byte, error) {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return []byte(strconv.FormatFloat(f, 'g', -1, 64)), nil
}

func compareAction(c *cli.Context) error {
	if c.NArg() != 2 {
		return usagef("compare takes two models, MODEL_A MODEL_B, got %d arguments", c.NArg())
	}
	pathA, pathB := c.Args().Get(0), c.Args().Get(1)
	opts := &ort.Options{Threads: c.Int("threads")}
	a, err := ort.OpenFile(pathA, opts)
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := ort.OpenFile(pathB, opts)
	if err != nil {
		return err
	}
	defer b.Close()

	files, _, err := namedFiles(c, "input")
	if err != nil {
		return err
	}
	var inputs map[string]*ort.Tensor
	if len(files) > 0 {
		if inputs, err = readInputs(files); err != nil {
			return err
		}
	} else {
		vocab := c.Int("vocab")
		if vocab == 0 {
			vocab = vocabOf(a.Outputs())
		}
		if vocab > 0 {
			if err := ort.CheckSize("logits", 4, ort.Factor{Name: "--batch", Value: int64(c.Int("batch"))},
				ort.Factor{Name: "--len", Value: int64(c.Int("len"))}, ort.Factor{Name: "vocabulary", Value: int64(vocab)}); err != nil {
				return err
			}
		}
		if inputs, err = randomInputs(a.Inputs(), c.Int("batch"), c.Int("len"), vocab, c.Uint64("seed")); err != nil {
			return fmt.Errorf("%s: %w", pathA, err)
		}
	}
	for _, in := range b.Inputs() {
		if inputs[in.Name] == nil {
			return fmt.Errorf("%s needs input %q that %s does not have; give it with --input", pathB, in.Name, pathA)
		}
	}
	outA, err := a.Run(inputs)
	if err != nil {
		return err
	}
	outB, err := b.Run(pickInputs(inputs, b.Inputs()))
	if err != nil {
		return err
	}
	var rows []comparison
	for _, o := range a.Outputs() {
		tb, ok := outB[o.Name]
		if !ok {
			continue
		}
		r, err := compareTensors(outA[o.Name], tb)
		if err != nil {
			return fmt.Errorf("output %s: %w", o.Name, err)
		}
		r.Output = o.Name
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		return fmt.Errorf("%s and %s have no output name in common (A: %s; B: %s)", pathA, pathB, ioNames(a.Outputs()), ioNames(b.Outputs()))
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, map[string]any{"model_a": pathA, "model_b": pathB, "outputs": rows})
	}
	printComparisons(c.App.Writer, rows)
	return nil
}

func pickInputs(all map[string]*ort.Tensor, want []graph.IOInfo) map[string]*ort.Tensor {
	out := map[string]*ort.Tensor{}
	for _, in := range want {
		out[in.Name] = all[in.Name]
	}
	return out
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

// randomInputs makes valid inputs from the declared shapes: token ids for
// integer inputs, standard normals for float ones; dynamic dimensions take
// batch (axis 0) or length (other axes).
func randomInputs(ins []graph.IOInfo, batch, length, vocab int, seed uint64) (map[string]*ort.Tensor, error) {
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	out := map[string]*ort.Tensor{}
	for _, in := range ins {
		shape := make([]int64, len(in.Dims))
		factors := make([]ort.Factor, len(in.Dims))
		for i, d := range in.Dims {
			switch {
			case d >= 0:
				shape[i] = d
				factors[i] = ort.Factor{Name: fmt.Sprintf("dim %d of %q (fixed by the model)", i, in.Name), Value: d}
			case i == 0:
				shape[i] = int64(batch)
				factors[i] = ort.Factor{Name: "--batch", Value: shape[i]}
			default:
				shape[i] = int64(length)
				factors[i] = ort.Factor{Name: "--len", Value: shape[i]}
			}
		}
		if err := ort.CheckSize(fmt.Sprintf("input %q", in.Name), 8, factors...); err != nil {
			return nil, err
		}
		n := int(graph.NumElements(shape))
		switch in.Elem {
		case graph.Int64, graph.Int32:
			if vocab <= 4 {
				return nil, fmt.Errorf("cannot generate token ids for input %q: vocabulary unknown; give --vocab or --input", in.Name)
			}
			ids := make([]int64, n)
			for i := range ids {
				ids[i] = 4 + rng.Int64N(int64(vocab-4))
			}
			if in.Elem == graph.Int64 {
				out[in.Name] = ort.Int64(shape, ids)
			} else {
				v := make([]int32, n)
				for i, x := range ids {
					v[i] = int32(x)
				}
				out[in.Name] = &ort.Tensor{Shape: shape, Data: v}
			}
		case graph.Float:
			v := make([]float32, n)
			for i := range v {
				v[i] = float32(rng.NormFloat64())
			}
			out[in.Name] = ort.Float32(shape, v)
		default:
			return nil, fmt.Errorf("cannot generate values for input %q of type %s; give it with --input", in.Name, in.Elem)
		}
	}
	return out, nil
}

// compareTensors computes error figures of b against the reference a.
func compareTensors(a, b *ort.Tensor) (comparison, error) {
	r := comparison{Shape: a.Shape}
	if fmt.Sprint(a.Shape) != fmt.Sprint(b.Shape) {
		return r, fmt.Errorf("shapes differ: %v vs %v", a.Shape, b.Shape)
	}
	va, err := values(a)
	if err != nil {
		return r, err
	}
	vb, err := values(b)
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
	r.MaxAbsErr = num(maxAbs)
	r.RelErr = num(math.Sqrt(noise / sig))
	r.SQNR = num(10 * math.Log10(sig/noise))
	r.Top1 = num(math.NaN())
	if len(a.Shape) >= 2 && a.Shape[len(a.Shape)-1] > 1 {
		k := int(a.Shape[len(a.Shape)-1])
		agree, rows := 0, len(va)/k
		for i := 0; i < rows; i++ {
			if argmax(va[i*k:(i+1)*k]) == argmax(vb[i*k:(i+1)*k]) {
				agree++
			}
		}
		r.Top1 = num(float64(agree) / float64(rows))
	}
	return r, nil
}

// argmax returns the index of v's largest element (the first on ties).
func argmax[T cmp.Ordered](v []T) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

func printComparisons(w io.Writer, rows []comparison) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	defer tw.Flush()
	fmt.Fprintln(tw, "output\tshape\tmax abs err\trel err\tSQNR dB\ttop-1 agree")
	for _, r := range rows {
		top1 := "-"
		if !math.IsNaN(float64(r.Top1)) {
			top1 = fmt.Sprintf("%.2f%%", 100*r.Top1)
		}
		fmt.Fprintf(tw, "%s\t%v\t%.4g\t%.4g\t%.1f\t%s\n", r.Output, r.Shape, r.MaxAbsErr, r.RelErr, r.SQNR, top1)
	}
}

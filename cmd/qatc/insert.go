package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/calibrate"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/passes/smooth"
	"github.com/qatc/qatc/safeio"
	"github.com/qatc/qatc/seq2seq"
	"github.com/qatc/qatc/train"
	"github.com/urfave/cli/v2"
)

func insertCommand() *cli.Command {
	return &cli.Command{
		Name:      "insert",
		Usage:     "annotate an fp32 model with quantizers (QuantizeLinear/DequantizeLinear) on weights and activations",
		ArgsUsage: "MODEL",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "the QAT model to write", Required: true},
			&cli.BoolFlag{Name: "in-place", Usage: "allow -o to name the input model"},
			&cli.StringFlag{Name: "quant-params", Usage: "NeurST's quant_params YAML flow string, e.g. \"{'quant_strategy':'min/max','quant_bits':8,'quant_weight_clip_max':1.0,'quant_act_clip_max':16.0}\""},
			&cli.IntFlag{Name: "bits", Usage: "weight and activation bits (2-8; default 8)"},
			&cli.IntFlag{Name: "weight-bits", Usage: "weight bits (2-8), overrides --bits"},
			&cli.IntFlag{Name: "act-bits", Usage: "activation bits (2-8), overrides --bits"},
			&cli.Float64Flag{Name: "weight-clip-max", Usage: "initial weight clip (NeurST: 1.0)"},
			&cli.Float64Flag{Name: "act-clip-max", Usage: "initial activation clip (NeurST: 16.0)"},
			&cli.BoolFlag{Name: "per-channel", Usage: "one weight clip per output channel"},
			&cli.StringFlag{Name: "weight-granularity", Usage: "tensor, channel or block"},
			&cli.IntFlag{Name: "block-size", Usage: "block length along the input axis for --weight-granularity block (32, 64, 128)"},
			&cli.StringFlag{Name: "weight-init", Usage: "weight clips start at: value (--weight-clip-max), max, percentile or mse of |w|"},
			&cli.StringSliceFlag{Name: "include", Usage: "quantize only tensors or nodes matching this regular expression (repeatable)"},
			&cli.StringSliceFlag{Name: "exclude", Usage: "do not quantize tensors or nodes matching this regular expression (repeatable)"},
			&cli.StringFlag{Name: "recipe", Usage: "YAML file of rules: match, kind, bits, clip, per_channel"},
			&cli.BoolFlag{Name: "dry-run", Usage: "list the quantizers that would be inserted and write nothing"},
			&cli.StringFlag{Name: "calib-src", Usage: "source sentences for calibration (one per line)"},
			&cli.StringFlag{Name: "calib-tgt", Usage: "target sentences for calibration (default: the source file, for the decoder's inputs)"},
			&cli.StringFlag{Name: "calib-method", Usage: "minmax, percentile or mse (with --calib-src; also starts weight clips at max |w|)"},
			&cli.IntFlag{Name: "calib-batches", Value: 16, Usage: "calibration batches"},
			&cli.Float64Flag{Name: "calib-percentile", Value: calibrate.DefaultPercentile, Usage: "percentile for --calib-method percentile"},
			&cli.IntFlag{Name: "batch-tokens", Value: 4096, Usage: "padded tokens per calibration batch"},
			&cli.Float64Flag{Name: "smooth", Usage: "SmoothQuant strength α in (0, 1]: move the per-channel range of LayerNorm outputs into the weights that read them, measured on --calib-src, before inserting (0: off)"},
			&cli.IntFlag{Name: "threads", Usage: "intra-op threads (0: onnxruntime's default)"},
			&cli.BoolFlag{Name: "json", Usage: "print the quantization record as JSON"},
		}, dataFlags()...),
		Action: insertAction,
	}
}

// dataFlags are the flags every command reading sentence files shares.
func dataFlags() []cli.Flag {
	return append(append([]cli.Flag{
		&cli.StringFlag{Name: "spm", Usage: "SentencePiece model: data files hold text (default: space-separated token ids)"},
	}, roleFlags()...), specialFlags()...)
}

// roleFlags name a seq2seq model's inputs and logits where finding them
// by shape is not enough.
func roleFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "src-input", Usage: "the model's source-ids input (default: found by shape)"},
		&cli.StringFlag{Name: "tgt-input", Usage: "the model's target-ids input (default: found by shape)"},
		&cli.StringFlag{Name: "logits-output", Usage: "the model's logits output (default: found by shape)"},
	}
}

// specialFlags are the special token ids.
func specialFlags() []cli.Flag {
	return []cli.Flag{
		&cli.Int64Flag{Name: "pad-id", Value: 0, Usage: "padding id"},
		&cli.Int64Flag{Name: "bos-id", Value: 2, Usage: "begin-of-sentence id"},
		&cli.Int64Flag{Name: "eos-id", Value: 3, Usage: "end-of-sentence id"},
	}
}

// quantParams builds the insert parameters from the flags: NeurST's string
// first, then the individual flags on top.
func quantParams(c *cli.Context) (quantize.Params, error) {
	p := quantize.DefaultParams()
	if s := c.String("quant-params"); s != "" {
		var err error
		if p, err = quantize.ParseNeurST(s); err != nil {
			return p, usagef("--quant-params: %v", err)
		}
	}
	if c.IsSet("bits") {
		p.WeightBits, p.ActBits = c.Int("bits"), c.Int("bits")
	}
	if c.IsSet("weight-bits") {
		p.WeightBits = c.Int("weight-bits")
	}
	if c.IsSet("act-bits") {
		p.ActBits = c.Int("act-bits")
	}
	if c.IsSet("weight-clip-max") {
		p.WeightClipMax = float32(c.Float64("weight-clip-max"))
	}
	if c.IsSet("act-clip-max") {
		p.ActClipMax = float32(c.Float64("act-clip-max"))
	}
	p.PerChannel = c.Bool("per-channel")
	if g := c.String("weight-granularity"); g != "" {
		p.Granularity = g
	}
	p.BlockSize = c.Int("block-size")
	p.WeightInit = c.String("weight-init")
	if p.WeightInit == "" && calibMethod(c) != "" {
		p.WeightInit = quantize.InitMax
	}
	p.Include = c.StringSlice("include")
	p.Exclude = c.StringSlice("exclude")
	if path := c.String("recipe"); path != "" {
		data, err := safeio.ReadFile(path, 64<<20)
		if err != nil {
			return p, fmt.Errorf("--recipe: %w", err)
		}
		if p.Recipe, err = quantize.ParseRecipe(data); err != nil {
			return p, fmt.Errorf("--recipe %s: %w", path, err)
		}
	}
	return p, nil
}

// readData reads a parallel file pair with the command's data flags.
func readData(c *cli.Context, src, tgt string, roles seq2seq.Model, maxLen int) (*train.Dataset, error) {
	opts := train.DataOptions{
		Vocab:        roles.Vocab,
		SrcPositions: roles.SrcPositions, TgtPositions: roles.TgtPositions,
		MaxLen:  maxLen,
		Special: seq2seq.Special{Pad: c.Int64("pad-id"), BOS: c.Int64("bos-id"), EOS: c.Int64("eos-id")},
	}
	if path := c.String("spm"); path != "" {
		tok, err := seq2seq.LoadSentencePiece(path)
		if err != nil {
			return nil, err
		}
		opts.Tokenizer = tok
	}
	return train.ReadParallel(src, tgt, opts)
}

// roleFlagValues are the roles the role flags name.
func roleFlagValues(c *cli.Context) seq2seq.Roles {
	return seq2seq.Roles{Src: c.String("src-input"), Tgt: c.String("tgt-input"), Logits: c.String("logits-output")}
}

// modelRoles finds the seq2seq roles, honouring the role flags.
func modelRoles(c *cli.Context, m *graph.Model) (seq2seq.Model, error) {
	return seq2seq.Describe(m, roleFlagValues(c))
}

// calibMethod is the calibration the flags ask for: --calib-method, or
// minmax when --calib-src comes alone; "" for none. Weight clips then
// start at max |w| unless --weight-init says otherwise, whichever way the
// method was chosen.
func calibMethod(c *cli.Context) string {
	if m := c.String("calib-method"); m != "" || c.String("calib-src") == "" {
		return m
	}
	return calibrate.MinMax
}

func insertAction(c *cli.Context) error {
	path, err := oneArg(c, "MODEL")
	if err != nil {
		return err
	}
	out := c.String("output")
	plan := safeio.Plan{
		InPlace: c.Bool("in-place"), InPlaceFlag: "--in-place",
		Inputs: append([]safeio.Group{modelInput("MODEL", path)}, fileInputs(c, "recipe", "calib-src", "calib-tgt", "spm")...),
	}
	if !c.Bool("dry-run") {
		plan.Outputs = []safeio.Group{modelOutput("-o", out)}
	}
	if err := safeio.Check(plan); err != nil {
		return err
	}
	p, err := quantParams(c)
	if err != nil {
		return err
	}
	method := calibMethod(c)
	if method != "" && c.String("calib-src") == "" {
		return usagef("--calib-method needs --calib-src (and optionally --calib-tgt) to calibrate on")
	}
	switch method {
	case "", calibrate.MinMax, calibrate.Percentile, calibrate.MSE:
	default:
		return usagef("--calib-method %q: want minmax, percentile or mse", method)
	}
	alpha := c.Float64("smooth")
	if alpha > 0 && c.String("calib-src") == "" {
		return usagef("--smooth measures the activations: give --calib-src (and optionally --calib-tgt)")
	}
	m, err := loadModel(path)
	if err != nil {
		return err
	}
	if c.Bool("dry-run") {
		plan, err := quantize.Plan(m, p)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if c.Bool("json") {
			return writeJSON(c.App.Writer, plan)
		}
		printPlan(c, plan.Quantizers)
		printUnquantized(c.App.Writer, plan.Unquantized)
		return nil
	}
	// Calibration runs the fp32 model, so it reads the activations before
	// the quantizers exist (and after smoothing, which changes them).
	var collector *calibrate.Collector
	var smoothed smooth.Report
	var data *train.Dataset
	var roles seq2seq.Model
	if src := c.String("calib-src"); src != "" {
		if roles, err = modelRoles(c, m); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		tgt := c.String("calib-tgt")
		if tgt == "" {
			tgt = src
		}
		if roles.Vocab > 0 {
			if err := ort.CheckSize("logits", 4, ort.Factor{Name: "--batch-tokens", Value: int64(c.Int("batch-tokens"))}, ort.Factor{Name: "vocabulary", Value: int64(roles.Vocab)}); err != nil {
				return err
			}
		}
		if data, err = readData(c, src, tgt, roles, 0); err != nil {
			return err
		}
		opts := train.CalibrationOptions{
			Roles: roles.Roles, Batches: c.Int("calib-batches"), BatchTokens: c.Int("batch-tokens"),
			Threads: c.Int("threads"),
		}
		if alpha > 0 {
			prog := newProgress(c.App.ErrWriter, "smoothing")
			opts.Progress = prog.update
			smoothed, err = train.Smooth(m, data, alpha, opts)
			prog.done()
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
		}
		plan, err := quantize.Plan(m, p)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		collector = calibrate.NewCollector(plan)
		prog := newProgress(c.App.ErrWriter, "calibrating")
		opts.Progress = prog.update
		err = train.Calibrate(m, data, collector, opts)
		prog.done()
		if err != nil {
			return err
		}
	}
	rec, err := quantize.Insert(m, p)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if collector != nil {
		if err := calibrate.Calibrate(m, rec, collector, method, c.Float64("calib-percentile")); err != nil {
			return err
		}
		if _, err := train.RecordSample(m, data, roles.Roles); err != nil {
			return err
		}
	}
	if err := m.Save(out); err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, rec)
	}
	counts := map[string]int{}
	for _, q := range rec.Quantizers {
		counts[q.Kind]++
	}
	var parts []string
	for _, k := range []string{quantize.KindWeight, quantize.KindAct, quantize.KindReLU, quantize.KindSoftmax} {
		if counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[k], k))
		}
	}
	how := "weight clips from " + weightInitText(p) + ", activation clips "
	if collector != nil {
		how += "calibrated by " + method
	} else {
		how += fmt.Sprintf("at %g", p.ActClipMax)
	}
	if alpha > 0 {
		how += fmt.Sprintf(", %d LayerNorms smoothed (α %g)", len(smoothed.Smoothed), alpha)
	}
	fmt.Fprintf(c.App.Writer, "wrote %s: %d quantizers (%s), W%dA%d, %s\n", out, len(rec.Quantizers), strings.Join(parts, ", "), p.WeightBits, p.ActBits, how)
	printUnquantized(c.App.Writer, rec.Unquantized)
	return nil
}

// printUnquantized says which constant operands of matrix products stay
// float, and why.
func printUnquantized(w io.Writer, us []quantize.Unquantized) {
	if len(us) == 0 {
		return
	}
	fmt.Fprintf(w, "%d matrix-product operands stay float:\n", len(us))
	for _, u := range us {
		where := fmt.Sprintf("%s input %d", u.Node, u.Input)
		if u.Input < 0 {
			where = u.Node
		}
		fmt.Fprintf(w, "  %s: %s\n", where, u.Reason)
	}
}

func printPlan(c *cli.Context, plan []quantize.Quantizer) {
	rows := make([][]string, len(plan))
	for i, q := range plan {
		axis := "-"
		if q.Axis != nil {
			axis = fmt.Sprint(*q.Axis)
		}
		rows[i] = []string{q.Tensor, q.Kind, fmt.Sprint(q.Bits), axis, strings.Join(q.Consumers, " ")}
	}
	writeTable(c.App.Writer, []string{"tensor", "kind", "bits", "axis", "consumers"}, rows)
}

// weightInitText says in words where p starts weight clips.
func weightInitText(p quantize.Params) string {
	switch p.WeightInit {
	case quantize.InitMax:
		return "max |w|"
	case quantize.InitPercentile:
		pct := p.Percentile
		if pct == 0 {
			pct = 99.99
		}
		return fmt.Sprintf("the %gth percentile of |w|", pct)
	case quantize.InitMSE:
		return "the MSE-optimal clip of each weight"
	}
	return fmt.Sprintf("the value %g", p.WeightClipMax)
}

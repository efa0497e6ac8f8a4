package main

import (
	"fmt"

	"github.com/qatc/qatc/internal/cmdline"
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
			&cli.Float64Flag{Name: "calib-percentile", Value: train.DefaultPercentile, Usage: "percentile for --calib-method percentile"},
			&cli.IntFlag{Name: "batch-tokens", Value: 4096, Usage: "padded tokens per calibration batch"},
			&cli.Float64Flag{Name: "smooth", Usage: "SmoothQuant strength α in (0, 1]: move the per-channel range of LayerNorm outputs into the weights that read them, measured on --calib-src, before inserting (0: off)"},
			&cli.IntFlag{Name: "threads", Usage: "intra-op threads (0: onnxruntime's default)"},
			&cli.BoolFlag{Name: "json", Usage: "print the quantization record as JSON"},
		}, append(pipelineFlags(), dataFlags()...)...),
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
		&cli.Int64Flag{Name: "pad-id", Value: 0, Usage: "padding id (default: a model directory's config.json, else 0)"},
		&cli.Int64Flag{Name: "bos-id", Value: 2, Usage: "begin-of-sentence id: starts every translation (default: a model directory's decoder_start_token_id, else 2)"},
		&cli.Int64Flag{Name: "eos-id", Value: 3, Usage: "end-of-sentence id (default: a model directory's config.json, else 3)"},
	}
}

// insertConfig is insert's configuration as the flags give it.
func insertConfig(c *cli.Context) train.InsertConfig {
	return train.InsertConfig{
		Quant: train.QuantOptions{
			NeurST: c.String("quant-params"), Bits: c.Int("bits"), WeightBits: c.Int("weight-bits"), ActBits: c.Int("act-bits"),
			WeightClipMax: c.Float64("weight-clip-max"), ActClipMax: c.Float64("act-clip-max"),
			PerChannel: c.Bool("per-channel"), Granularity: c.String("weight-granularity"), BlockSize: c.Int("block-size"),
			WeightInit: c.String("weight-init"), Include: c.StringSlice("include"), Exclude: c.StringSlice("exclude"),
			RecipeFile: c.String("recipe"),
		},
		CalibSrc: c.String("calib-src"), CalibTgt: c.String("calib-tgt"),
		Method: c.String("calib-method"), Percentile: c.Float64("calib-percentile"),
		Batches: c.Int("calib-batches"), BatchTokens: c.Int("batch-tokens"), Smooth: c.Float64("smooth"),
		Special: specialIDs(c), Roles: roleFlagValues(c), Threads: c.Int("threads"),
	}
}

// tokenizer loads --spm (nil without it: the files hold ids).
func tokenizer(c *cli.Context) (seq2seq.Tokenizer, error) {
	path := c.String("spm")
	if path == "" {
		return nil, nil
	}
	return seq2seq.LoadSentencePiece(path)
}

// specialIDs returns the special ids: each flag where it is given, else
// what the config.json of the model directory (the command's first
// argument) names, else the flag's default.
func specialIDs(c *cli.Context) seq2seq.Special {
	sp := seq2seq.Special{Pad: c.Int64("pad-id"), BOS: c.Int64("bos-id"), EOS: c.Int64("eos-id")}
	dir, ok := seq2seq.DirSpecial(c.Args().First())
	if !ok {
		return sp
	}
	if !c.IsSet("pad-id") {
		sp.Pad = dir.Pad
	}
	if !c.IsSet("bos-id") {
		sp.BOS = dir.BOS
	}
	if !c.IsSet("eos-id") {
		sp.EOS = dir.EOS
	}
	return sp
}

// roleFlagValues are the roles the role flags name.
func roleFlagValues(c *cli.Context) seq2seq.Roles {
	return seq2seq.Roles{Src: c.String("src-input"), Tgt: c.String("tgt-input"), Logits: c.String("logits-output")}
}

func insertAction(c *cli.Context) error {
	path, err := oneArg(c, "MODEL")
	if err != nil {
		return err
	}
	cfg := insertConfig(c)
	if c.Bool("passes") {
		return train.InsertPipeline(cfg).List(c.App.Writer)
	}
	out := c.String("output")
	plan := safeio.Plan{
		InPlace: c.Bool("in-place"), InPlaceFlag: "--in-place",
		Inputs: append([]safeio.Group{modelInput("MODEL", path)}, fileInputs(c, "recipe", "calib-src", "calib-tgt", "spm")...),
	}
	d := &cfg.Dump
	if err := dumpFlags(c, &plan, &d.DumpAfter, &d.DumpDir, &d.Dumped, train.InsertPipeline(cfg).CheckDump); err != nil {
		return err
	}
	written := out
	if c.Bool("dry-run") {
		written = ""
	}
	if err := checkModelOutput(plan, path, written); err != nil {
		return err
	}
	if err := cfg.Check(); err != nil {
		return err
	}
	if cfg.Tokenizer, err = tokenizer(c); err != nil {
		return err
	}
	if c.Bool("dry-run") {
		rec, err := train.PlanFile(path, cfg)
		if err != nil {
			return err
		}
		if c.Bool("json") {
			return writeJSON(c.App.Writer, rec)
		}
		rec.WritePlan(c.App.Writer)
		return rec.WriteUnquantized(c.App.Writer)
	}
	bars := map[string]*cmdline.Progress{}
	labels := map[string]string{"smooth": "smoothing", "collect": "calibrating"}
	cfg.Progress = func(pass string, done, total int) {
		if bars[pass] == nil {
			bars[pass] = cmdline.NewProgress(c.App.ErrWriter, labels[pass])
		}
		bars[pass].Update(done, total)
	}
	res, err := train.InsertFile(path, out, cfg)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, res.Record)
	}
	fmt.Fprintf(c.App.Writer, "wrote %s: %s\n", out, res.Summary())
	return res.Record.WriteUnquantized(c.App.Writer)
}

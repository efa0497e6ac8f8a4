package main

import (
	"slices"
	"strings"

	"github.com/qatc/qatc/export"
	"github.com/qatc/qatc/safeio"
	"github.com/qatc/qatc/seq2seq"
	"github.com/urfave/cli/v2"
)

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "write a QAT model for deployment: int8 (or 4-bit) ONNX, or a LightSeq weight file; the result is read back and checked",
		ArgsUsage: "QAT",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "the file to write (.onnx, or .pb for lightseq; a directory with --incremental)", Required: true},
			&cli.StringFlag{Name: "format", Value: "qdq", Usage: "qdq, qoperator, dynamic, matmulnbits or lightseq; fp32 too with --incremental"},
			&cli.BoolFlag{Name: "incremental", Usage: "write an encoder and a decoder with a key/value cache (Hugging Face Optimum's layout) to the directory -o"},
			&cli.BoolFlag{Name: "in-place", Usage: "allow -o to name the input model"},
			&cli.StringFlag{Name: "src", Usage: "source sentences of the check batch (default: the sentences recorded in the model at insert or finetune, else random valid token ids)"},
			&cli.StringFlag{Name: "tgt", Usage: "target sentences of the check batch (default: the source file)"},
			&cli.IntFlag{Name: "batch", Value: 16, Usage: "sentences in the check batch"},
			&cli.IntFlag{Name: "len", Value: 24, Usage: "length of random check sentences"},
			&cli.StringFlag{Name: "map", Usage: "lightseq, --incremental: YAML or JSON file naming tensors by role where the recogniser fails"},
			&cli.IntFlag{Name: "beam", Value: 4, Usage: "lightseq: beam size written to model_conf"},
			&cli.Float64Flag{Name: "length-penalty", Value: 0.6, Usage: "lightseq: length penalty written to model_conf"},
			&cli.BoolFlag{Name: "verbose", Usage: "lightseq: list every clip field and where its value came from"},
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON"},
		}, append(pipelineFlags(), dataFlags()...)...),
		Action: exportAction,
	}
}

func exportAction(c *cli.Context) error {
	path, err := oneArg(c, "QAT")
	if err != nil {
		return err
	}
	out := c.String("output")
	format := c.String("format")
	plan := safeio.Plan{
		InPlace: c.Bool("in-place"), InPlaceFlag: "--in-place",
		Inputs:  append([]safeio.Group{modelInput("QAT", path)}, fileInputs(c, "src", "tgt", "map", "spm")...),
		Outputs: []safeio.Group{modelOutput("-o", out)},
	}
	// A model directory exports as a directory of its layout (but to a
	// LightSeq file).
	dir := c.Bool("incremental") || seq2seq.IsDir(path) && format != "lightseq"
	cfg := export.Config{
		Format: format, Incremental: dir, Roles: roleFlagValues(c), MapFile: c.String("map"),
		Batch:    export.BatchOptions{Src: c.String("src"), Tgt: c.String("tgt"), N: c.Int("batch"), Len: c.Int("len"), Special: specialIDs(c)},
		BeamSize: c.Int("beam"), LengthPenalty: float32(c.Float64("length-penalty")),
	}
	if c.Bool("passes") || c.IsSet("dump-after") {
		if dir || !slices.Contains(export.Formats, format) {
			return usagef("--passes and --dump-after are the pipeline of the ONNX formats (%s) from a model file, not of --incremental, a model directory or lightseq", strings.Join(export.Formats, ", "))
		}
		if c.Bool("passes") {
			return export.Pipeline(format).List(c.App.Writer)
		}
		d := &cfg.Dump
		if err := dumpFlags(c, &plan, &d.DumpAfter, &d.DumpDir, &d.Dumped, export.Pipeline(format).CheckDump); err != nil {
			return err
		}
	}
	switch {
	case dir:
		plan.Outputs, plan.Dirs = nil, []safeio.Dir{{Flag: "-o", Path: out, Replace: true}}
	case format == "lightseq":
		if !strings.HasSuffix(out, ".pb") {
			return usagef("-o %s: a LightSeq weight file must end in .pb", out)
		}
		plan.Outputs = []safeio.Group{{Flag: "-o", Path: out}}
	}
	if err := safeio.Check(plan); err != nil {
		return err
	}
	if dir {
		if err := seq2seq.CheckOutput(out); err != nil {
			return err
		}
	}
	if cfg.Batch.Tokenizer, err = tokenizer(c); err != nil {
		return err
	}
	res, err := export.File(path, out, cfg)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, res)
	}
	return res.Write(c.App.Writer, c.Bool("verbose"))
}

package main

import (
	"github.com/qatc/qatc/decode"
	"strings"

	"github.com/qatc/qatc/eval"
	"github.com/qatc/qatc/export/lightseq"
	"github.com/qatc/qatc/internal/cmdline"
	"github.com/qatc/qatc/safeio"
	"github.com/urfave/cli/v2"
)

func evalCommand() *cli.Command {
	return &cli.Command{
		Name:      "eval",
		Usage:     "translate with each model (ONNX, or a LightSeq .pb run by qatc's reference decoder) and score BLEU (sacreBLEU's defaults), with token agreement, size and decoding latency",
		ArgsUsage: "MODEL ...",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "src", Usage: "source sentences, one per line", Required: true},
			&cli.StringFlag{Name: "ref", Usage: "reference translations, one per line", Required: true},
			&cli.StringFlag{Name: "spm", Usage: "SentencePiece model: --src is text, translations are detokenized (default: token ids)"},
			&cli.IntFlag{Name: "beam", Value: 1, Usage: "beam size (1: greedy)"},
			&cli.Float64Flag{Name: "length-penalty", Value: 0.6, Usage: "LightSeq's length_penalty α for beam search"},
			&cli.IntFlag{Name: "max-extra", Value: 50, Usage: "translations have at most source length + this many tokens"},
			&cli.IntFlag{Name: "batch", Value: 32, Usage: "sentences decoded together"},
			&cli.IntFlag{Name: "threads", Usage: "intra-op threads (0: onnxruntime's default)"},
			&cli.StringFlag{Name: "hyp-dir", Usage: "write each model's translations to DIR/<model>.hyp"},
			&cli.BoolFlag{Name: "no-cache", Usage: "decode full-sequence files by re-running them at every step instead of building their cached decoders"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON document"},
		}, append(roleFlags(), specialFlags()...)...),
		Action: evalAction,
	}
}

func evalAction(c *cli.Context) error {
	if c.NArg() == 0 {
		return usagef("eval takes one or more models")
	}
	plan := safeio.Plan{Inputs: fileInputs(c, "src", "ref", "spm")}
	for _, p := range c.Args().Slice() {
		plan.Inputs = append(plan.Inputs, modelInput("MODEL", p))
	}
	if dir := c.String("hyp-dir"); dir != "" {
		// One file per model, named after it: two models of one name are
		// refused before any decoding.
		byFile := map[string]string{}
		for _, p := range c.Args().Slice() {
			file := eval.HypFile(dir, p)
			if other, ok := byFile[file]; ok {
				return usagef("--hyp-dir: %s and %s would both write %s; give the models distinct file names", other, p, file)
			}
			byFile[file] = p
			plan.Outputs = append(plan.Outputs, safeio.Group{Flag: "--hyp-dir", Path: file})
		}
		plan.Dirs = []safeio.Dir{{Flag: "--hyp-dir", Path: dir}}
	}
	if err := safeio.Check(plan); err != nil {
		return err
	}
	opts := eval.EvalOptions{
		Decode:  decodeOptions(c),
		Threads: c.Int("threads"),
	}
	if err := tokenizers(c, &opts.Src, &opts.Tgt, &opts.TgtTokName); err != nil {
		return err
	}
	var specs []decode.ModelSpec
	for _, p := range c.Args().Slice() {
		spec := decode.ModelSpec{Path: p, Roles: roleFlagValues(c), Rerun: c.Bool("no-cache")}
		if strings.HasSuffix(p, ".pb") {
			var err error
			if spec, err = lightseq.Spec(p); err != nil {
				return err
			}
		}
		specs = append(specs, spec)
	}
	prog := map[string]*cmdline.Progress{}
	opts.Progress = func(model string, done, total int) {
		if prog[model] == nil {
			prog[model] = cmdline.NewProgress(c.App.ErrWriter, "decoding "+model)
		}
		prog[model].Update(done, total)
	}
	rows, err := eval.EvaluateFiles(specs, c.String("src"), c.String("ref"), c.String("hyp-dir"), opts)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		for i := range rows {
			rows[i].Hypotheses = nil
		}
		return writeJSON(c.App.Writer, rows)
	}
	return eval.WriteEvalTable(c.App.Writer, rows)
}

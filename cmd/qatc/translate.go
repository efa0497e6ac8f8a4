package main

import (
	"fmt"
	"github.com/qatc/qatc/decode"
	"os"

	"github.com/qatc/qatc/eval"
	"github.com/qatc/qatc/internal/cmdline"
	"github.com/qatc/qatc/safeio"
	"github.com/qatc/qatc/seq2seq"
	"github.com/urfave/cli/v2"
)

func translateCommand() *cli.Command {
	return &cli.Command{
		Name:      "translate",
		Usage:     "translate sentences with a model: a model directory (Optimum's layout: separate or merged decoders), or a full-sequence ONNX file whose encoder and cached decoder are built in memory",
		ArgsUsage: "MODEL|DIR",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "src", Usage: "source sentences, one per line (default: standard input)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "translations, one per line (default: standard output)"},
			&cli.StringFlag{Name: "spm", Usage: "SentencePiece model: the source is text and translations are detokenized (default: token ids)"},
			&cli.IntFlag{Name: "beam", Value: 1, Usage: "beam size (1: greedy)"},
			&cli.Float64Flag{Name: "length-penalty", Value: 0.6, Usage: "LightSeq's length_penalty α for beam search"},
			&cli.IntFlag{Name: "max-extra", Value: 50, Usage: "translations have at most source length + this many tokens"},
			&cli.IntFlag{Name: "batch", Value: 32, Usage: "sentences decoded together (sorted by length)"},
			&cli.IntFlag{Name: "threads", Value: 2, Usage: "batches decoded at once, one thread each (0: one per CPU)"},
			&cli.BoolFlag{Name: "no-cache", Usage: "decode a full-sequence file by re-running it at every step instead of building its cached decoder"},
			&cli.StringFlag{Name: "map", Usage: "YAML or JSON file naming tensors by role where the recogniser fails"},
		}, append(roleFlags(), specialFlags()...)...),
		Action: translateAction,
	}
}

func translateAction(c *cli.Context) error {
	path, err := oneArg(c, "MODEL|DIR")
	if err != nil {
		return err
	}
	opts := decodeOptions(c)
	topts := eval.TranslateOptions{Decode: opts, Threads: c.Int("threads"), SrcName: "standard input",
		Rerun: c.Bool("no-cache"), Roles: roleFlagValues(c), MapFile: c.String("map")}
	if err := tokenizers(c, &topts.Src, &topts.Tgt, &topts.TgtTokName); err != nil {
		return err
	}
	out := c.String("output")
	plan := safeio.Plan{Inputs: append([]safeio.Group{modelInput("MODEL", path)}, fileInputs(c, "src", "spm", "map")...)}
	if out != "" {
		plan.Outputs = []safeio.Group{{Flag: "-o", Path: out}}
	}
	if err := safeio.Check(plan); err != nil {
		return err
	}
	if cmdline.IsTerminal(c.App.ErrWriter) {
		topts.Progress = cmdline.NewProgress(c.App.ErrWriter, "translating").Update
	}
	rep, err := eval.TranslateFile(path, c.String("src"), out, os.Stdin, c.App.Writer, topts)
	if err != nil {
		return err
	}
	if rep.Note != "" {
		fmt.Fprintf(c.App.ErrWriter, "note: %s: %s\n", path, rep.Note)
	}
	return nil
}

// decodeOptions reads the decoding flags (their ranges are flagRanges').
func decodeOptions(c *cli.Context) decode.Options {
	return decode.Options{
		Special: specialIDs(c), Beam: c.Int("beam"), LengthPenalty: c.Float64("length-penalty"),
		MaxExtra: c.Int("max-extra"), BatchSize: c.Int("batch"),
	}
}

// tokenizers sets the source and target tokenizers from --spm (nil: ids).
func tokenizers(c *cli.Context, src, tgt *seq2seq.Tokenizer, name *string) error {
	path := c.String("spm")
	if path == "" {
		return nil
	}
	tok, err := seq2seq.LoadSentencePiece(path)
	if err != nil {
		return err
	}
	*src, *tgt, *name = tok, tok, path
	return nil
}

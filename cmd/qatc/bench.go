package main

import (
	"fmt"

	"github.com/qatc/qatc/eval"
	"github.com/qatc/qatc/seq2seq"
	"github.com/urfave/cli/v2"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:      "bench",
		Usage:     "decoding latency and throughput of models (incremental directories or ONNX files), timed interleaved in one run",
		ArgsUsage: "MODEL|DIR ...",
		Flags: append([]cli.Flag{
			&cli.IntFlag{Name: "batch", Value: 16, Usage: "sentences per batch"},
			&cli.IntFlag{Name: "src-len", Value: 32, Usage: "source length"},
			&cli.IntFlag{Name: "tgt-len", Value: 32, Usage: "tokens decoded"},
			&cli.IntFlag{Name: "threads", Value: 2, Usage: "batches (or parts of the batch) decoded at once, one thread each (0: one per CPU)"},
			&cli.IntFlag{Name: "warmup", Value: 3, Usage: "untimed rounds"},
			&cli.IntFlag{Name: "iters", Value: 20, Usage: "timed rounds"},
			&cli.StringFlag{Name: "src", Usage: "decode these sentences instead (one per line) and report sentences/s"},
			&cli.StringFlag{Name: "spm", Usage: "SentencePiece model: --src is text (default: token ids)"},
			&cli.IntFlag{Name: "beam", Value: 1, Usage: "with --src: beam size (1: greedy)"},
			&cli.Float64Flag{Name: "length-penalty", Value: 0.6, Usage: "with --src: LightSeq's length_penalty α"},
			&cli.IntFlag{Name: "max-extra", Value: 50, Usage: "with --src: translations have at most source length + this many tokens"},
			&cli.IntFlag{Name: "rounds", Value: 3, Usage: "with --src: timed decodes of the sentences per model"},
			&cli.BoolFlag{Name: "no-cache", Usage: "decode full-sequence files by re-running them at every step instead of building their cached decoders"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON document"},
		}, append(roleFlags(), specialFlags()...)...),
		Action: benchAction,
	}
}

func benchAction(c *cli.Context) error {
	if c.NArg() == 0 {
		return usagef("bench takes one or more models")
	}
	opts := decodeOptions(c)
	cfg := eval.BenchConfig{Roles: roleFlagValues(c), Rerun: c.Bool("no-cache"), Decode: opts, Src: c.String("src"), Rounds: c.Int("rounds"),
		Bench: eval.BenchOptions{Batch: c.Int("batch"), SrcLen: c.Int("src-len"), TgtLen: c.Int("tgt-len"),
			Threads: c.Int("threads"), Warmup: c.Int("warmup"), Iters: c.Int("iters"), Special: opts.Special},
		Note: func(path, note string) { fmt.Fprintf(c.App.ErrWriter, "note: %s: %s\n", path, note) }}
	var name string
	if err := tokenizers(c, &cfg.Tokenizer, new(seq2seq.Tokenizer), &name); err != nil {
		return err
	}
	rep, err := eval.BenchFiles(c.Args().Slice(), cfg)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, rep)
	}
	return rep.Write(c.App.Writer)
}

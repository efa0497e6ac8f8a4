package main

import (
	"fmt"
	"path/filepath"

	"github.com/qatc/qatc/eval"
	"github.com/qatc/qatc/ort"
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
	opts, err := decodeOptions(c)
	if err != nil {
		return err
	}
	batch := ort.Factor{Name: "--batch", Value: int64(c.Int("batch"))}
	for _, l := range []string{"--src-len", "--tgt-len"} {
		if err := ort.CheckSize("token ids", 8, batch, ort.Factor{Name: l, Value: int64(c.Int(l[2:]))}); err != nil {
			return err
		}
	}
	var models []eval.BenchModel
	for _, path := range c.Args().Slice() {
		l, err := eval.Load(eval.ModelSpec{Path: path, Roles: roleFlagValues(c), Rerun: c.Bool("no-cache")}, opts.Special, 1)
		if err != nil {
			return err
		}
		defer l.Close()
		if l.Note != "" {
			fmt.Fprintf(c.App.ErrWriter, "note: %s: %s\n", path, l.Note)
		}
		if err := ort.CheckSize("logits", 4, batch, ort.Factor{Name: "--tgt-len", Value: int64(c.Int("tgt-len"))}, ort.Factor{Name: "vocabulary", Value: int64(l.Vocab)}); err != nil {
			return err
		}
		models = append(models, eval.BenchModel{Name: filepath.Base(path), Model: l.Model, Vocab: l.Vocab, Cached: l.Cached})
	}
	if src := c.String("src"); src != "" {
		return benchDecode(c, models, src, opts)
	}
	rs, err := eval.BenchAll(models, eval.BenchOptions{
		Batch: c.Int("batch"), SrcLen: c.Int("src-len"), TgtLen: c.Int("tgt-len"),
		Threads: c.Int("threads"), Warmup: c.Int("warmup"), Iters: c.Int("iters"), Special: opts.Special,
	})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, rs)
	}
	rows := make([]eval.BenchResult, len(rs))
	for i, r := range rs {
		rows[i] = *r
	}
	h, cells := eval.BenchTable(rows)
	h = append(h, "speed-up")
	for i := range cells {
		cells[i] = append(cells[i], fmt.Sprintf("%.2fx", rs[0].MedianMs/rs[i].MedianMs))
	}
	if err := eval.WriteTable(c.App.Writer, h, cells); err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.App.Writer, "each round decodes %d tokens for the batch with every model in turn; speed-up is against %s; peak RSS is the whole process's (all models loaded)\n", c.Int("tgt-len"), rs[0].Model)
	return err
}

// benchDecode times decoding the sentences of src with every model.
func benchDecode(c *cli.Context, models []eval.BenchModel, src string, opts eval.DecodeOptions) error {
	lines, err := readLines(src)
	if err != nil {
		return err
	}
	var tok, ttok seq2seq.Tokenizer = seq2seq.IDs{}, nil
	var name string
	if err := tokenizers(c, &tok, &ttok, &name); err != nil {
		return err
	}
	srcs, err := eval.EncodeSources(lines, tok, src, opts.Special, false)
	if err != nil {
		return err
	}
	for i, path := range c.Args().Slice() {
		if err := eval.CheckSources(path, roleFlagValues(c), srcs, models[i].Vocab, src, &opts); err != nil {
			return err
		}
	}
	opts.Workers = eval.Threads(c.Int("threads"))
	rs, err := eval.BenchDecode(models, srcs, opts, c.Int("rounds"))
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, rs)
	}
	h, cells := eval.DecodeBenchTable(rs)
	if err := eval.WriteTable(c.App.Writer, h, cells); err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.App.Writer, "each round decodes the %d sentences with every model in turn; speed-up is against %s\n", len(srcs), rs[0].Model)
	return err
}

package main

import (
	"github.com/qatc/qatc/eval"
	"github.com/urfave/cli/v2"
)

func compareCommand() *cli.Command {
	return &cli.Command{
		Name:      "compare",
		Usage:     "run two models on the same inputs and compare their outputs (e.g. fp32 vs QAT or int8); a model directory runs teacher-forced through its cache on its composed inputs (input_ids, decoder_input_ids)",
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

func compareAction(c *cli.Context) error {
	if c.NArg() != 2 {
		return usagef("compare takes two models, MODEL_A MODEL_B, got %d arguments", c.NArg())
	}
	pathA, pathB := c.Args().Get(0), c.Args().Get(1)
	files, _, err := namedFiles(c, "input")
	if err != nil {
		return err
	}
	rows, err := eval.CompareFiles(pathA, pathB, eval.CompareOptions{Inputs: files,
		Batch: c.Int("batch"), Len: c.Int("len"), Vocab: c.Int("vocab"), Seed: c.Uint64("seed"), Threads: c.Int("threads")})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, map[string]any{"model_a": pathA, "model_b": pathB, "outputs": rows})
	}
	return eval.WriteComparisons(c.App.Writer, rows)
}

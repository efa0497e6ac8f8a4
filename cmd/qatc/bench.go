package main

import (
	"fmt"
	"path/filepath"

	"github.com/qatc/qatc/eval"
	"github.com/qatc/qatc/ort"
	"github.com/urfave/cli/v2"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:      "bench",
		Usage:     "forward-pass latency and throughput of models, timed interleaved in one run",
		ArgsUsage: "MODEL ...",
		Flags: append([]cli.Flag{
			&cli.IntFlag{Name: "batch", Value: 16, Usage: "sentences per batch"},
			&cli.IntFlag{Name: "src-len", Value: 32, Usage: "source length"},
			&cli.IntFlag{Name: "tgt-len", Value: 32, Usage: "target length"},
			&cli.IntFlag{Name: "threads", Value: 2, Usage: "intra-op threads"},
			&cli.IntFlag{Name: "warmup", Value: 3, Usage: "untimed passes per model"},
			&cli.IntFlag{Name: "iters", Value: 20, Usage: "timed passes per model"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON document"},
		}, roleFlags()...),
		Action: benchAction,
	}
}

func benchAction(c *cli.Context) error {
	if c.NArg() == 0 {
		return usagef("bench takes one or more models")
	}
	roles := evalRoles(c)
	var models []*eval.Seq2Seq
	for _, path := range c.Args().Slice() {
		s, err := ort.OpenFile(path, &ort.Options{Threads: c.Int("threads")})
		if err != nil {
			return err
		}
		defer s.Close()
		m, err := eval.NewSeq2Seq(path, s, roles)
		if err != nil {
			return err
		}
		m.Name = filepath.Base(path)
		models = append(models, m)
	}
	rs, err := eval.BenchAll(models, eval.BenchOptions{
		Batch: c.Int("batch"), SrcLen: c.Int("src-len"), TgtLen: c.Int("tgt-len"),
		Threads: c.Int("threads"), Warmup: c.Int("warmup"), Iters: c.Int("iters"),
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
	_, err = fmt.Fprintf(c.App.Writer, "speed-up is against %s; peak RSS is the whole process's (all models loaded)\n", rs[0].Model)
	return err
}

// evalRoles are the role flags as eval names them.
func evalRoles(c *cli.Context) eval.Roles {
	return eval.Roles{Src: c.String("src-input"), Tgt: c.String("tgt-input"), Logits: c.String("logits-output")}
}

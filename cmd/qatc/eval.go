package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/qatc/qatc/eval"
	"github.com/qatc/qatc/export/lightseq"
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

// readLines reads a text file's lines.
func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		lines = append(lines, strings.TrimRight(sc.Text(), "\r"))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return lines, nil
}

func evalAction(c *cli.Context) error {
	if c.NArg() == 0 {
		return usagef("eval takes one or more models")
	}
	src, err := readLines(c.String("src"))
	if err != nil {
		return err
	}
	ref, err := readLines(c.String("ref"))
	if err != nil {
		return err
	}
	opts := eval.EvalOptions{
		Decode: eval.DecodeOptions{
			Special: eval.Special{Pad: c.Int64("pad-id"), BOS: c.Int64("bos-id"), EOS: c.Int64("eos-id")},
			Beam:    c.Int("beam"), LengthPenalty: c.Float64("length-penalty"),
			MaxExtra: c.Int("max-extra"), BatchSize: c.Int("batch"),
		},
		Threads: c.Int("threads"),
		SrcName: c.String("src"), RefName: c.String("ref"),
	}
	if path := c.String("spm"); path != "" {
		tok, err := eval.LoadSentencePiece(path)
		if err != nil {
			return err
		}
		opts.Src, opts.Tgt, opts.TgtTokName = tok, tok, path
	}
	roles := evalRoles(c)
	var specs []eval.ModelSpec
	for _, p := range c.Args().Slice() {
		spec := eval.ModelSpec{Path: p, Roles: roles, Rerun: c.Bool("no-cache")}
		if strings.HasSuffix(p, ".pb") {
			// A LightSeq file, translated by the Go reference decoder of
			// LightSeq's int8 numerics.
			qt, err := lightseq.Read(p)
			if err != nil {
				return err
			}
			ref, err := lightseq.NewReference(qt)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			spec.Model = eval.StartFunc(func(s [][]int64) (eval.State, error) { return ref.Start(s) })
			spec.Vocab = ref.Vocab
		}
		specs = append(specs, spec)
	}
	prog := map[string]*progress{}
	opts.Progress = func(model string, done, total int) {
		p := prog[model]
		if p == nil {
			p = newProgress(c.App.ErrWriter, "decoding "+model)
			prog[model] = p
		}
		p.update(done, total)
		if done == total {
			p.done()
		}
	}
	rows, err := eval.Evaluate(specs, src, ref, opts)
	if err != nil {
		return err
	}
	if dir := c.String("hyp-dir"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("--hyp-dir: %w", err)
		}
		for _, r := range rows {
			base := r.Model
			if ext := filepath.Ext(base); ext == ".onnx" || ext == ".pb" {
				base = strings.TrimSuffix(base, ext)
			}
			name := filepath.Join(dir, base+".hyp")
			if err := os.WriteFile(name, []byte(strings.Join(r.Hypotheses, "\n")+"\n"), 0o644); err != nil {
				return fmt.Errorf("--hyp-dir: %w", err)
			}
		}
	}
	if c.Bool("json") {
		for i := range rows {
			rows[i].Hypotheses = nil
		}
		return writeJSON(c.App.Writer, rows)
	}
	return eval.WriteEvalTable(c.App.Writer, rows)
}

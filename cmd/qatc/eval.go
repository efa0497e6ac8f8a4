package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/qatc/qatc/eval"
	"github.com/qatc/qatc/export/lightseq"
	"github.com/qatc/qatc/safeio"
	"github.com/qatc/qatc/seq2seq"
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

// readLines reads a text file's lines, decoded and checked as UTF-8
// (safeio.ReadLines).
func readLines(path string) ([]string, error) {
	var lines []string
	err := safeio.ReadLines(path, func(_ int, line string) error {
		lines = append(lines, line)
		return nil
	})
	return lines, err
}

// hypFile is the file --hyp-dir writes a model's translations to: the
// model's name without .onnx or .pb (a directory keeps its whole name).
func hypFile(dir, model string) string {
	base := filepath.Base(model)
	if ext := filepath.Ext(base); ext == ".onnx" || ext == ".pb" {
		base = strings.TrimSuffix(base, ext)
	}
	return filepath.Join(dir, base+".hyp")
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
			file := hypFile(dir, p)
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
			Special: specialIDs(c),
			Beam:    c.Int("beam"), LengthPenalty: c.Float64("length-penalty"),
			MaxExtra: c.Int("max-extra"), BatchSize: c.Int("batch"),
		},
		Threads: c.Int("threads"),
		SrcName: c.String("src"), RefName: c.String("ref"),
	}
	if path := c.String("spm"); path != "" {
		tok, err := seq2seq.LoadSentencePiece(path)
		if err != nil {
			return err
		}
		opts.Src, opts.Tgt, opts.TgtTokName = tok, tok, path
	}
	roles := roleFlagValues(c)
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
			if err := safeio.WriteFile(hypFile(dir, r.Path), []byte(strings.Join(r.Hypotheses, "\n")+"\n")); err != nil {
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

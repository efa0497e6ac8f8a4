package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/qatc/qatc/eval"
	"github.com/qatc/qatc/export"
	"github.com/qatc/qatc/export/lightseq"
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/passes/transformer"
	"github.com/qatc/qatc/safeio"
	"github.com/qatc/qatc/seq2seq"
	"github.com/urfave/cli/v2"
	"google.golang.org/protobuf/proto"
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
		}, dataFlags()...),
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
	switch {
	case c.Bool("incremental"):
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
	if c.Bool("incremental") {
		if err := export.CheckIncrementalOutput(out); err != nil {
			return err
		}
	}
	m, err := graph.LoadValid(path)
	if err != nil {
		return err
	}
	roles, err := modelRoles(c, m)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	batch, what, err := checkBatch(c, m, roles)
	if err != nil {
		return err
	}
	if c.Bool("incremental") {
		return exportIncremental(c, m, path, out, format, batch[roles.Src], batch[roles.Tgt])
	}
	if format == "lightseq" {
		return exportLightSeq(c, m, path, out, batch)
	}
	exported, rep, err := export.Export(m, format, &export.Options{Source: path})
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	ver, err := export.Verify(m, exported, batch)
	if err != nil {
		return fmt.Errorf("%s: %s export does not match the QAT model: %w", path, format, err)
	}
	if err := exported.Save(out); err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, map[string]any{"output": out, "export": rep, "verify": ver, "check_batch": what})
	}
	w := c.App.Writer
	fmt.Fprintf(w, "wrote %s (%s): %d integer weights, %s (%.1f%% of the QAT model's %s)\n", out, format,
		rep.IntWeights, humanBytes(rep.Size), 100*float64(rep.Size)/float64(rep.SourceSize), humanBytes(rep.SourceSize))
	fmt.Fprintf(w, "check against the QAT model on %d positions of %s: max abs error %.4g (bound %.4g), top-1 agreement %.2f%%, %.2f%% on the %d positions not tied within twice the bound (min %.1f%%)\n",
		ver.Positions, what, ver.MaxAbsErr, ver.Bound, 100*ver.Top1, 100*ver.DecisiveTop1, ver.Decisive, 100*ver.MinTop1)
	fmt.Fprintf(w, "bound = %s, step = %s\n", ver.Rule, ver.StepRule)
	fmt.Fprintf(w, "onnxruntime ran %d integer matrix kernels and %d float MatMul/Gemm\n", ver.IntKernels, ver.FloatMatMuls)
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	return nil
}

func exportIncremental(c *cli.Context, m *graph.Model, path, out, format string, src, tgt *ort.Tensor) error {
	opts := export.IncrementalOptions{Source: path, Pad: c.Int64("pad-id"), BOS: c.Int64("bos-id"), EOS: c.Int64("eos-id"), Src: src, Tgt: tgt}
	var err error
	if opts.Map, err = roleMap(c); err != nil {
		return err
	}
	set, rep, err := export.Incremental(m, format, opts)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := export.WriteIncremental(out, set); err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, map[string]any{"output": out, "incremental": rep})
	}
	w := c.App.Writer
	cfg := rep.Config
	fmt.Fprintf(w, "wrote %s (%s, Optimum's seq2seq layout): hidden %d, %d heads, %d+%d layers, vocabulary %d\n",
		out, format, cfg.Hidden, cfg.DecoderHeads, cfg.EncoderLayers, cfg.DecoderLayers, cfg.Vocab)
	for _, f := range rep.Files {
		fmt.Fprintf(w, "  %-30s %9s  %3d integer weights, onnxruntime ran %d integer and %d float matrix kernels\n",
			f.File, humanBytes(f.Size), f.IntWeights, f.IntKernels, f.FloatMatMuls)
	}
	k := rep.Check
	fmt.Fprintf(w, "check against the full-sequence model, teacher-forced through the cache on %d positions: max abs error %.4g (bound %.4g), top-1 agreement %.2f%% (min %.1f%%)\n",
		k.Positions, k.MaxAbsErr, k.Bound, 100*k.Top1, 100*k.MinTop1)
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	return nil
}

// roleMap reads the --map file (nil without one).
func roleMap(c *cli.Context) (map[string]string, error) {
	f := c.String("map")
	if f == "" {
		return nil, nil
	}
	return transformer.ReadMap(f)
}

// checkBatch is the batch exports are checked on, and what it holds:
// sentences from --src and --tgt, else those recorded in the model (by
// insert's calibration or finetune), else valid random token ids.
func checkBatch(c *cli.Context, m *graph.Model, roles seq2seq.Model) (map[string]*ort.Tensor, string, error) {
	n := c.Int("batch")
	if src := c.String("src"); src != "" {
		tgt := c.String("tgt")
		if tgt == "" {
			tgt = src
		}
		d, err := readData(c, src, tgt, roles, 0)
		if err != nil {
			return nil, "", err
		}
		idx := make([]int, min(n, len(d.Examples)))
		for i := range idx {
			idx[i] = i
		}
		b := d.MakeBatch(idx)
		return map[string]*ort.Tensor{
			roles.Src: ort.Int64([]int64{int64(b.Size), int64(b.SrcLen)}, b.Src),
			roles.Tgt: ort.Int64([]int64{int64(b.Size), int64(b.TgtLen)}, b.Dec),
		}, fmt.Sprintf("%d sentences of %s", b.Size, src), nil
	}
	b, from, err := export.SampleBatch(m)
	if err != nil {
		return nil, "", err
	}
	if b != nil {
		if b[roles.Src] == nil || b[roles.Tgt] == nil {
			return nil, "", fmt.Errorf("metadata %s holds no %s and %s batch; give a check batch with --src", quantize.SampleKey, roles.Src, roles.Tgt)
		}
		for _, t := range b {
			for _, id := range t.Int64s() {
				if id < 0 || roles.Vocab > 0 && id >= int64(roles.Vocab) {
					return nil, "", fmt.Errorf("metadata %s holds token id %d, beyond the vocabulary of %d; give a check batch with --src", quantize.SampleKey, id, roles.Vocab)
				}
			}
		}
		return b, fmt.Sprintf("%d sentences of %s recorded in the model", b[roles.Src].Shape[0], from), nil
	}
	if roles.Vocab <= 4 {
		return nil, "", fmt.Errorf("the model's vocabulary is not static; give a check batch with --src")
	}
	if err := ort.CheckSize("logits", 4, ort.Factor{Name: "--batch", Value: int64(n)}, ort.Factor{Name: "--len", Value: int64(c.Int("len"))},
		ort.Factor{Name: "vocabulary", Value: int64(roles.Vocab)}); err != nil {
		return nil, "", err
	}
	ins := []graph.IOInfo{
		{Name: roles.Src, Elem: graph.Int64, Dims: []int64{-1, -1}},
		{Name: roles.Tgt, Elem: graph.Int64, Dims: []int64{-1, -1}},
	}
	b, err = eval.RandomInputs(ins, n, c.Int("len"), roles.Vocab, 7)
	return b, fmt.Sprintf("%d random sentences (the model records none: give --src)", n), err
}

func exportLightSeq(c *cli.Context, m *graph.Model, path, out string, batch map[string]*ort.Tensor) error {
	opts := lightseq.Options{
		PadID: int(c.Int64("pad-id")), BosID: int(c.Int64("bos-id")), EosID: int(c.Int64("eos-id")),
		BeamSize: c.Int("beam"), LengthPenalty: float32(c.Float64("length-penalty")),
		Calib: batch,
	}
	var err error
	if opts.Map, err = roleMap(c); err != nil {
		return err
	}
	qt, rep, err := lightseq.Export(m, opts)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	chk, err := lightseq.Verify(m, rep.Model, qt, batch)
	if err != nil {
		return fmt.Errorf("%s: the LightSeq file was not written: %w", path, err)
	}
	if err := lightseq.Write(out, qt); err != nil {
		return err
	}
	back, err := lightseq.Read(out)
	if err != nil {
		return fmt.Errorf("reading back %s: %w", out, err)
	}
	if !proto.Equal(back, qt) {
		return fmt.Errorf("reading back %s: the file holds other values than were written", out)
	}
	sizes, err := lightseq.Infer(back)
	if err != nil {
		return fmt.Errorf("reading back %s: %w", out, err)
	}
	st, err := os.Stat(out)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, map[string]any{"output": out, "bytes": st.Size(), "sizes": sizes, "report": rep, "verify": chk})
	}
	w := c.App.Writer
	fmt.Fprintf(w, "wrote %s (lightseq QuantTransformer): %s, hidden %d, heads %d, FFN %d, vocabulary %d, %d+%d layers\n",
		out, humanBytes(st.Size()), sizes.Hidden, sizes.Heads, sizes.FFN, sizes.Vocab, sizes.EncoderLayers, sizes.DecoderLayers)
	fmt.Fprintln(w, chk)
	if n := rep.Fallbacks(); n > 0 {
		fmt.Fprintf(w, "%d clip fields had no matching qatc quantizer and took a fallback value (--verbose lists each field's source)\n", n)
	}
	if c.Bool("verbose") {
		io.WriteString(w, rep.Format())
	}
	return nil
}

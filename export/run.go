package export

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/qatc/qatc/export/lightseq"
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes"
	"github.com/qatc/qatc/passes/incremental"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/passes/transformer"
	"github.com/qatc/qatc/safeio"
	"github.com/qatc/qatc/seq2seq"
)

// Config configures File: what qatc export's flags say.
type Config struct {
	// Format is one of Formats, "lightseq", or with Incremental also
	// "fp32".
	Format string
	// Incremental writes an encoder and a decoder with a key/value cache
	// into the directory out (Optimum's layout).
	Incremental bool
	// Batch configures the check batch.
	Batch BatchOptions
	// Roles names the model's inputs and logits where finding them by
	// shape is not enough; MapFile names tensors by role for the
	// recogniser (lightseq, incremental).
	Roles   seq2seq.Roles
	MapFile string
	// BeamSize and LengthPenalty go to a LightSeq file's model_conf.
	BeamSize      int
	LengthPenalty float32
	// Dump writes the model after the passes of the ONNX formats'
	// pipeline (Pipeline) it names (--dump-after).
	Dump passes.Options
}

// Result is what File wrote and how it checked it; one of Report,
// Incremental and LightSeq is set, by the format.
type Result struct {
	Output string
	// CheckBatch says what the check batch holds.
	CheckBatch  string
	Report      *Report
	Verify      *VerifyReport
	Incremental *IncrementalReport
	LightSeq    *lightseq.FileReport
	// merged: the directory written has a merged decoder.
	merged bool
}

// MarshalJSON writes the result as qatc export --json prints it: the
// output and its format's reports.
func (r *Result) MarshalJSON() ([]byte, error) {
	v := map[string]any{"output": r.Output}
	switch {
	case r.Incremental != nil:
		v["incremental"] = r.Incremental
	case r.LightSeq != nil:
		v["bytes"], v["sizes"], v["report"], v["verify"], v["check_batch"] = r.LightSeq.Bytes, r.LightSeq.Sizes, r.LightSeq.Report, r.LightSeq.Verify, r.CheckBatch
	default:
		v["export"], v["verify"], v["check_batch"] = r.Report, r.Verify, r.CheckBatch
	}
	return json.Marshal(v)
}

// File exports the QAT model at path as cfg says, checks the result
// against the QAT model on the check batch, and writes it to out: an ONNX
// file (Export, Verify), a LightSeq weight file (lightseq.WriteFile), or
// with cfg.Incremental a directory in Optimum's layout (Incremental; for a
// model directory, its own files in the format, Dir), written by
// seq2seq.Dir.Write. A model directory is read as the composition of its
// encoder and decoder (seq2seq.Load). An ONNX format from a model file is
// written in the order that holds least in memory at once (writeONNX).
func File(path, out string, cfg Config) (*Result, error) {
	// An ONNX format from a model file: the structure is enough for the
	// roles and the check batch, and writeONNX reads the weights when it
	// needs them.
	onnxFile := !cfg.Incremental && cfg.Format != "lightseq" && !seq2seq.IsDir(path)
	var stored *seq2seq.Stored
	if onnxFile {
		s, err := graph.LoadStructure(path)
		if err != nil {
			return nil, err
		}
		stored = &seq2seq.Stored{Path: path, Graph: s}
	} else {
		var err error
		if stored, err = seq2seq.Load(path, cfg.Batch.Special.Pad); err != nil {
			return nil, err
		}
	}
	m := stored.Graph
	model, err := seq2seq.Describe(m, cfg.Roles)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	batch, what, err := CheckBatch(m, model, cfg.Batch)
	if err != nil {
		return nil, err
	}
	res := &Result{Output: out, CheckBatch: what}
	var roleMap map[string]string
	if cfg.MapFile != "" {
		if roleMap, err = transformer.ReadMap(cfg.MapFile); err != nil {
			return nil, err
		}
	}
	sp := cfg.Batch.Special
	switch {
	case cfg.Incremental:
		opts := IncrementalOptions{Source: path, Pad: sp.Pad, BOS: sp.BOS, EOS: sp.EOS, Map: roleMap, Src: batch[model.Src], Tgt: batch[model.Tgt]}
		var d *seq2seq.Dir
		var rep *IncrementalReport
		if stored.Dir != nil {
			d, rep, err = Dir(stored, cfg.Format, opts)
		} else {
			var set *incremental.Set
			if set, rep, err = Incremental(m, cfg.Format, opts); err == nil {
				d = &set.Dir
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		res.Incremental, res.merged = rep, d.Merged
		return res, d.Write(out)
	case cfg.Format == "lightseq":
		opts := lightseq.Options{PadID: int(sp.Pad), BosID: int(sp.BOS), EosID: int(sp.EOS),
			BeamSize: cfg.BeamSize, LengthPenalty: cfg.LengthPenalty, Calib: batch, Map: roleMap}
		res.LightSeq, err = lightseq.WriteFile(m, path, out, opts, batch)
		return res, err
	}
	padding := Padding{Target: model.Tgt, Pad: sp.Pad}
	if onnxFile {
		rep, ver, err := writeONNX(path, out, cfg.Format, batch, padding, &Options{Source: path, Dump: cfg.Dump})
		if err != nil {
			return nil, err
		}
		res.Report, res.Verify = rep, &ver
		return res, nil
	}
	// A directory's composition, as one file.
	exported, rep, err := Export(m, cfg.Format, &Options{Source: path, Dump: cfg.Dump})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ver, err := Verify(m, exported, batch, padding)
	if err != nil {
		return nil, fmt.Errorf("%s: %s export does not match the QAT model: %w", path, cfg.Format, err)
	}
	res.Report, res.Verify = rep, &ver
	return res, exported.Save(out)
}

// BatchOptions configure CheckBatch.
type BatchOptions struct {
	// Src and Tgt are sentence files (Tgt "" reads Src); N sentences are
	// taken, or N random ones of Len tokens.
	Src, Tgt  string
	N, Len    int
	Tokenizer seq2seq.Tokenizer
	Special   seq2seq.Special
}

// CheckBatch is the batch an export of m is checked on, and what it
// holds: sentences from o.Src and o.Tgt, else those recorded in the model
// (by insert's calibration or finetune, SampleBatch), else valid random
// token ids.
func CheckBatch(m *graph.Model, model seq2seq.Model, o BatchOptions) (map[string]*ort.Tensor, string, error) {
	if o.Src != "" {
		tgt := o.Tgt
		if tgt == "" {
			tgt = o.Src
		}
		d, err := seq2seq.ReadParallel(o.Src, tgt, seq2seq.DataOptions{
			Tokenizer: o.Tokenizer, Vocab: model.Vocab, Special: o.Special,
			SrcPositions: model.SrcPositions, TgtPositions: model.TgtPositions,
		})
		if err != nil {
			return nil, "", err
		}
		idx := make([]int, min(o.N, len(d.Examples)))
		for i := range idx {
			idx[i] = i
		}
		b := d.MakeBatch(idx)
		return map[string]*ort.Tensor{
			model.Src: ort.Int64([]int64{int64(b.Size), int64(b.SrcLen)}, b.Src),
			model.Tgt: ort.Int64([]int64{int64(b.Size), int64(b.TgtLen)}, b.Dec),
		}, fmt.Sprintf("%d sentences of %s", b.Size, o.Src), nil
	}
	b, from, err := SampleBatch(m)
	if err != nil {
		return nil, "", err
	}
	if b != nil {
		if b[model.Src] == nil || b[model.Tgt] == nil {
			return nil, "", fmt.Errorf("metadata %s holds no %s and %s batch; give a check batch with --src", quantize.SampleKey, model.Src, model.Tgt)
		}
		for _, t := range b {
			for _, id := range t.Int64s() {
				if id < 0 || model.Vocab > 0 && id >= int64(model.Vocab) {
					return nil, "", fmt.Errorf("metadata %s holds token id %d, beyond the vocabulary of %d; give a check batch with --src", quantize.SampleKey, id, model.Vocab)
				}
			}
		}
		return b, fmt.Sprintf("%d sentences of %s recorded in the model", b[model.Src].Shape[0], from), nil
	}
	if model.Vocab <= 4 {
		return nil, "", fmt.Errorf("the model's vocabulary is not static; give a check batch with --src")
	}
	if err := ort.CheckSize("logits", 4, ort.Factor{Name: "--batch", Value: int64(o.N)}, ort.Factor{Name: "--len", Value: int64(o.Len)},
		ort.Factor{Name: "vocabulary", Value: int64(model.Vocab)}); err != nil {
		return nil, "", err
	}
	ins := []graph.IOInfo{
		{Name: model.Src, Elem: graph.Int64, Dims: []int64{-1, -1}},
		{Name: model.Tgt, Elem: graph.Int64, Dims: []int64{-1, -1}},
	}
	b, err = ort.RandomInputs(ins, o.N, o.Len, model.Vocab, o.Special.Pad, 7)
	return b, fmt.Sprintf("%d random sentences (the model records none: give --src)", o.N), err
}

// Write prints the result as qatc export does; verbose lists a LightSeq
// file's every clip field and where its value came from.
func (r *Result) Write(w io.Writer, verbose bool) error {
	switch {
	case r.Incremental != nil:
		rep := r.Incremental
		cfg := rep.Config
		layout := "Optimum's seq2seq layout"
		if r.merged {
			layout += ", merged decoder"
		}
		fmt.Fprintf(w, "wrote %s (%s, %s): hidden %d, %d heads, %d+%d layers, vocabulary %d\n",
			r.Output, rep.Format, layout, cfg.Hidden, cfg.DecoderHeads, cfg.EncoderLayers, cfg.DecoderLayers, cfg.Vocab)
		for _, f := range rep.Files {
			fmt.Fprintf(w, "  %-30s %9s  %3d integer weights, onnxruntime ran %d integer and %d float matrix kernels\n",
				f.File, safeio.FormatSize(f.Size, 1), f.IntWeights, f.IntKernels, f.FloatMatMuls)
		}
		k := rep.Check
		fmt.Fprintf(w, "check against the full-sequence model, teacher-forced through the cache on %d positions: max abs error %.4g (bound %.4g), top-1 agreement %.2f%% (min %.1f%%)\n",
			k.Positions, k.MaxAbsErr, k.Bound, 100*k.Top1, 100*k.MinTop1)
		return writeNotes(w, rep.Notes)
	case r.LightSeq != nil:
		ls, sz := r.LightSeq, r.LightSeq.Sizes
		fmt.Fprintf(w, "wrote %s (lightseq QuantTransformer): %s, hidden %d, heads %d, FFN %d, vocabulary %d, %d+%d layers\n",
			r.Output, safeio.FormatSize(ls.Bytes, 1), sz.Hidden, sz.Heads, sz.FFN, sz.Vocab, sz.EncoderLayers, sz.DecoderLayers)
		fmt.Fprintf(w, "%s; on %s\n", ls.Verify, r.CheckBatch)
		if n := ls.Report.Fallbacks(); n > 0 {
			fmt.Fprintf(w, "%d clip fields had no matching qatc quantizer and took a fallback value (--verbose lists each field's source)\n", n)
		}
		if verbose {
			_, err := io.WriteString(w, ls.Report.Format())
			return err
		}
		return nil
	}
	rep, ver := r.Report, r.Verify
	fmt.Fprintf(w, "wrote %s (%s): %d integer weights, %s (%.1f%% of the QAT model's %s)\n", r.Output, rep.Format,
		rep.IntWeights, safeio.FormatSize(rep.Size, 1), 100*float64(rep.Size)/float64(rep.SourceSize), safeio.FormatSize(rep.SourceSize, 1))
	fmt.Fprintf(w, "check against the QAT model on %d positions of %s (%d padded target positions left out): max abs error %.4g (bound %.4g), top-1 agreement %.2f%%, %.2f%% on the %d positions not tied within twice the bound (min %.1f%%)\n",
		ver.Positions, r.CheckBatch, ver.Padded, ver.MaxAbsErr, ver.Bound, 100*ver.Top1, 100*ver.DecisiveTop1, ver.Decisive, 100*ver.MinTop1)
	fmt.Fprintf(w, "bound = %s, step = %s\n", ver.Rule, ver.StepRule)
	fmt.Fprintf(w, "onnxruntime ran %d integer matrix kernels and %d float MatMul/Gemm\n", ver.IntKernels, ver.FloatMatMuls)
	return writeNotes(w, rep.Notes)
}

func writeNotes(w io.Writer, notes []string) error {
	for _, n := range notes {
		if _, err := fmt.Fprintf(w, "note: %s\n", n); err != nil {
			return err
		}
	}
	return nil
}

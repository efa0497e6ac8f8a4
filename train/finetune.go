package train

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"

	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/seq2seq"
)

// FinetuneConfig configures FinetuneFile: the training settings, and the
// files the data is read from.
type FinetuneConfig struct {
	Config
	// QAT fine-tunes a QAT model (qatc finetune); without it the model
	// must be fp32 (qatc train).
	QAT bool
	// Src and Tgt are the training sentences, ValidSrc and ValidTgt the
	// validation ones (none when empty); pairs longer than MaxLen tokens
	// are dropped from training (0: none). Tokenizer reads them (nil:
	// token ids), Special are the model's special ids.
	Src, Tgt, ValidSrc, ValidTgt string
	MaxLen                       int
	Tokenizer                    seq2seq.Tokenizer
	Special                      seq2seq.Special
	// SaveTrainingGraph, when set, is where the training graph is written
	// (by the first rank of a data-parallel run).
	SaveTrainingGraph string
	// Started, when set, is called once the training graph and sessions
	// are ready, with the trainer's Summary and the validation loss before
	// training (NaN without validation data or when resuming).
	Started func(summary string, validBefore float64)
	// Dump writes the model after the passes it names (--dump-after).
	Dump passes.Options
}

// Check checks the options that need no file, before anything is read:
// the loss, the clip gradient, the execution provider, validation data
// given whole, and a distillation loss only where there is a teacher.
func (cfg FinetuneConfig) Check() error {
	switch cfg.Loss.Kind {
	case "ce", "kd", "ce+kd":
	default:
		return optionErrorf("--loss %q: want ce, kd or ce+kd", cfg.Loss.Kind)
	}
	switch cfg.ClipGrad {
	case "", "neurst", "lsq":
	default:
		return optionErrorf("--clip-grad %q: want neurst or lsq", cfg.ClipGrad)
	}
	if cfg.Provider != "" && !slices.Contains(ort.Providers, cfg.Provider) {
		return optionErrorf("--ep %q: want %s", cfg.Provider, strings.Join(ort.Providers, " or "))
	}
	if (cfg.ValidSrc == "") != (cfg.ValidTgt == "") {
		return optionErrorf("--valid-src and --valid-tgt go together")
	}
	if !cfg.QAT && cfg.Loss.Kind != "ce" {
		return optionErrorf("--loss %s needs a QAT model (the teacher is its fp32 form); qatc train uses ce", cfg.Loss.Kind)
	}
	return nil
}

// FinetuneResult is what FinetuneFile did.
type FinetuneResult struct {
	*Result
	// ValidBefore is the validation loss before training (NaN when not
	// measured).
	ValidBefore float64
	// Ranks is the number of data-parallel ranks, Comms their exchanges.
	Ranks int
	Comms CommStats
	// Wrote reports that the model was written: not when interrupted, nor
	// by a data-parallel run's other ranks.
	Wrote bool
}

// errStopped ends a finetune pipeline early without an error: an
// interrupted run, or a rank that writes nothing.
var errStopped = errors.New("stopped")

// finetuneRun is one FinetuneFile: the passes share the trainer.
type finetuneRun struct {
	path    string
	cfg     FinetuneConfig
	model   seq2seq.Model
	trainer *Trainer
	res     FinetuneResult
}

// FinetunePipeline returns the passes FinetuneFile runs with cfg, for
// --passes.
func FinetunePipeline(cfg FinetuneConfig) *passes.Pipeline {
	return (&finetuneRun{cfg: cfg}).pipeline()
}

func (r *finetuneRun) pipeline() *passes.Pipeline {
	name, kind := "train", propFP32
	if r.cfg.QAT {
		name, kind = "finetune", propQAT
	}
	return &passes.Pipeline{Name: name, Passes: []*passes.Pass{
		{Name: "quantizers", Doc: "find the quantizers (passes/quantize): a QAT model has some, an fp32 one none",
			Produces: []string{kind}, Run: r.quantizers},
		{Name: "read", Doc: "read the training and validation sentences, checked against the model's vocabulary and positions",
			Requires: []string{kind}, Produces: []string{propData}, Run: r.read},
		{Name: "autodiff", Doc: "build the training graph (passes/autodiff; dumped as .training) and the teacher, open the sessions",
			Requires: []string{kind, propData}, Produces: []string{"training-graph"}, Run: r.autodiff},
		{Name: "train", Doc: "run the training loop: batches, Adam steps in Go, validation, checkpoints",
			Requires: []string{"training-graph"}, Produces: []string{"trained"}, Run: r.train},
		{Name: "write-back", Doc: "write the trained parameters (and their tied copies) into the model",
			Requires: []string{"trained"}, Produces: []string{"learned"}, Run: r.writeBack},
		{Name: "sample", Doc: "record a sample of the sentences in the model, for export's check",
			Requires: []string{"learned", propData}, Produces: []string{"sample"}, Run: r.sample},
	}}
}

// FinetuneFile trains the model at path (a file, or a model directory as
// the composition of its encoder and decoder, see seq2seq.Load) on cfg's
// data and writes the trained model to out (a directory in its layout,
// every file of it trained), through the finetune (or, without cfg.QAT,
// train) pipeline: finding the quantizers, reading the data, building the
// training graph, the loop, writing the parameters back and recording a
// sample of the sentences. When ctx is cancelled the loop writes a
// checkpoint and FinetuneFile returns with Interrupted set, writing no
// model. The model is dumped after the passes cfg.Dump names.
func FinetuneFile(ctx context.Context, path, out string, cfg FinetuneConfig) (*FinetuneResult, error) {
	stored, err := seq2seq.Load(path, cfg.Special.Pad)
	if err != nil {
		return nil, err
	}
	m := stored.Graph
	r := &finetuneRun{path: path, cfg: cfg}
	r.res.ValidBefore = math.NaN()
	err = r.pipeline().Run(&passes.Unit{Model: m, Context: ctx}, &cfg.Dump)
	if r.trainer != nil {
		defer r.trainer.Close()
		r.res.Comms = r.trainer.Comms()
	}
	r.res.Ranks = 1
	if cfg.Comm != nil {
		r.res.Ranks = cfg.Comm.Size()
	}
	switch {
	case errors.Is(err, errStopped):
		return &r.res, nil
	case err != nil:
		return nil, err
	}
	if err := stored.Save(out); err != nil {
		return nil, err
	}
	r.res.Wrote = true
	return &r.res, nil
}

// root reports whether this process writes files: the only one, or the
// first rank of a data-parallel run.
func (r *finetuneRun) root() bool { return r.cfg.Comm == nil || r.cfg.Comm.Rank() == 0 }

func (r *finetuneRun) quantizers(u *passes.Unit) error {
	qs, err := quantize.Find(u.Model)
	if err != nil {
		return fmt.Errorf("%s: %w", r.path, err)
	}
	switch {
	case r.cfg.QAT && len(qs) == 0:
		return fmt.Errorf("%s has no quantizers: run qatc insert on it first (or qatc train for an fp32 model)", r.path)
	case !r.cfg.QAT && len(qs) > 0:
		return fmt.Errorf("%s has %d quantizers: use qatc finetune for QAT models", r.path, len(qs))
	}
	return nil
}

func (r *finetuneRun) read(u *passes.Unit) error {
	var err error
	if r.model, err = seq2seq.Describe(u.Model, r.cfg.Roles); err != nil {
		return fmt.Errorf("%s: %w", r.path, err)
	}
	if r.model.Vocab > 0 {
		// A batch's logits: at most --batch-tokens rows of the vocabulary.
		if err := ort.CheckSize("logits", 4, ort.Factor{Name: "--batch-tokens", Value: int64(r.cfg.BatchTokens)}, ort.Factor{Name: "vocabulary", Value: int64(r.model.Vocab)}); err != nil {
			return err
		}
	}
	read := func(src, tgt string, maxLen int) (*seq2seq.Dataset, error) {
		return seq2seq.ReadParallel(src, tgt, seq2seq.DataOptions{
			Tokenizer: r.cfg.Tokenizer, Vocab: r.model.Vocab, Special: r.cfg.Special, MaxLen: maxLen,
			SrcPositions: r.model.SrcPositions, TgtPositions: r.model.TgtPositions,
		})
	}
	if r.cfg.Train, err = read(r.cfg.Src, r.cfg.Tgt, r.cfg.MaxLen); err != nil {
		return err
	}
	if r.cfg.ValidSrc != "" {
		if r.cfg.Valid, err = read(r.cfg.ValidSrc, r.cfg.ValidTgt, 0); err != nil {
			return err
		}
	}
	r.cfg.Roles = r.model.Roles
	return nil
}

func (r *finetuneRun) autodiff(u *passes.Unit) error {
	var err error
	if r.trainer, err = NewTrainer(u.Model, r.cfg.Config); err != nil {
		return err
	}
	u.Attach("training", r.trainer.TrainingGraph())
	if f := r.cfg.SaveTrainingGraph; f != "" && r.root() {
		if err := r.trainer.TrainingGraph().Save(f); err != nil {
			return fmt.Errorf("--save-training-graph: %w", err)
		}
	}
	return nil
}

func (r *finetuneRun) train(u *passes.Unit) error {
	t := r.trainer
	if r.cfg.Valid != nil && !r.cfg.Resume {
		v, err := t.Validate()
		if err != nil {
			return err
		}
		r.res.ValidBefore = v
	}
	if r.cfg.Started != nil {
		r.cfg.Started(t.Summary(), r.res.ValidBefore)
	}
	ctx := u.Context
	if ctx == nil {
		ctx = context.Background()
	}
	res, err := t.Run(ctx)
	if err != nil {
		return err
	}
	r.res.Result = res
	if res.Interrupted || !r.root() {
		return errStopped
	}
	return nil
}

func (r *finetuneRun) writeBack(*passes.Unit) error { return r.trainer.WriteBack() }

func (r *finetuneRun) sample(u *passes.Unit) error {
	d := r.cfg.Train
	if r.cfg.Valid != nil {
		d = r.cfg.Valid
	}
	_, err := RecordSample(u.Model, d, r.model.Roles)
	return err
}

// nullable is x, or nil when it is not finite: JSON's null.
func nullable(x float64) *float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return nil
	}
	return &x
}

// Report is train's and finetune's --json output.
type Report struct {
	Output          string   `json:"output"`
	Steps           int64    `json:"steps"`
	Epoch           int      `json:"epoch"`
	Tokens          int64    `json:"tokens"`
	Loss            *float64 `json:"loss"`
	ValidLoss       *float64 `json:"valid_loss"`
	ValidLossBefore *float64 `json:"valid_loss_before"`
	Seconds         float64  `json:"seconds"`
	Params          int      `json:"params"`
	// Ranks is the number of data-parallel ranks; CommSeconds and
	// CommBytes the time in the gradient all-reduces and the bytes each
	// rank contributed to them; WaitSeconds the time in the step
	// exchanges before them, mostly waiting for the slowest rank.
	Ranks       int     `json:"ranks"`
	CommSeconds float64 `json:"comm_seconds"`
	WaitSeconds float64 `json:"wait_seconds"`
	CommBytes   int64   `json:"comm_bytes"`
}

// Report describes the result for --json, out being the model written.
func (r *FinetuneResult) Report(out string) Report {
	return Report{
		Output: out, Steps: r.Steps, Epoch: r.Epoch, Tokens: r.Tokens,
		Loss: nullable(r.Loss), ValidLoss: nullable(r.ValidLoss), ValidLossBefore: nullable(r.ValidBefore),
		Seconds: r.Elapsed.Seconds(), Params: len(r.Params),
		Ranks: r.Ranks, CommSeconds: r.Comms.Time.Seconds(), WaitSeconds: r.Comms.Wait.Seconds(), CommBytes: r.Comms.Bytes,
	}
}

// Write prints what the run did, as qatc train and finetune do: the
// ranks' exchanges on log (when there are several), then the model
// written on w; validated says whether validation data was given.
func (r *FinetuneResult) Write(w, log io.Writer, out string, validated bool) error {
	if r.Ranks > 1 {
		secs, comms := r.Elapsed.Seconds(), r.Comms
		fmt.Fprintf(log, "%d ranks: %d gradient all-reduces of %.1f MB, %.1f s (%.1f%% of the run); %.1f s (%.1f%%) waiting for the slowest rank\n",
			r.Ranks, comms.Calls, float64(comms.Bytes)/float64(max(comms.Calls, 1))/1e6, comms.Time.Seconds(), 100*comms.Time.Seconds()/secs, comms.Wait.Seconds(), 100*comms.Wait.Seconds()/secs)
	}
	validation := ""
	switch {
	case !validated:
	case math.IsNaN(r.ValidBefore):
		validation = fmt.Sprintf(", validation loss %.4f", r.ValidLoss)
	default:
		validation = fmt.Sprintf(", validation loss %.4f (before: %.4f)", r.ValidLoss, r.ValidBefore)
	}
	_, err := fmt.Fprintf(w, "wrote %s: %d steps, %d target tokens, last loss %.4f%s, %s\n",
		out, r.Steps, r.Tokens, r.Loss, validation, r.Elapsed.Round(1e9))
	return err
}

// Metrics is one line of --metrics: the progress of one step.
type Metrics struct {
	Step         int64    `json:"step"`
	Epoch        int      `json:"epoch"`
	Loss         *float64 `json:"loss"`
	GradNorm     *float64 `json:"grad_norm"`
	LR           float64  `json:"lr"`
	Tokens       int64    `json:"tokens"`
	TokensPerSec float64  `json:"tokens_per_sec"`
	Seconds      float64  `json:"seconds"`
	CommSeconds  float64  `json:"comm_seconds"`
	WaitSeconds  float64  `json:"wait_seconds"`
	ValidLoss    *float64 `json:"valid_loss"`
}

// Metrics returns the step's --metrics line (epochs counted from 1).
func (p Progress) Metrics() Metrics {
	return Metrics{
		Step: p.Step, Epoch: p.Epoch + 1, Loss: nullable(p.Loss), GradNorm: nullable(p.GradNorm), LR: p.LR,
		Tokens: p.Tokens, TokensPerSec: p.TokensPerSec, Seconds: p.Elapsed.Seconds(),
		CommSeconds: p.CommTime.Seconds(), WaitSeconds: p.WaitTime.Seconds(), ValidLoss: nullable(p.ValidLoss),
	}
}

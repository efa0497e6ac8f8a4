package train

import (
	"context"
	"errors"
	"fmt"
	"math"

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
// model. o dumps the model after passes (nil: none).
func FinetuneFile(ctx context.Context, path, out string, cfg FinetuneConfig, o *passes.Options) (*FinetuneResult, error) {
	stored, err := seq2seq.Load(path, cfg.Special.Pad)
	if err != nil {
		return nil, err
	}
	m := stored.Graph
	r := &finetuneRun{path: path, cfg: cfg}
	r.res.ValidBefore = math.NaN()
	err = r.pipeline().Run(&passes.Unit{Model: m, Context: ctx}, o)
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
	read := func(src, tgt string, maxLen int) (*Dataset, error) {
		return ReadParallel(src, tgt, DataOptions{
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

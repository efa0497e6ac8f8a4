package train

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"time"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/autodiff"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/seq2seq"
)

// Loss chooses the training objective, which passes/autodiff builds into
// the training graph.
type Loss struct {
	// Kind is "ce" (token cross-entropy against the labels), "kd"
	// (distillation from the teacher's logits) or "ce+kd".
	Kind string
	// LabelSmoothing of the cross-entropy (NeurST: 0.1).
	LabelSmoothing float64
	// KDWeight weighs the distillation term in "ce+kd": ce + w·kd.
	// Temperature T softens both distributions in kd (0: 1); the kd term
	// is T²·KL(teacher ‖ student), mean over tokens.
	KDWeight    float64
	Temperature float64
	// WeightClipL2 and ActClipL2 add mean(c²) times them for every weight
	// and activation clip tensor (NeurST: 0.001 and 0.01 on its per-tensor
	// clips; the mean keeps a tensor of block clips at one clip's weight).
	WeightClipL2, ActClipL2 float64
	// Hidden, when positive, distils every quantized activation of a QAT
	// model (the LayerNorm outputs that feed projections, attention
	// probabilities, FFN activations: the tensors the activation
	// quantizers see) from the fp32 teacher: Hidden times the sum of their
	// relative squared errors ‖x − teacher‖²/‖teacher‖² (TernaryBERT's
	// hidden-state and attention distillation).
	Hidden float64
}

// usesTeacherLogits reports whether the loss needs teacher logits.
func (l Loss) usesTeacherLogits() bool { return l.Kind == "kd" || l.Kind == "ce+kd" }

// usesTeacher reports whether the loss needs the teacher at all.
func (l Loss) usesTeacher() bool { return l.usesTeacherLogits() || l.Hidden > 0 }

// Config configures Run.
type Config struct {
	// Train is the training set; Valid, when set, is evaluated every
	// ValidEvery steps and at the end.
	Train, Valid *seq2seq.Dataset
	// BatchTokens bounds a batch's padded tokens (rows × longest
	// sentence).
	BatchTokens int
	// Accumulate splits every batch into this many micro-batches (of
	// about BatchTokens/Accumulate tokens; a batch of fewer rows into one
	// per row), run one after another and summed into the batch's one
	// update: the same update as the whole batch, in the memory of a
	// micro-batch. 0 and 1 run each batch whole.
	Accumulate int
	// Seed fixes the batch order.
	Seed uint64
	// Steps is the number of updates to stop at, resumed ones included;
	// 0 trains Epochs epochs (at least one).
	Steps  int64
	Epochs int
	// Threads is onnxruntime's intra-op thread count (0: its default).
	Threads int

	// LR is the weights' base learning rate, ClipLR the clip ranges' (0:
	// LR); Schedule scales both (nil: constant).
	LR, ClipLR  float64
	WeightDecay float64
	Schedule    Schedule
	// Optimizer is the update rule; a zero Eps means DefaultOptimizer.
	Optimizer OptimizerConfig
	// FreezeWeights trains the clip ranges only.
	FreezeWeights bool
	Loss          Loss
	// Untie trains every copy of a tied tensor on its own (--untie);
	// ClipGrad is the quantizers' scale gradient, "neurst" (default) or
	// "lsq".
	Untie    bool
	ClipGrad string

	// Roles names the model's inputs and logits where finding them by
	// shape is not enough.
	Roles seq2seq.Roles

	// ValidEvery and CheckpointEvery are in steps (0: never, except at
	// the end). Checkpoints go to CheckpointDir (none when empty), which
	// keeps the newest KeepCheckpoints (0: all).
	ValidEvery, CheckpointEvery int64
	CheckpointDir               string
	KeepCheckpoints             int
	// Resume continues from the newest checkpoint in CheckpointDir when
	// there is one. The model given to Run must be the one the first run
	// started from: its teacher is built from it.
	Resume bool

	// Progress, when set, is called after every update.
	Progress func(Progress)

	// Comm connects the ranks of a data-parallel run (nil: one process).
	// Every rank trains on its share of each batch and the gradients are
	// summed across ranks before the same update on every rank; rank 0
	// alone validates and writes checkpoints.
	Comm Comm
	// Provider is onnxruntime's execution provider for the sessions:
	// "" (or "cpu") or "cuda".
	Provider string
}

// Result is what a run did.
type Result struct {
	// Steps is the number of updates done, resumed ones included;
	// ResumedFrom the step the run continued from (0: a fresh start).
	Steps, ResumedFrom int64
	Epoch              int
	Tokens             int64
	// Loss is the last training batch's loss, ValidLoss the final
	// validation loss (NaN without a validation set).
	Loss, ValidLoss float64
	// Interrupted is set when the context was cancelled; a checkpoint was
	// written when a checkpoint directory was set.
	Interrupted bool
	// Checkpoint is the last checkpoint written ("" for none).
	Checkpoint string
	Elapsed    time.Duration
	// Params are the trained parameters' names.
	Params []string
}

// NaNError reports a non-finite loss or gradient.
type NaNError struct {
	// Step is the update that failed (1-based); Epoch and Batch (0-based)
	// locate its batch in the epoch's plan, Lines are the batch's pairs'
	// line numbers in the data files.
	Step  int64
	Epoch int
	Batch int
	Lines []int
	// What says which value was not finite.
	What string
	// Checkpoint is the last good checkpoint, "" when there is none.
	Checkpoint string
}

func (e *NaNError) Error() string {
	s := fmt.Sprintf("step %d: %s on batch %d of epoch %d (data lines %s); lower the learning rate or check those lines", e.Step, e.What, e.Batch+1, e.Epoch+1, lineList(e.Lines))
	if e.Checkpoint != "" {
		s += "; the last good checkpoint is " + e.Checkpoint
	}
	return s
}

// teacherInput is the training graph's input for the teacher's logits.
const teacherInput = autodiff.TeacherInput

// Trainer holds a training run's sessions and buffers. Run is the usual
// entry; a Trainer lets a caller step and evaluate by itself.
type Trainer struct {
	cfg     Config
	model   *graph.Model
	roles   seq2seq.Model
	tg      *trainingGraph
	sess    *ort.Session
	teacher *ort.Session
	eval    *ort.Session
	params  []*Param
	opt     *Optimizer
	batcher *Batcher
	// validPlan is the validation set's batches, in length order.
	validPlan Plan
	sched     Schedule
	dataID    string

	state   State
	plan    Plan
	lastCkp string // the newest checkpoint written or resumed from
	ckpStep int64  // its step (-1: none)

	// gradBuf holds every parameter's gradient back to back (each
	// Param.Grad is a slice of it): one buffer to clear, or to sum
	// across processes.
	gradBuf []float32

	// runTime and updateTime add up Step's time in the training session
	// and in the optimizer (BenchmarkFinetune reports them).
	runTime, updateTime time.Duration

	comm Comm
	// ctx is the context of Run, whose cancellation a rank reports to
	// the others; stop is set when some rank reported it.
	ctx  context.Context
	stop bool
	// comms counts the gradient all-reduces: their time and bytes.
	comms CommStats
}

// CommStats is the cost of summing gradients across ranks.
type CommStats struct {
	// Calls is the number of all-reduces, Bytes the gradient bytes each
	// rank contributed to them, Time the time spent in them. Wait is the
	// time in the exchange of step reports before them, which is mostly
	// waiting for the slowest rank to finish its share.
	Calls      int64
	Bytes      int64
	Time, Wait time.Duration
}

// NewTrainer builds the training graph of m and opens the sessions. The
// parameters are m's initializers themselves, updated in place by every
// step (copies tied to a parameter are written at checkpoints and by
// WriteBack), so that training holds no second copy of the weights.
//
// In a data-parallel run (cfg.Comm with more than one rank) every rank
// calls NewTrainer at the same point: the ranks exchange a fingerprint of
// their settings, data and model, and a failure on any rank (or a
// difference) makes every rank return the same *CollectiveError.
func NewTrainer(m *graph.Model, cfg Config) (*Trainer, error) {
	t, err := newTrainer(m, cfg)
	var items [][]string
	if err == nil {
		items = t.startItems()
	}
	if err := meet(cfg.Comm, items, err, startHint); err != nil {
		if t != nil {
			t.Close()
		}
		return nil, err
	}
	return t, nil
}

// newTrainer is NewTrainer on this rank alone.
func newTrainer(m *graph.Model, cfg Config) (*Trainer, error) {
	if cfg.Comm == nil {
		cfg.Comm = Single{}
	}
	if cfg.Train == nil || len(cfg.Train.Examples) == 0 {
		return nil, fmt.Errorf("no training data")
	}
	if cfg.LR <= 0 {
		return nil, fmt.Errorf("learning rate %g: it must be positive", cfg.LR)
	}
	if cfg.ClipLR == 0 {
		cfg.ClipLR = cfg.LR
	}
	if cfg.Schedule == nil {
		cfg.Schedule = Constant{}
	}
	if cfg.Optimizer.Eps == 0 {
		cfg.Optimizer = DefaultOptimizer()
	}
	if cfg.Loss.Kind == "" {
		cfg.Loss.Kind = "ce"
	}
	switch cfg.Loss.Kind {
	case "ce", "kd", "ce+kd":
	default:
		return nil, fmt.Errorf("unknown loss %q; use ce, kd or ce+kd", cfg.Loss.Kind)
	}
	if cfg.Resume && cfg.CheckpointDir == "" {
		return nil, fmt.Errorf("resume needs a checkpoint directory")
	}
	if cfg.Accumulate < 0 {
		return nil, fmt.Errorf("accumulate %d: want 1 or more micro-batches per update", cfg.Accumulate)
	}
	roles, err := seq2seq.Describe(m, cfg.Roles)
	if err != nil {
		return nil, err
	}
	if roles.Vocab > 0 {
		for _, ds := range []*seq2seq.Dataset{cfg.Train, cfg.Valid} {
			if err := checkVocab(ds, roles.Vocab); err != nil {
				return nil, err
			}
		}
	}
	batcher, err := NewBatcher(cfg.Train, cfg.BatchTokens, cfg.Seed)
	if err != nil {
		return nil, err
	}
	if n, size := len(batcher.Epoch(0)), cfg.Comm.Size(); size > n {
		return nil, fmt.Errorf("%d ranks but the training data makes only %s of at most %d tokens; use at most %s, or smaller batches", size, plural(n, "batch", "batches"), cfg.BatchTokens, plural(n, "rank", "ranks"))
	}
	t := &Trainer{cfg: cfg, model: m, roles: roles, batcher: batcher, sched: cfg.Schedule, dataID: fingerprint(cfg.Train), comm: cfg.Comm}
	if cfg.Valid != nil {
		vb, err := NewBatcher(cfg.Valid, cfg.BatchTokens, 0)
		if err != nil {
			return nil, fmt.Errorf("validation data: %v", err)
		}
		t.validPlan = vb.Sequential()
	}
	if t.tg, err = buildTrainingGraph(m, roles, cfg); err != nil {
		return nil, err
	}
	if err := t.initParams(); err != nil {
		return nil, err
	}
	if t.opt, err = NewOptimizer(cfg.Optimizer, t.params); err != nil {
		return nil, err
	}
	if err := t.openSessions(); err != nil {
		t.Close()
		return nil, err
	}
	t.state = State{Seed: cfg.Seed, Data: t.dataID}
	t.ckpStep = -1
	return t, nil
}

// checkVocab refuses data with ids the model's vocabulary lacks.
func checkVocab(ds *seq2seq.Dataset, vocab int) error {
	if ds == nil {
		return nil
	}
	for _, e := range ds.Examples {
		for _, side := range []struct {
			path string
			ids  []int64
		}{{ds.SrcPath, e.Src}, {ds.TgtPath, e.Tgt}} {
			for _, id := range side.ids {
				if id >= int64(vocab) {
					return fmt.Errorf("%s:%d: token id %d is beyond the model's vocabulary of %d tokens", side.path, e.Line, id, vocab)
				}
			}
		}
	}
	return nil
}

// fingerprint identifies a dataset's examples, so that a resume on other
// data is refused rather than silently continued.
func fingerprint(ds *seq2seq.Dataset) string {
	h := fnv.New64a()
	var buf [8]byte
	put := func(v int64) {
		for i := range buf {
			buf[i] = byte(v >> (8 * i))
		}
		h.Write(buf[:])
	}
	for _, e := range ds.Examples {
		put(int64(e.Line))
		for _, id := range e.Src {
			put(id)
		}
		put(-1)
		for _, id := range e.Tgt {
			put(id)
		}
		put(-2)
	}
	return fmt.Sprintf("%d pairs, fnv64a %016x", len(ds.Examples), h.Sum64())
}

// initParams makes a buffer for each trainable input, holding the model's
// initializer values.
func (t *Trainer) initParams() error {
	weights := &Group{Name: "weights", LR: t.cfg.LR, WeightDecay: t.cfg.WeightDecay}
	clips := &Group{Name: "clips", LR: t.cfg.ClipLR}
	total := 0
	for _, name := range t.tg.Params {
		init := t.model.Initializer(name)
		if init == nil {
			return fmt.Errorf("training graph input %q is not an initializer of the model", name)
		}
		vals, inModel, err := paramView(init)
		if err != nil {
			return fmt.Errorf("trainable %v", err)
		}
		p := &Param{
			Name:    name,
			Dims:    append([]int64(nil), init.Dims...),
			Data:    vals,
			Group:   weights,
			inModel: inModel,
		}
		if t.tg.Clips[name] {
			p.Group = clips
		}
		t.params = append(t.params, p)
		total += len(vals)
	}
	t.gradBuf = make([]float32, total)
	off := 0
	for _, p := range t.params {
		p.Grad = t.gradBuf[off : off+len(p.Data) : off+len(p.Data)]
		off += len(p.Data)
	}
	if len(t.params) == 0 {
		return fmt.Errorf("the model has nothing to train")
	}
	return nil
}

// openSessions opens the training session, the teacher's when the loss
// distills and the evaluation session when there is validation data.
func (t *Trainer) openSessions() error {
	// Threads sleep rather than spin between ops: a training step is a
	// long chain of large ops, and on a shared machine a spinning thread
	// takes the core its partner (or the next op) needs. Tensors come
	// from the arena rather than a per-run memory pattern, whose block
	// (every activation the backward pass keeps) is faulted in afresh on
	// every step.
	opts := &ort.Options{Threads: t.cfg.Threads, NoSpinning: true, NoMemPattern: true, Provider: t.cfg.Provider}
	var err error
	if t.sess, err = ort.Open(t.tg.Model, opts); err != nil {
		return fmt.Errorf("training graph: %v", err)
	}
	if t.cfg.Loss.usesTeacher() {
		tm, err := quantize.Strip(t.model)
		if err != nil {
			return err
		}
		for _, x := range t.tg.Hidden {
			if !tm.IsGraphOutput(x) {
				tm.AddOutput(x, graph.Float, nil)
			}
		}
		if t.teacher, err = ort.Open(tm, opts); err != nil {
			return fmt.Errorf("teacher: %v", err)
		}
	}
	if t.cfg.Valid != nil && t.comm.Rank() == 0 {
		em, err := withParamsAsInputs(t.model, t.tg.Params, t.tg.Tied)
		if err != nil {
			return err
		}
		if t.eval, err = ort.Open(em, opts); err != nil {
			return fmt.Errorf("evaluation graph: %v", err)
		}
	}
	return nil
}

// Close ends the sessions.
func (t *Trainer) Close() error {
	var errs []error
	for _, s := range []*ort.Session{t.sess, t.teacher, t.eval} {
		if s != nil {
			errs = append(errs, s.Close())
		}
	}
	return errors.Join(errs...)
}

// Params returns the trainable parameters, whose Data the sessions read.
func (t *Trainer) Params() []*Param { return t.params }

// State returns where training stands.
func (t *Trainer) State() State { return t.state }

// TrainingGraph returns the graph the training session runs.
func (t *Trainer) TrainingGraph() *graph.Model { return t.tg.Model }

// paramInputs returns the parameter buffers as session inputs.
func (t *Trainer) paramInputs() map[string]*ort.Tensor {
	in := make(map[string]*ort.Tensor, len(t.params)+4)
	for _, p := range t.params {
		in[p.Name] = ort.Float32(p.Dims, p.Data)
	}
	return in
}

// bindAliases gives the training graph's parameter aliases their
// parameters' tensors in in.
func (t *Trainer) bindAliases(in map[string]*ort.Tensor) {
	for _, a := range t.tg.Aliases {
		in[a.Input] = in[a.Param]
	}
}

// Resume loads the newest checkpoint in the checkpoint directory, if any,
// and reports whether it found one.
func (t *Trainer) Resume() (bool, error) {
	c, err := LatestCheckpoint(t.cfg.CheckpointDir)
	if err != nil || c == nil {
		return false, err
	}
	if c.State.Seed != t.cfg.Seed {
		return false, fmt.Errorf("checkpoint %s was trained with seed %d, this run has seed %d; use the same seed to resume", c.Dir, c.State.Seed, t.cfg.Seed)
	}
	if c.State.Data != t.dataID {
		return false, fmt.Errorf("checkpoint %s was trained on other data (%s; now %s); resume with the same data files", c.Dir, c.State.Data, t.dataID)
	}
	cm, err := graph.Load(c.ModelPath())
	if err != nil {
		return false, fmt.Errorf("checkpoint: %v", err)
	}
	for _, p := range t.params {
		init := cm.Initializer(p.Name)
		if init == nil {
			return false, fmt.Errorf("checkpoint %s: the model has no initializer %q; it is not a checkpoint of this model", c.Dir, p.Name)
		}
		vals, err := graph.Floats(init)
		if err != nil {
			return false, fmt.Errorf("checkpoint %s: %v", c.Dir, err)
		}
		if len(vals) != len(p.Data) {
			return false, fmt.Errorf("checkpoint %s: %q has %d values, the model %d; it is not a checkpoint of this model", c.Dir, p.Name, len(vals), len(p.Data))
		}
		copy(p.Data, vals)
	}
	if err := t.opt.LoadState(c.OptimizerPath()); err != nil {
		return false, err
	}
	if t.opt.Steps != c.State.Step {
		return false, fmt.Errorf("checkpoint %s: the optimizer state is at step %d but the checkpoint at %d", c.Dir, t.opt.Steps, c.State.Step)
	}
	t.state = c.State
	t.plan = nil
	t.lastCkp, t.ckpStep = c.Dir, c.State.Step
	return true, nil
}

// totalSteps returns the step the run stops at.
func (t *Trainer) totalSteps() int64 {
	if t.cfg.Steps > 0 {
		return t.cfg.Steps
	}
	epochs := max(t.cfg.Epochs, 1)
	return int64(epochs) * int64(len(t.batcher.Epoch(0)))
}

// nextBatch returns the batch at the current position, moving to the next
// epoch's plan when the current one is used up.
func (t *Trainer) nextBatch() (*seq2seq.Batch, int) {
	if t.plan == nil {
		t.plan = t.batcher.Epoch(t.state.Epoch)
	}
	if t.state.Batch >= len(t.plan) {
		t.state.Epoch++
		t.state.Batch = 0
		t.plan = t.batcher.Epoch(t.state.Epoch)
	}
	return t.cfg.Train.MakeBatch(t.plan[t.state.Batch]), t.state.Batch
}

// batchInputs returns the session inputs of batch b besides the
// parameters.
func (t *Trainer) batchInputs(in map[string]*ort.Tensor, b *seq2seq.Batch) {
	in[t.roles.Src] = ort.Int64([]int64{int64(b.Size), int64(b.SrcLen)}, b.Src)
	in[t.roles.Tgt] = ort.Int64([]int64{int64(b.Size), int64(b.TgtLen)}, b.Dec)
}

// Step trains on the next batch: forward and backward in onnxruntime
// (one run, or one per micro-batch with Config.Accumulate), then the
// optimizer's update of the parameter buffers. It returns the loss and
// the gradient norm; a non-finite loss or gradient returns a *NaNError and
// leaves the parameters as they were.
//
// In a data-parallel run each rank runs its share of the batch (reduce)
// and the ranks sum their gradients, so that every rank then takes the
// update one process takes on the whole batch.
func (t *Trainer) Step() (loss, gradNorm float64, err error) {
	b, pos := t.nextBatch()
	step := t.state.Step + 1
	nanErr := func(what string, lines []int) error {
		return &NaNError{Step: step, Epoch: t.state.Epoch, Batch: pos, Lines: lines, What: what, Checkpoint: t.lastCkp}
	}
	if t.comm.Size() == 1 {
		loss, err = t.gradients(step, b, b.Tokens, nanErr)
	} else {
		loss, err = t.reduce(step, b, nanErr)
	}
	if err != nil {
		return loss, 0, err
	}
	start := time.Now()
	gradNorm, err = t.opt.Step(t.sched.Factor(step))
	t.updateTime += time.Since(start)
	if err != nil {
		err = nanErr(err.Error(), b.Lines)
		if t.comm.Size() > 1 {
			// The summed gradients, hence the norm, are the same on
			// every rank.
			err = collective(err)
		}
		return loss, gradNorm, err
	}
	t.state.Step = step
	t.state.Batch++
	t.state.Tokens += int64(b.Tokens)
	t.state.Loss = loss
	lr := t.cfg.LR
	if t.cfg.FreezeWeights {
		lr = t.cfg.ClipLR
	}
	t.state.LR = lr * t.sched.Factor(step)
	return loss, gradNorm, nil
}

// gradients leaves in the parameters' Grad buffers the gradient of the
// loss on b weighted by b's share of total label tokens (1 for a whole
// batch), and returns the loss so weighted. The loss is a mean over a
// batch's tokens, so weighting the parts of a batch by their tokens and
// summing gives the whole batch's loss and gradient; the loss's terms
// that do not depend on the data (the clips' L2) keep their weight, since
// the shares add up to one. With Config.Accumulate the rows run as
// micro-batches, each adding its weighted gradient to the buffers in
// place. A non-finite loss returns nanErr's error for the micro-batch's
// data lines.
func (t *Trainer) gradients(step int64, b *seq2seq.Batch, total int, nanErr func(string, []int) error) (float64, error) {
	parts := t.microBatches(b)
	if t.tg.GradScale != "" {
		clear(t.gradBuf)
	}
	var loss float64
	for _, mb := range parts {
		w := float64(mb.Tokens) / float64(total)
		l, err := t.backward(step, mb, w)
		if err != nil {
			return 0, err
		}
		if math.IsNaN(l) || math.IsInf(l, 0) {
			return l, nanErr(fmt.Sprintf("the loss is %g", l), mb.Lines)
		}
		if len(parts) == 1 && w == 1 {
			// The plain step, with the loss as the graph computed it.
			return l, nil
		}
		loss += w * l
	}
	return loss, nil
}

// microBatches splits b's rows into Config.Accumulate micro-batches as
// even as the rows allow (b itself when it is not split), each padded to
// its own longest sentence.
func (t *Trainer) microBatches(b *seq2seq.Batch) []*seq2seq.Batch {
	n := min(max(t.cfg.Accumulate, 1), len(b.Index))
	if n <= 1 {
		return []*seq2seq.Batch{b}
	}
	parts := make([]*seq2seq.Batch, n)
	for i := range parts {
		parts[i] = t.cfg.Train.MakeBatch(b.Index[i*len(b.Index)/n : (i+1)*len(b.Index)/n])
	}
	return parts
}

// shard returns rank r's rows of the batch at positions idx: a contiguous
// share of them, as even as the rows allow (as microBatches splits).
func shard(idx []int, r, size int) []int {
	return idx[r*len(idx)/size : (r+1)*len(idx)/size]
}

// reduce runs this rank's shard of b (gradients, weighted by the shard's
// share of b's tokens and in Config.Accumulate micro-batches) and sums
// the gradients of all ranks in place: the sum is b's gradient, as one
// process computes it, and the shards' weighted losses add up to b's
// loss. The ranks first exchange their losses, failures (a NaN included)
// and interruptions, so that all of them take the same decision.
func (t *Trainer) reduce(step int64, b *seq2seq.Batch, nanErr func(string, []int) error) (float64, error) {
	size, rank := t.comm.Size(), t.comm.Rank()
	rep := stepReport{Stop: t.ctx != nil && t.ctx.Err() != nil}
	if mine := shard(b.Index, rank, size); len(mine) == 0 {
		clear(t.gradBuf)
	} else {
		loss, err := t.gradients(step, t.cfg.Train.MakeBatch(mine), b.Tokens, func(what string, lines []int) error {
			rep.NaN, rep.Lines = what, lines
			return errNaNReported
		})
		switch {
		case rep.NaN != "":
		case err != nil:
			rep.Err = err.Error()
		default:
			rep.Loss = loss
		}
	}
	start := time.Now()
	reps, err := t.exchangeReports(step, rep)
	t.comms.Wait += time.Since(start)
	if err != nil {
		return 0, err
	}
	var loss float64
	for r, rp := range reps {
		if rp.NaN != "" {
			return math.NaN(), collective(nanErr(fmt.Sprintf("%s on rank %d", rp.NaN, r), rp.Lines))
		}
		t.stop = t.stop || rp.Stop
		loss += rp.Loss
	}
	start = time.Now()
	err = t.comm.AllReduce(t.gradBuf)
	t.comms.Time += time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("step %d: gradient all-reduce: %v", step, err)
	}
	t.comms.Calls++
	t.comms.Bytes += 4 * int64(len(t.gradBuf))
	return loss, nil
}

// errNaNReported stands for a NaN that reduce reports to the other ranks.
var errNaNReported = errors.New("NaN reported")

// Comms returns the cost of the gradient all-reduces so far.
func (t *Trainer) Comms() CommStats { return t.comms }

// backward runs the training graph on b. A plain graph writes the
// gradients into the Grad buffers, which are then scaled by weight; an
// accumulating graph (Config.Accumulate) reads the buffers as its
// accumulators and writes them back with weight times b's gradients
// added. It returns b's loss.
func (t *Trainer) backward(step int64, b *seq2seq.Batch, weight float64) (float64, error) {
	in := t.paramInputs()
	t.bindAliases(in)
	t.batchInputs(in, b)
	in[t.tg.Labels] = ort.Int64([]int64{int64(b.Size), int64(b.TgtLen)}, b.Labels)
	if t.teacher != nil {
		tin := map[string]*ort.Tensor{}
		t.batchInputs(tin, b)
		var want []string
		if t.cfg.Loss.usesTeacherLogits() {
			want = append(want, t.roles.Logits)
		}
		want = append(want, t.tg.Hidden...)
		out, err := t.teacher.Run(tin, want...)
		if err != nil {
			return 0, fmt.Errorf("step %d: teacher: %v", step, err)
		}
		if t.cfg.Loss.usesTeacherLogits() {
			in[teacherInput] = out[t.roles.Logits]
		}
		for _, x := range t.tg.Hidden {
			in[t.tg.TeacherHidden[x]] = out[x]
		}
	}
	// The session writes the gradients straight into the buffers the
	// optimizer reads.
	grads := make(map[string]*ort.Tensor, len(t.params))
	for _, p := range t.params {
		g := ort.Float32(p.Dims, p.Grad)
		grads[t.tg.Grads[p.Name]] = g
		if acc := t.tg.GradIns[p.Name]; acc != "" {
			in[acc] = g
		}
	}
	if t.tg.GradScale != "" {
		in[t.tg.GradScale] = ort.Float32(nil, []float32{float32(weight)})
	}
	start := time.Now()
	out, err := t.sess.RunInto(in, grads)
	t.runTime += time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("step %d: %v", step, err)
	}
	lt := out[t.tg.Loss]
	if lt == nil || lt.Len() != 1 {
		return 0, fmt.Errorf("step %d: the training graph gave no scalar %q", step, t.tg.Loss)
	}
	if t.tg.GradScale == "" && weight != 1 {
		scale(t.gradBuf, float32(weight))
	}
	return float64(lt.Float32s()[0]), nil
}

// scale multiplies x by s in parallel.
func scale(x []float32, s float32) {
	n := (len(x) + chunkSize - 1) / chunkSize
	parallel(n, func(c int) {
		for i := c * chunkSize; i < min((c+1)*chunkSize, len(x)); i++ {
			x[i] *= s
		}
	})
}

// Validate returns the token-weighted mean cross-entropy (no label
// smoothing) of the validation set under the current parameters. In a
// data-parallel run rank 0 alone validates; the other ranks return NaN.
func (t *Trainer) Validate() (float64, error) {
	if t.comm.Rank() != 0 && t.cfg.Valid != nil {
		return math.NaN(), nil
	}
	if t.eval == nil {
		return math.NaN(), fmt.Errorf("no validation data")
	}
	ds := t.cfg.Valid
	var sum float64
	var count int
	for _, idx := range t.validPlan {
		b := ds.MakeBatch(idx)
		in := t.paramInputs()
		t.batchInputs(in, b)
		out, err := t.eval.Run(in, t.roles.Logits)
		if err != nil {
			return 0, fmt.Errorf("validation: %v", err)
		}
		s, n, err := crossEntropy(out[t.roles.Logits], b.Labels, ds.Special.Pad)
		if err != nil {
			return 0, fmt.Errorf("validation: %v", err)
		}
		sum += s
		count += n
	}
	return sum / float64(count), nil
}

// crossEntropy returns the summed cross-entropy of logits [B, T, V]
// against labels [B, T], skipping pad, and the number of tokens counted.
func crossEntropy(logits *ort.Tensor, labels []int64, pad int64) (float64, int, error) {
	if logits == nil || len(logits.Shape) != 3 || int(logits.Shape[0]*logits.Shape[1]) != len(labels) {
		return 0, 0, fmt.Errorf("logits of shape %v do not match %d labels", logitsShape(logits), len(labels))
	}
	v := int(logits.Shape[2])
	x := logits.Float32s()
	var sum float64
	n := 0
	for i, l := range labels {
		if l == pad {
			continue
		}
		if l < 0 || int(l) >= v {
			return 0, 0, fmt.Errorf("label %d is outside the logits' %d classes", l, v)
		}
		row := x[i*v : (i+1)*v]
		mx := math.Inf(-1)
		for _, z := range row {
			mx = math.Max(mx, float64(z))
		}
		var se float64
		for _, z := range row {
			se += math.Exp(float64(z) - mx)
		}
		sum += mx + math.Log(se) - float64(row[l])
		n++
	}
	return sum, n, nil
}

func logitsShape(t *ort.Tensor) []int64 {
	if t == nil {
		return nil
	}
	return t.Shape
}

// WriteBack stores the parameters' current values into the model's
// initializers (and the copies tied to them).
func (t *Trainer) WriteBack() error {
	for _, p := range t.params {
		if !p.inModel {
			if err := graph.SetFloats(t.model.Initializer(p.Name), p.Data); err != nil {
				return err
			}
		}
		for _, tie := range t.tg.Tied[p.Name] {
			if err := tie.store(t.model, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// Checkpoint writes the model with the current parameters, the optimizer
// state and the loop's state into the checkpoint directory. In a
// data-parallel run rank 0 alone writes it (every rank holds the same
// parameters and optimizer state); the other ranks return "".
func (t *Trainer) Checkpoint() (string, error) {
	if t.cfg.CheckpointDir == "" {
		return "", nil
	}
	if t.comm.Rank() != 0 {
		t.ckpStep = t.state.Step
		return "", nil
	}
	if err := t.WriteBack(); err != nil {
		return "", err
	}
	dir, err := WriteCheckpoint(t.cfg.CheckpointDir, t.model, t.opt, t.state, t.cfg.KeepCheckpoints)
	if err != nil {
		return "", err
	}
	t.lastCkp, t.ckpStep = dir, t.state.Step
	return dir, nil
}

// Run trains m as cfg says: it builds the training graph with
// passes/autodiff, opens onnxruntime sessions, resumes from the newest
// checkpoint when asked, and steps until cfg.Steps (or cfg.Epochs) with
// progress reports, validation and checkpoints. When ctx is cancelled it
// writes a checkpoint and returns the result with Interrupted set and no
// error. On return the trained values are in m's initializers; after an
// error (a *NaNError for a non-finite loss) m holds those of the last
// completed update, and the last checkpoint is kept.
func Run(ctx context.Context, m *graph.Model, cfg Config) (*Result, error) {
	t, err := NewTrainer(m, cfg)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	return t.Run(ctx)
}

// Run is the training loop of the package-level Run.
func (t *Trainer) Run(ctx context.Context) (*Result, error) {
	res := &Result{ValidLoss: math.NaN()}
	for _, p := range t.params {
		res.Params = append(res.Params, p.Name)
	}
	if t.cfg.Resume {
		ok, err := t.Resume()
		// Every rank reads the checkpoint; they must have read the same
		// one (a checkpoint directory on a filesystem they all see).
		where := [][]string{{"checkpoint to resume from", fmt.Sprintf("step %d, parameters %s", t.state.Step, t.paramsID())}}
		if err := meet(t.comm, where, err, "every rank must see the checkpoint directory "+t.cfg.CheckpointDir+" (a shared filesystem)"); err != nil {
			return nil, err
		}
		if ok {
			res.ResumedFrom = t.state.Step
		}
	}
	t.ctx, t.stop = ctx, false
	defer func() { t.ctx = nil }()
	total := t.totalSteps()
	start := time.Now()
	startTokens := t.state.Tokens
	finish := func() {
		res.Steps, res.Epoch, res.Tokens, res.Loss = t.state.Step, t.state.Epoch, t.state.Tokens, t.state.Loss
		res.Checkpoint = t.lastCkp
		res.Elapsed = time.Since(start)
	}
	for t.state.Step < total {
		// The ranks of a data-parallel run stop together, after the step
		// in whose exchange one of them reported the cancellation.
		if t.comm.Size() == 1 && ctx.Err() != nil || t.stop {
			res.Interrupted = true
			if t.state.Step != t.ckpStep {
				if _, err := t.Checkpoint(); err != nil {
					return nil, err
				}
			}
			if err := t.WriteBack(); err != nil {
				return nil, err
			}
			finish()
			return res, nil
		}
		loss, norm, err := t.Step()
		if err != nil {
			finish()
			return res, err
		}
		p := Progress{
			Step: t.state.Step, Steps: total, Epoch: t.state.Epoch,
			Loss: loss, GradNorm: norm, LR: t.state.LR,
			Tokens: t.state.Tokens, Elapsed: time.Since(start), ValidLoss: math.NaN(), CommTime: t.comms.Time, WaitTime: t.comms.Wait,
		}
		if secs := p.Elapsed.Seconds(); secs > 0 {
			p.TokensPerSec = float64(t.state.Tokens-startTokens) / secs
			done := t.state.Step - res.ResumedFrom
			p.ETA = time.Duration(float64(p.Elapsed) / float64(done) * float64(total-t.state.Step))
		}
		last := t.state.Step == total
		if t.eval != nil && (last || t.cfg.ValidEvery > 0 && t.state.Step%t.cfg.ValidEvery == 0) {
			if p.ValidLoss, err = t.Validate(); err != nil {
				return nil, err
			}
			t.state.ValidLoss = p.ValidLoss
			res.ValidLoss = p.ValidLoss
		}
		if t.cfg.CheckpointDir != "" && (last || t.cfg.CheckpointEvery > 0 && t.state.Step%t.cfg.CheckpointEvery == 0) {
			if p.Checkpoint, err = t.Checkpoint(); err != nil {
				return nil, err
			}
		}
		if t.cfg.Progress != nil {
			t.cfg.Progress(p)
		}
	}
	if err := t.WriteBack(); err != nil {
		return nil, err
	}
	if t.eval != nil && math.IsNaN(res.ValidLoss) {
		// A resumed run that had nothing left to do still reports.
		v, err := t.Validate()
		if err != nil {
			return nil, err
		}
		res.ValidLoss = v
	}
	finish()
	return res, nil
}

// Summary describes the trainable parameters in one line, for the
// command line's start-up message.
func (t *Trainer) Summary() string {
	var w, c, nw, nc int
	for _, p := range t.params {
		if p.Group.Name == "clips" {
			c++
			nc += len(p.Data)
		} else {
			w++
			nw += len(p.Data)
		}
	}
	return fmt.Sprintf("training %d weight tensors (%d values) and %d clip ranges (%d values)", w, nw, c, nc)
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"

	"github.com/qatc/qatc/internal/cmdline"
	"github.com/qatc/qatc/safeio"
	"github.com/qatc/qatc/train"
	"github.com/urfave/cli/v2"
)

// trainFlags are shared by train (fp32) and finetune (QAT).
func trainFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "the trained model to write", Required: true},
		&cli.BoolFlag{Name: "in-place", Usage: "allow -o to name the input model"},
		&cli.StringFlag{Name: "src", Usage: "training source sentences, one per line", Required: true},
		&cli.StringFlag{Name: "tgt", Usage: "training target sentences, one per line", Required: true},
		&cli.StringFlag{Name: "valid-src", Usage: "validation source sentences"},
		&cli.StringFlag{Name: "valid-tgt", Usage: "validation target sentences"},
		&cli.IntFlag{Name: "max-len", Usage: "drop training pairs longer than this many tokens (0: keep all)"},
		&cli.StringFlag{Name: "loss", Value: "ce", Usage: "ce (cross-entropy), kd (distillation from the fp32 teacher) or ce+kd"},
		&cli.Float64Flag{Name: "label-smoothing", Value: 0.1, Usage: "label smoothing of the cross-entropy"},
		&cli.Float64Flag{Name: "kd-weight", Value: 1, Usage: "weight of the distillation term in ce+kd"},
		&cli.Float64Flag{Name: "temperature", Value: 1, Usage: "distillation temperature"},
		&cli.Int64Flag{Name: "steps", Usage: "updates to train for (0: --epochs epochs)"},
		&cli.IntFlag{Name: "epochs", Value: 1, Usage: "epochs to train for when --steps is 0"},
		&cli.IntFlag{Name: "batch-tokens", Value: 4096, Usage: "padded tokens per batch"},
		&cli.IntFlag{Name: "accumulate", Value: 1, Usage: "run each batch as this many micro-batches summed into one update (the same update in a micro-batch's memory)"},
		&cli.Float64Flag{Name: "lr", Value: 5e-4, Usage: "learning rate of the weights (the schedule's peak)"},
		&cli.Float64Flag{Name: "clip-lr", Usage: "learning rate of the clip ranges (0: --lr)"},
		&cli.Float64Flag{Name: "weight-decay", Usage: "weight decay"},
		&cli.BoolFlag{Name: "adamw", Usage: "decoupled weight decay (AdamW)"},
		&cli.Float64Flag{Name: "grad-clip", Usage: "clip the gradients' global norm to this (0: no clipping)"},
		&cli.StringFlag{Name: "schedule", Value: "constant", Usage: "constant, inverse-sqrt or cosine (warm-up, then a half cosine to 0 at --steps)"},
		&cli.Int64Flag{Name: "warmup", Value: 4000, Usage: "warm-up steps of inverse-sqrt and cosine"},
		&cli.Int64Flag{Name: "initial-step", Usage: "continue an inverse-sqrt schedule from this step (NeurST's initial_step)"},
		&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "seed of the batch order"},
		&cli.IntFlag{Name: "threads", Usage: "intra-op threads (0: onnxruntime's default)"},
		&cli.Int64Flag{Name: "valid-every", Usage: "validate every N steps (0: only at the end)"},
		&cli.StringFlag{Name: "checkpoint-dir", Usage: "write checkpoints here (default: OUTPUT.ckpt)"},
		&cli.Int64Flag{Name: "checkpoint-every", Usage: "checkpoint every N steps (0: only at the end and on Ctrl-C)"},
		&cli.IntFlag{Name: "keep-checkpoints", Value: 3, Usage: "checkpoints to keep (0: all)"},
		&cli.BoolFlag{Name: "resume", Usage: "continue from the newest checkpoint in --checkpoint-dir"},
		&cli.BoolFlag{Name: "untie", Usage: "train tied copies of a tensor separately"},
		&cli.StringFlag{Name: "save-training-graph", Usage: "also write the training graph (inputs: batch, labels, parameters and their <name>/recompute aliases, bound to the same values; outputs: loss and <name>_grad)"},
		&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
		&cli.StringFlag{Name: "metrics", Usage: "also write every step's loss, gradient norm, learning rate, tokens and timings to this file (JSON lines)"},
		&cli.StringFlag{Name: "ep", Value: "cpu", Usage: "onnxruntime execution provider: cpu or cuda (a CUDA build of onnxruntime, see QATC_ORT_LIB)"},
		&cli.Float64Flag{Name: "adam-eps", Value: train.DefaultOptimizer().Eps, Usage: "Adam's ε"},
	}, append(append(pipelineFlags(), dataFlags()...), commFlags...)...)
}

func trainCommand() *cli.Command {
	return &cli.Command{
		Name:      "train",
		Usage:     "train an fp32 model (no quantizers) on a parallel corpus",
		ArgsUsage: "MODEL",
		Flags:     trainFlags(),
		Action:    func(c *cli.Context) error { return trainAction(c, false) },
	}
}

func finetuneCommand() *cli.Command {
	return &cli.Command{
		Name:      "finetune",
		Usage:     "quantization-aware fine-tuning: learn a QAT model's clip ranges and weights",
		ArgsUsage: "QAT",
		Flags: append(trainFlags(),
			&cli.BoolFlag{Name: "freeze-weights", Usage: "learn the clip ranges only"},
			&cli.StringFlag{Name: "clip-grad", Value: "neurst", Usage: "clip gradient: neurst or lsq"},
			&cli.Float64Flag{Name: "weight-clip-l2", Value: 0.001, Usage: "L2 on weight clips, mean of c² over each tensor's clips (NeurST: 0.001)"},
			&cli.Float64Flag{Name: "act-clip-l2", Value: 0.01, Usage: "L2 on activation clips (NeurST: 0.01)"},
			&cli.Float64Flag{Name: "kd-hidden", Usage: "weight of hidden-state distillation: every quantized activation (hidden states, attention probabilities) against the fp32 teacher's, relative squared error (0: off)"},
		),
		Action: func(c *cli.Context) error { return trainAction(c, true) },
	}
}

func trainAction(c *cli.Context, qat bool) error {
	path, err := oneArg(c, "MODEL")
	if err != nil {
		return err
	}
	out := c.String("output")
	// Every path is checked before training, so that hours of training
	// cannot end in an output that cannot be written.
	ckptDir := c.String("checkpoint-dir")
	if ckptDir == "" {
		// Ctrl-C must always leave a checkpoint to resume from.
		ckptDir = out + ".ckpt"
	}
	cfg := train.FinetuneConfig{
		QAT: qat, Src: c.String("src"), Tgt: c.String("tgt"), ValidSrc: c.String("valid-src"), ValidTgt: c.String("valid-tgt"),
		MaxLen: c.Int("max-len"), Special: specialIDs(c), SaveTrainingGraph: c.String("save-training-graph"),
		Config: train.Config{
			BatchTokens: c.Int("batch-tokens"), Accumulate: c.Int("accumulate"), Seed: c.Uint64("seed"),
			Steps: c.Int64("steps"), Epochs: c.Int("epochs"), Threads: c.Int("threads"),
			LR: c.Float64("lr"), ClipLR: c.Float64("clip-lr"), WeightDecay: c.Float64("weight-decay"),
			Optimizer: train.DefaultOptimizer(),
			Loss: train.Loss{
				Kind: c.String("loss"), LabelSmoothing: c.Float64("label-smoothing"),
				KDWeight: c.Float64("kd-weight"), Temperature: c.Float64("temperature"),
			},
			Untie: c.Bool("untie"), Roles: roleFlagValues(c),
			ValidEvery: c.Int64("valid-every"), CheckpointEvery: c.Int64("checkpoint-every"),
			CheckpointDir: ckptDir, KeepCheckpoints: c.Int("keep-checkpoints"),
			Resume: c.Bool("resume"), Provider: c.String("ep"),
		},
	}
	if c.Bool("passes") {
		return train.FinetunePipeline(cfg).List(c.App.Writer)
	}
	plan := safeio.Plan{
		InPlace: c.Bool("in-place"), InPlaceFlag: "--in-place",
		Inputs: append([]safeio.Group{modelInput("MODEL", path)}, fileInputs(c, "src", "tgt", "valid-src", "valid-tgt", "spm")...),
		Dirs:   []safeio.Dir{{Flag: "--checkpoint-dir", Path: ckptDir}},
	}
	if f := c.String("save-training-graph"); f != "" {
		plan.Outputs = append(plan.Outputs, modelOutput("--save-training-graph", f))
	}
	d := &cfg.Dump
	if err := dumpFlags(c, &plan, &d.DumpAfter, &d.DumpDir, &d.Dumped, train.FinetunePipeline(cfg).CheckDump); err != nil {
		return err
	}
	if err := checkModelOutput(plan, path, out); err != nil {
		return err
	}
	cfg.Optimizer.AdamW = c.Bool("adamw")
	cfg.Optimizer.Eps = c.Float64("adam-eps")
	cfg.Optimizer.ClipNorm = c.Float64("grad-clip")
	if qat {
		cfg.FreezeWeights = c.Bool("freeze-weights")
		cfg.ClipGrad = c.String("clip-grad")
		cfg.Loss.WeightClipL2 = c.Float64("weight-clip-l2")
		cfg.Loss.ActClipL2 = c.Float64("act-clip-l2")
		cfg.Loss.Hidden = c.Float64("kd-hidden")
	}
	if err := cfg.Check(); err != nil {
		return err
	}
	if cfg.Schedule, err = train.ParseSchedule(c.String("schedule"), c.Int64("warmup"), c.Int64("initial-step"), c.Int64("steps")); err != nil {
		return usagef("--schedule: %v", err)
	}
	// In a data-parallel run (qatc-mpi) rank 0 alone writes files.
	comm := commOf(c)
	root := comm == nil || comm.Rank() == 0
	if comm != nil {
		cfg.Comm = comm
		if c.IsSet("comm-timeout") {
			d := c.Duration("comm-timeout")
			if d <= 0 {
				return usagef("--comm-timeout %v: it must be positive", d)
			}
			comm.SetTimeout(d)
		}
	}
	if cfg.Tokenizer, err = tokenizer(c); err != nil {
		return err
	}
	var display *train.Display
	cfg.Progress = func(p train.Progress) {
		if display == nil {
			display = train.NewDisplay(c.App.ErrWriter, p.Steps, cmdline.IsTerminal(c.App.ErrWriter), 0)
		}
		display.Update(p)
	}
	if path := c.String("metrics"); path != "" && root {
		f, err := os.Create(path)
		if err != nil {
			return fmt.Errorf("--metrics: %w", err)
		}
		defer f.Close()
		enc, show := json.NewEncoder(f), cfg.Progress
		cfg.Progress = func(p train.Progress) {
			show(p)
			enc.Encode(p.Metrics())
		}
	}
	cfg.Started = func(summary string, before float64) {
		fmt.Fprintln(c.App.ErrWriter, summary)
		if !math.IsNaN(before) {
			fmt.Fprintf(c.App.ErrWriter, "validation loss before training: %.4f\n", before)
		}
	}

	// Ctrl-C or SIGTERM during training stops it gracefully with a
	// checkpoint; afterwards a signal ends the process as usual, leaving
	// no partial output (safeio removes the temporaries).
	ctx, stop := safeio.NotifyContext(context.Background())
	defer stop()
	ctx, stopMore := notifyStop(ctx)
	defer stopMore()
	res, err := train.FinetuneFile(ctx, path, out, cfg)
	stop()
	if display != nil {
		display.Finish()
	}
	if err != nil {
		return err
	}
	if res.Interrupted {
		msg := "interrupted at step %d"
		if res.Checkpoint != "" {
			msg += "; checkpoint " + res.Checkpoint + " written: run the same command with --resume to continue"
		}
		fmt.Fprintf(c.App.ErrWriter, msg+"\n", res.Steps)
		return nil
	}
	if !res.Wrote {
		return nil
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, res.Report(out))
	}
	return res.Write(c.App.Writer, c.App.ErrWriter, out, c.String("valid-src") != "")
}

package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"

	"github.com/qatc/qatc/graph"
)

// localGroup is an in-process Comm for tests: n goroutines play the ranks
// and every collective combines their inputs in rank order.
type localGroup struct {
	mu      sync.Mutex
	cond    *sync.Cond
	n       int
	gen     int
	arrived int
	ins     []any
	out     any
}

type localComm struct {
	g    *localGroup
	rank int
}

func localComms(n int) []Comm {
	g := &localGroup{n: n, ins: make([]any, n)}
	g.cond = sync.NewCond(&g.mu)
	cs := make([]Comm, n)
	for r := range cs {
		cs[r] = localComm{g, r}
	}
	return cs
}

// round deposits in and returns combine of every rank's input, once all
// have arrived.
func (g *localGroup) round(rank int, in any, combine func([]any) any) any {
	g.mu.Lock()
	defer g.mu.Unlock()
	gen := g.gen
	g.ins[rank] = in
	g.arrived++
	if g.arrived == g.n {
		g.out = combine(g.ins)
		g.ins = make([]any, g.n)
		g.arrived = 0
		g.gen++
		g.cond.Broadcast()
	} else {
		for g.gen == gen {
			g.cond.Wait()
		}
	}
	return g.out
}

func (c localComm) Rank() int { return c.rank }
func (c localComm) Size() int { return c.g.n }

func (c localComm) AllReduce(buf []float32) error {
	sum := c.g.round(c.rank, buf, func(ins []any) any {
		s := make([]float32, len(buf))
		for _, in := range ins {
			b := in.([]float32)
			if len(b) != len(s) {
				return fmt.Errorf("buffers of %d and %d values", len(s), len(b))
			}
			for i, v := range b {
				s[i] += v
			}
		}
		return s
	})
	if err, ok := sum.(error); ok {
		return err
	}
	copy(buf, sum.([]float32))
	return nil
}

func (c localComm) AllGather(msg []byte) ([][]byte, error) {
	all := c.g.round(c.rank, append([]byte(nil), msg...), func(ins []any) any {
		out := make([][]byte, len(ins))
		for r, in := range ins {
			out[r] = in.([]byte)
		}
		return out
	})
	return all.([][]byte), nil
}

// rankRun is one rank's outcome.
type rankRun struct {
	model  *graph.Model
	res    *Result
	err    error
	losses []float64
}

// runRanks trains a copy of m on every rank of comms concurrently; edit,
// when set, changes a rank's Config (or fails it before its Trainer, as a
// command line would).
func runRanks(ctxs []context.Context, m *graph.Model, cfg Config, comms []Comm, edit func(r int, c *Config) error) []rankRun {
	out := make([]rankRun, len(comms))
	var wg sync.WaitGroup
	for r := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := &out[r]
			o.model = cloneModel(m)
			c := cfg
			c.Comm = comms[r]
			c.Progress = func(p Progress) { o.losses = append(o.losses, p.Loss) }
			if edit != nil {
				if err := edit(r, &c); err != nil {
					o.err = Join(comms[r], err)
					return
				}
			}
			ctx := context.Background()
			if ctxs != nil {
				ctx = ctxs[r]
			}
			o.res, o.err = Run(ctx, o.model, c)
		}()
	}
	wg.Wait()
	return out
}

// maxRelDiff returns the largest relative difference ‖a−b‖/‖b‖ over the
// float initializers of two models, and the tensor where it is.
func maxRelDiff(t *testing.T, a, b *graph.Model) (float64, string) {
	t.Helper()
	pa, pb := paramsOf(t, a), paramsOf(t, b)
	worst, where := 0.0, ""
	for name, vb := range pb {
		va := pa[name]
		var d, n float64
		for i := range vb {
			d += (float64(va[i]) - float64(vb[i])) * (float64(va[i]) - float64(vb[i]))
			n += float64(vb[i]) * float64(vb[i])
		}
		if r := math.Sqrt(d / math.Max(n, 1e-30)); r > worst || math.IsNaN(r) {
			worst, where = r, name
		}
	}
	return worst, where
}

// TestDataParallelGradients checks that 2 ranks splitting a batch sum to
// one process's gradient and loss on the tiny QAT model with ce+kd
// (teacher, clip L2, label smoothing): the shards' token weights and the
// data-independent loss terms come out right. Rank 0 first runs the
// whole batch in its own session, as one process would. Each tensor's
// gradient agrees to float summation order, relative to the larger of
// its norm and a thousandth of the whole gradient's (the attention key
// biases' gradients are zero in exact arithmetic, rounding noise alone).
func TestDataParallelGradients(t *testing.T) {
	_, qat := qatTiny(t)
	ds := reverseTask(t, 120, 8, 11)
	cfg := baseConfig(ds)
	cfg.Loss = Loss{Kind: "ce+kd", LabelSmoothing: 0.1, KDWeight: 1, WeightClipL2: 0.001, ActClipL2: 0.01}
	comms := localComms(2)
	trs := make([]*Trainer, 2)
	losses := make([]float64, 2)
	errs := make([]error, 2)
	var want []float32
	var wantLoss float64
	var wg sync.WaitGroup
	for r := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := cfg
			c.Comm = comms[r]
			if trs[r], errs[r] = NewTrainer(cloneModel(qat), c); errs[r] != nil {
				return
			}
			// The batch whose shards differ most in tokens, so that
			// weighting them equally would be wrong.
			plan := trs[r].batcher.Epoch(0)
			worst := 0.0
			for i, idx := range plan {
				var tok [2]int
				for k := range tok {
					tok[k] = ds.MakeBatch(shard(idx, k, 2)).Tokens
				}
				if d := math.Abs(float64(tok[0]-tok[1])) / float64(tok[0]+tok[1]); d > worst {
					worst, trs[r].state.Batch = d, i
				}
			}
			if worst < 0.05 {
				errs[r] = fmt.Errorf("no batch splits unevenly (%.3f at most)", worst)
				return
			}
			if r == 0 {
				b := ds.MakeBatch(plan[trs[0].state.Batch])
				if wantLoss, errs[r] = trs[0].gradients(1, b, b.Tokens, func(what string, _ []int) error { return errors.New(what) }); errs[r] != nil {
					return
				}
				want = append([]float32(nil), trs[0].gradBuf...)
			}
			losses[r], _, errs[r] = trs[r].Step()
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
		defer trs[r].Close()
	}
	total := norm(want)
	for r, tr := range trs {
		if d := math.Abs(losses[r] - wantLoss); d > 1e-6*wantLoss {
			t.Errorf("rank %d: loss %.8f, one process %.8f", r, losses[r], wantLoss)
		}
		off := 0
		for _, p := range tr.params {
			w := want[off : off+len(p.Grad)]
			off += len(p.Grad)
			diff := make([]float32, len(w))
			for i := range w {
				diff[i] = p.Grad[i] - w[i]
			}
			if d, scale := norm(diff), math.Max(norm(w), 1e-3*total); d > 1e-5*scale {
				t.Errorf("rank %d: gradient of %s differs by %.3g of %.3g", r, p.Name, d, scale)
			}
		}
	}
}

func norm(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += float64(v) * float64(v)
	}
	return math.Sqrt(s)
}

// TestDataParallelMatchesOneProcess trains the tiny fp32 model for 12
// steps on 2 and 3 ranks and in one process. One process that runs each
// batch as the same pieces (Config.Accumulate = ranks) sums the same
// gradients in the same order, so the ranks must end with its weights
// exactly, along its loss curve; the ranks hold identical weights. One
// process that runs each batch whole sums in another order: the loss
// curve agrees to float rounding, while the weights differ most in the
// attention key biases, whose gradient is zero in exact arithmetic and
// rounding noise that Adam turns into steps of up to the learning rate.
func TestDataParallelMatchesOneProcess(t *testing.T) {
	m := tinyModel(t)
	ds := reverseTask(t, 120, 8, 11)
	cfg := baseConfig(ds)
	cfg.Steps = 12
	one := runRanks(nil, m, cfg, []Comm{Single{}}, nil)[0]
	if one.err != nil {
		t.Fatal(one.err)
	}
	for _, n := range []int{2, 3} {
		acc := cfg
		acc.Accumulate = n
		pieces := runRanks(nil, m, acc, []Comm{Single{}}, nil)[0]
		if pieces.err != nil {
			t.Fatal(pieces.err)
		}
		runs := runRanks(nil, m, cfg, localComms(n), nil)
		for r, run := range runs {
			if run.err != nil {
				t.Fatalf("%d ranks, rank %d: %v", n, r, run.err)
			}
			if d, where := maxRelDiff(t, run.model, pieces.model); d != 0 {
				t.Errorf("%d ranks, rank %d: weights differ from one process's in %d pieces by %.3g (relative) at %s", n, r, n, d, where)
			}
			for s := range pieces.losses {
				if run.losses[s] != pieces.losses[s] {
					t.Errorf("%d ranks, rank %d, step %d: loss %.9f, one process in %d pieces %.9f", n, r, s+1, run.losses[s], n, pieces.losses[s])
				}
				if d := math.Abs(run.losses[s] - one.losses[s]); d > 1e-6*math.Abs(one.losses[s]) {
					t.Errorf("%d ranks, rank %d, step %d: loss %.7f, one process %.7f", n, r, s+1, run.losses[s], one.losses[s])
				}
			}
		}
		d, where := maxRelDiff(t, runs[0].model, one.model)
		t.Logf("%d ranks and one process running whole batches: weights within %.2g (largest at %s)", n, d, where)
		if runs[0].res.Tokens != one.res.Tokens {
			t.Errorf("%d ranks counted %d tokens, one process %d", n, runs[0].res.Tokens, one.res.Tokens)
		}
	}
	// The weights moved: the comparisons above are not between copies of
	// the untrained model.
	if d, _ := maxRelDiff(t, one.model, m); d < 1e-3 {
		t.Errorf("training changed the weights by only %.3g", d)
	}
}

// TestDataParallelErrors checks that failures on one rank, differences
// between ranks and impossible splits end every rank with the same error.
func TestDataParallelErrors(t *testing.T) {
	m := tinyModel(t)
	ds := reverseTask(t, 60, 8, 12)
	other := reverseTask(t, 60, 8, 13)
	cfg := baseConfig(ds)
	cfg.Steps = 4
	bt, err := NewBatcher(ds, cfg.BatchTokens, cfg.Seed)
	if err != nil {
		t.Fatal(err)
	}
	nb := len(bt.Epoch(0))
	for _, tc := range []struct {
		name  string
		ranks int
		edit  func(r int, c *Config) error
		want  string
	}{
		{"settings differ", 2, func(r int, c *Config) error {
			if r == 1 {
				c.LR = 1e-2
			}
			return nil
		}, "rank 1 has another setting LR than rank 0 (0.01; rank 0: 0.003): start every rank with the same flags and data"},
		{"data differ", 3, func(r int, c *Config) error {
			if r == 2 {
				c.Train = other
			}
			return nil
		}, "rank 2 has another training data than rank 0"},
		{"a rank fails to start", 2, func(r int, c *Config) error {
			if r == 1 {
				return errors.New("train.src: no such file")
			}
			return nil
		}, "rank 1: train.src: no such file"},
		{"too many ranks", nb + 1, nil, fmt.Sprintf("%d ranks but the training data makes only %d batches of at most 128 tokens; use at most %d ranks, or smaller batches", nb+1, nb, nb)},
	} {
		runs := runRanks(nil, m, cfg, localComms(tc.ranks), tc.edit)
		for r, run := range runs {
			var ce *CollectiveError
			if !errors.As(run.err, &ce) || !strings.Contains(run.err.Error(), tc.want) {
				t.Errorf("%s: rank %d: error %v; want a collective error containing %q", tc.name, r, run.err, tc.want)
			}
		}
	}
}

// TestDataParallelStepFailures makes one rank's loss NaN, or its session
// fail, at a step: every rank stops there with the same error, naming the
// step and that rank's data lines.
func TestDataParallelStepFailures(t *testing.T) {
	m := tinyModel(t)
	ds := reverseTask(t, 60, 8, 14)
	cfg := baseConfig(ds)
	for _, tc := range []struct {
		name   string
		break_ func(tr *Trainer)
		want   func(tr *Trainer, lines []int) string
	}{
		{"NaN", func(tr *Trainer) { tr.params[0].Data[0] = float32(math.NaN()) }, func(tr *Trainer, lines []int) string {
			return fmt.Sprintf("step 1: the loss is NaN on rank 1 on batch 1 of epoch 1 (data lines %s)", lineList(lines))
		}},
		{"session fails", func(tr *Trainer) { tr.sess.Close() }, func(*Trainer, []int) string { return "rank 1: step 1: " }},
	} {
		comms := localComms(2)
		trs := make([]*Trainer, 2)
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for r := range trs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := cfg
				c.Comm = comms[r]
				tr, err := NewTrainer(cloneModel(m), c)
				if err != nil {
					errs[r] = err
					return
				}
				trs[r] = tr
				if r == 1 {
					tc.break_(tr)
				}
				_, _, errs[r] = tr.Step()
			}()
		}
		wg.Wait()
		if trs[0] == nil {
			t.Fatal(errs[0])
		}
		b := ds.MakeBatch(trs[0].batcher.Epoch(0)[0])
		lines := ds.MakeBatch(shard(b.Index, 1, 2)).Lines
		want := tc.want(trs[0], lines)
		for r, err := range errs {
			var ce *CollectiveError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: rank %d: %v; want a collective error containing %q", tc.name, r, err, want)
			}
			var ne *NaNError
			if tc.name == "NaN" && (!errors.As(err, &ne) || ne.Step != 1) {
				t.Errorf("%s: rank %d: %v is not a NaNError of step 1", tc.name, r, err)
			}
			if trs[r] != nil {
				trs[r].Close()
			}
		}
	}
}

// TestDataParallelInterrupt cancels one rank's context (as a signal from
// mpirun does, at slightly different times on each rank): both ranks stop
// after the same step, rank 0 alone checkpoints, and a one-process resume
// ends where an uninterrupted two-rank run ends.
func TestDataParallelInterrupt(t *testing.T) {
	m := tinyModel(t)
	ds := reverseTask(t, 120, 8, 15)
	cfg := baseConfig(ds)
	cfg.Steps = 14
	straight := runRanks(nil, m, cfg, localComms(2), nil)
	if straight[0].err != nil {
		t.Fatal(straight[0].err)
	}

	cfg.CheckpointDir = t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	ctxs := []context.Context{context.Background(), ctx}
	edit := func(r int, c *Config) error {
		if r == 1 {
			c.Progress = func(p Progress) {
				if p.Step == 5 {
					cancel()
				}
			}
		}
		return nil
	}
	runs := runRanks(ctxs, m, cfg, localComms(2), edit)
	for r, run := range runs {
		if run.err != nil || !run.res.Interrupted || run.res.Steps != 6 {
			t.Fatalf("rank %d: %+v, %v; want interrupted after step 6 (cancelled after step 5, seen in step 6's exchange)", r, run.res, run.err)
		}
	}
	if runs[0].res.Checkpoint == "" || runs[1].res.Checkpoint != "" {
		t.Errorf("checkpoints %q (rank 0) and %q (rank 1); want rank 0 alone to write one", runs[0].res.Checkpoint, runs[1].res.Checkpoint)
	}
	// One process running each batch as the 2 ranks' pieces continues
	// exactly where they left off.
	cfg.Resume = true
	cfg.Accumulate = 2
	resumed := runRanks(nil, m, cfg, []Comm{Single{}}, nil)[0]
	if resumed.err != nil || resumed.res.ResumedFrom != 6 || resumed.res.Steps != 14 {
		t.Fatalf("resume: %+v, %v", resumed.res, resumed.err)
	}
	if d, where := maxRelDiff(t, resumed.model, straight[0].model); d != 0 {
		t.Errorf("interrupted at 6 on 2 ranks and resumed on 1: weights differ from 14 steps on 2 ranks by %.3g at %s", d, where)
	}
}

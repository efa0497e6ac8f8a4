package train

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/fnv"
	"math"
	"reflect"
	"strings"
)

// Comm connects the processes (ranks) of a data-parallel run. Every rank
// runs the same Trainer on its share of each global batch and calls
// the Comm's collectives in the same order; package mpi implements it
// over MPI, Single is the one-process case.
//
// A collective either completes on every rank or returns an error; an
// implementation bounds how long it waits, so that a rank that died or
// hangs ends the job instead of stalling it.
type Comm interface {
	// Rank is this process's index in [0, Size).
	Rank() int
	// Size is the number of ranks.
	Size() int
	// AllReduce replaces buf, on every rank, with the elementwise sum of
	// every rank's buf (all of the same length).
	AllReduce(buf []float32) error
	// AllGather returns every rank's msg, indexed by rank; messages may
	// differ in length.
	AllGather(msg []byte) ([][]byte, error)
}

// Single is the Comm of a run in one process.
type Single struct{}

// Rank is 0.
func (Single) Rank() int { return 0 }

// Size is 1.
func (Single) Size() int { return 1 }

// AllReduce leaves buf as it is: the sum over one rank.
func (Single) AllReduce([]float32) error { return nil }

// AllGather returns msg alone.
func (Single) AllGather(msg []byte) ([][]byte, error) { return [][]byte{msg}, nil }

// CollectiveError is an error that every rank of a data-parallel run
// returns alike (a NaN, a fingerprint mismatch, one rank's failure that
// the others learnt of), so that rank 0 alone reports it and every rank
// exits normally. An error that is not a CollectiveError is one rank's
// own, and its caller must end the whole job (the other ranks would wait
// for it in the next collective).
type CollectiveError struct{ Err error }

func (e *CollectiveError) Error() string { return e.Err.Error() }

// Unwrap returns the error every rank returns.
func (e *CollectiveError) Unwrap() error { return e.Err }

// collective marks err (non-nil) as returned by every rank.
func collective(err error) error {
	var ce *CollectiveError
	if errors.As(err, &ce) {
		return err
	}
	return &CollectiveError{err}
}

// greeting is what a rank sends the others before training: its error
// if it failed to start, else the fingerprint of what it would train.
type greeting struct {
	Err   string     `json:"err,omitempty"`
	Items [][]string `json:"items,omitempty"` // [name, value] pairs
}

// Join is a rank's start-up exchange for a rank that failed before it
// could build its Trainer: every rank of a data-parallel run calls it, or
// NewTrainer (which calls it itself), exactly once. It returns nil when
// every rank started, else a *CollectiveError naming the rank that
// failed and why; rank 0 reports it and all ranks exit.
func Join(c Comm, err error) error {
	return meet(c, nil, err, "")
}

// startHint ends the message of ranks that differ at start-up.
const startHint = "start every rank with the same flags and data"

// meet exchanges every rank's greeting: errors first, then the items of
// each rank against rank 0's; hint ends the message of a difference.
func meet(c Comm, items [][]string, failed error, hint string) error {
	if c == nil || c.Size() <= 1 {
		return failed
	}
	g := greeting{Items: items}
	if failed != nil {
		g.Err = failed.Error()
	}
	msg, err := json.Marshal(g)
	if err != nil {
		return err
	}
	all, err := c.AllGather(msg)
	if err != nil {
		return fmt.Errorf("start-up exchange: %v", err)
	}
	gs := make([]greeting, len(all))
	for r, b := range all {
		if err := json.Unmarshal(b, &gs[r]); err != nil {
			return collective(fmt.Errorf("start-up exchange: rank %d sent %d bytes that are not a qatc greeting (%v); start every rank with the same qatc-mpi", r, len(b), err))
		}
	}
	if err := firstFailure(gs, failed); err != nil {
		return collective(err)
	}
	for r := 1; r < len(gs); r++ {
		if err := compareItems(gs[0].Items, gs[r].Items, r, hint); err != nil {
			return collective(err)
		}
	}
	return nil
}

// firstFailure returns the failure to report: own, unchanged, when every
// rank failed alike (so that its kind survives), else the lowest failing
// rank's, naming it.
func firstFailure(gs []greeting, own error) error {
	first, same := -1, true
	for r, g := range gs {
		if g.Err == "" {
			same = false
			continue
		}
		if first < 0 {
			first = r
		} else if g.Err != gs[first].Err {
			same = false
		}
	}
	switch {
	case first < 0:
		return nil
	case same && own != nil:
		return own
	}
	return fmt.Errorf("rank %d: %s", first, gs[first].Err)
}

// compareItems names the first item in which rank r differs from rank 0.
func compareItems(want, got [][]string, r int, hint string) error {
	for i := range max(len(want), len(got)) {
		if i >= len(want) || i >= len(got) || want[i][0] != got[i][0] {
			return fmt.Errorf("rank %d runs another qatc-mpi than rank 0 (its fingerprint lists other items); install the same build on every node", r)
		}
		if want[i][1] != got[i][1] {
			return fmt.Errorf("rank %d has another %s than rank 0 (%s; rank 0: %s): %s", r, want[i][0], elide(got[i][1]), elide(want[i][1]), hint)
		}
	}
	return nil
}

// elide shortens a value for a one-line message.
func elide(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

// startItems is the fingerprint ranks compare before training: every
// setting of the run but those that may differ between machines
// (perRankSetting), the data, and the model's parameters.
func (t *Trainer) startItems() [][]string {
	var items [][]string
	v := reflect.ValueOf(t.cfg)
	ty := v.Type()
	for i := range ty.NumField() {
		f := ty.Field(i)
		if !f.IsExported() || perRankSetting[f.Name] {
			continue
		}
		fv := v.Field(i)
		if k := fv.Kind(); k == reflect.Func || (k == reflect.Interface && fv.IsValid() && !fv.IsNil() && fv.Elem().Kind() == reflect.Func) {
			continue
		}
		items = append(items, []string{"setting " + f.Name, fmt.Sprintf("%+v", fv.Interface())})
	}
	items = append(items, []string{"training data", t.dataID})
	valid := "none"
	if t.cfg.Valid != nil {
		valid = fingerprint(t.cfg.Valid)
	}
	items = append(items, []string{"validation data", valid})
	items = append(items, []string{"model", t.paramsID()})
	return items
}

// perRankSetting lists the Config fields that need not agree between
// ranks: the data sets (compared by content), paths, the machine's own
// settings (threads, provider, micro-batches: every rank receives the
// same summed gradients whatever its own) and the callbacks.
var perRankSetting = map[string]bool{
	"Train": true, "Valid": true, "Threads": true, "CheckpointDir": true,
	"Progress": true, "Comm": true, "Provider": true, "Accumulate": true,
}

// paramsID identifies the trainable parameters' names, shapes and values.
func (t *Trainer) paramsID() string {
	h := newHash()
	n := 0
	for _, p := range t.params {
		h.str(p.Name)
		for _, d := range p.Dims {
			h.int(d)
		}
		for _, x := range p.Data {
			h.int(int64(math.Float32bits(x)))
		}
		n += len(p.Data)
	}
	return fmt.Sprintf("%d tensors, %d values, fnv64a %016x", len(t.params), n, h.sum())
}

// stepReport is what a rank tells the others after its backward pass:
// its weighted loss, or what was not finite and on which data lines, or
// its error; and whether it was asked to stop.
type stepReport struct {
	Loss  float64 `json:"loss"`
	NaN   string  `json:"nan,omitempty"`
	Lines []int   `json:"lines,omitempty"`
	Err   string  `json:"err,omitempty"`
	Stop  bool    `json:"stop,omitempty"`
}

// exchangeReports shares the step's reports: it returns every rank's, or
// the error every rank then returns when one failed.
func (t *Trainer) exchangeReports(step int64, own stepReport) ([]stepReport, error) {
	msg, err := json.Marshal(own)
	if err != nil {
		return nil, err
	}
	all, err := t.comm.AllGather(msg)
	if err != nil {
		return nil, fmt.Errorf("step %d: exchanging the step's reports: %v", step, err)
	}
	reps := make([]stepReport, len(all))
	var failed []string
	for r, b := range all {
		if err := json.Unmarshal(b, &reps[r]); err != nil {
			return nil, collective(fmt.Errorf("step %d: rank %d sent a report that is not qatc's (%v)", step, r, err))
		}
		if reps[r].Err != "" {
			failed = append(failed, fmt.Sprintf("rank %d: %s", r, reps[r].Err))
		}
	}
	if len(failed) > 0 {
		return nil, collective(errors.New(strings.Join(failed, "; ")))
	}
	return reps, nil
}

// hasher is FNV-1a over little-endian integers and strings.
type hasher struct {
	h   hash.Hash64
	buf [8]byte
}

func newHash() *hasher { return &hasher{h: fnv.New64a()} }

func (h *hasher) int(v int64) {
	binary.LittleEndian.PutUint64(h.buf[:], uint64(v))
	h.h.Write(h.buf[:])
}

func (h *hasher) str(s string) {
	h.int(int64(len(s)))
	h.h.Write([]byte(s))
}

func (h *hasher) sum() uint64 { return h.h.Sum64() }

// plural writes n with the noun's singular or plural form.
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

package train

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/safeio"
)

// A checkpoint is a directory DIR/step-NNNNNNNN holding the model with the
// current weights, the optimizer state and a JSON state file. It is written
// in a temporary directory next to it and renamed into place, so a
// checkpoint directory is always complete.
const (
	checkpointPrefix = "step-"
	modelFile        = "model.onnx"
	optimizerFile    = "optimizer.bin"
	stateFile        = "state.json"
	stateFormat      = 1
)

// State is where training stands, enough to continue it exactly.
type State struct {
	Format int `json:"format"`
	// Step is the number of updates done.
	Step int64 `json:"step"`
	// Epoch (0-based) and Batch (the next position in the epoch's plan)
	// locate the next batch; with Seed they are the batch generator's
	// whole state, since an epoch's plan is a function of (Seed, Epoch).
	Epoch int    `json:"epoch"`
	Batch int    `json:"batch"`
	Seed  uint64 `json:"seed"`
	// Data identifies the training set, so that a resume on other data
	// is refused.
	Data string `json:"data"`
	// Tokens counts the target tokens trained on.
	Tokens int64 `json:"tokens"`
	// Loss is the last batch's loss; ValidLoss the last validation loss
	// (0 when none was computed); LR the learning rate of the last step
	// (the clips' when the weights are frozen).
	Loss      float64 `json:"loss"`
	ValidLoss float64 `json:"valid_loss,omitempty"`
	LR        float64 `json:"lr"`
}

// Checkpoint is a checkpoint directory read back.
type Checkpoint struct {
	Dir   string
	State State
}

// ModelPath returns the path of the checkpoint's model.
func (c *Checkpoint) ModelPath() string { return filepath.Join(c.Dir, modelFile) }

// OptimizerPath returns the path of the checkpoint's optimizer state.
func (c *Checkpoint) OptimizerPath() string { return filepath.Join(c.Dir, optimizerFile) }

// WriteCheckpoint writes model, the optimizer state and st into
// dir/step-NNNNNNNN atomically and returns that directory. An existing
// checkpoint of the same step is replaced. keep > 0 removes all but the
// newest keep checkpoints afterwards.
func WriteCheckpoint(dir string, model *graph.Model, opt *Optimizer, st State, keep int) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("checkpoint: %w", err)
	}
	name := fmt.Sprintf("%s%08d", checkpointPrefix, st.Step)
	final := filepath.Join(dir, name)
	var b safeio.Batch
	defer b.Abort()
	tmp, err := b.CreateDir(final)
	if err != nil {
		return "", fmt.Errorf("checkpoint: %w", err)
	}
	fail := func(err error) (string, error) {
		return "", fmt.Errorf("checkpoint %s: %v", final, err)
	}
	if err := model.Save(filepath.Join(tmp, modelFile)); err != nil {
		return fail(err)
	}
	if err := opt.SaveState(filepath.Join(tmp, optimizerFile)); err != nil {
		return fail(err)
	}
	st.Format = stateFormat
	js, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fail(err)
	}
	if err := safeio.WriteFile(filepath.Join(tmp, stateFile), append(js, '\n')); err != nil {
		return fail(err)
	}
	// An existing checkpoint of the same step is replaced whole.
	if err := b.Commit(); err != nil {
		return fail(err)
	}
	if keep > 0 {
		all, _ := listCheckpoints(dir)
		for i := 0; i < len(all)-keep; i++ {
			os.RemoveAll(filepath.Join(dir, all[i].name))
		}
	}
	return final, nil
}

type ckptEntry struct {
	name string
	step int64
}

// listCheckpoints returns dir's complete checkpoint directories, oldest
// first.
func listCheckpoints(dir string) ([]ckptEntry, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []ckptEntry
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), checkpointPrefix) {
			continue
		}
		step, err := strconv.ParseInt(strings.TrimPrefix(e.Name(), checkpointPrefix), 10, 64)
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, e.Name(), stateFile)); err != nil {
			continue
		}
		out = append(out, ckptEntry{e.Name(), step})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].step < out[j].step })
	return out, nil
}

// ReadCheckpoint reads the state of the checkpoint in directory path.
func ReadCheckpoint(path string) (*Checkpoint, error) {
	data, err := os.ReadFile(filepath.Join(path, stateFile))
	if err != nil {
		return nil, fmt.Errorf("read checkpoint: %w", err)
	}
	c := &Checkpoint{Dir: path}
	if err := json.Unmarshal(data, &c.State); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %s is not valid JSON: %v", path, stateFile, err)
	}
	if c.State.Format != stateFormat {
		return nil, fmt.Errorf("checkpoint %s: format %d; this qatc reads format %d", path, c.State.Format, stateFormat)
	}
	return c, nil
}

// LatestCheckpoint returns the newest complete checkpoint in dir, or nil
// (and no error) when dir holds none.
func LatestCheckpoint(dir string) (*Checkpoint, error) {
	all, err := listCheckpoints(dir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint directory: %w", err)
	}
	if len(all) == 0 {
		return nil, nil
	}
	return ReadCheckpoint(filepath.Join(dir, all[len(all)-1].name))
}

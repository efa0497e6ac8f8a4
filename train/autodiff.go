package train

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/passes/autodiff"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/seq2seq"
)

// trainingGraph is the training graph with what the loop needs to know
// about it.
type trainingGraph struct {
	Model *graph.Model
	// Params are the trainable inputs (each an initializer of the
	// model), Grads their gradient outputs, Clips the clip ranges among
	// them.
	Params []string
	Grads  map[string]string
	Clips  map[string]bool
	// GradIns are the accumulator inputs of an accumulating graph
	// (Config.Accumulate > 1), GradScale its gradient weight input; both
	// are empty otherwise.
	GradIns   map[string]string
	GradScale string
	// Labels is the labels input, Loss the scalar loss output.
	Labels, Loss string
	// Tied lists, per parameter, the initializers that are copies of it.
	Tied map[string][]tiedCopy
	// Aliases are inputs that take a parameter's buffer once more (the
	// backward pass recomputes from them what depends on parameters
	// alone, autodiff.Options.Recompute).
	Aliases []autodiff.Alias
	// Hidden are the distilled forward values, TeacherHidden the inputs
	// that take the teacher's values of them.
	Hidden        []string
	TeacherHidden map[string]string
}

// tiedCopy is an initializer holding a (possibly transposed) copy of a
// parameter.
type tiedCopy struct {
	Name      string
	Transpose bool
}

// store writes p's values into the copy's initializer.
func (c tiedCopy) store(m *graph.Model, p *Param) error {
	init := m.Initializer(c.Name)
	if init == nil {
		return fmt.Errorf("tied copy %q of %q is not an initializer", c.Name, p.Name)
	}
	if !c.Transpose {
		return graph.SetFloats(init, p.Data)
	}
	if len(p.Dims) != 2 {
		return fmt.Errorf("tied copy %q: %q is not a matrix", c.Name, p.Name)
	}
	r, k := int(p.Dims[0]), int(p.Dims[1])
	out := make([]float32, len(p.Data))
	for i := range r {
		for j := range k {
			out[j*r+i] = p.Data[i*k+j]
		}
	}
	return graph.SetFloats(init, out)
}

// TrainingGraph returns the graph Run trains m with, as the command line's
// --save-training-graph writes it: cfg.Loss, cfg.FreezeWeights, cfg.Roles
// and the pad id of cfg.Train (0 without data) choose it.
func TrainingGraph(m *graph.Model, cfg Config) (*graph.Model, error) {
	if cfg.Loss.Kind == "" {
		cfg.Loss.Kind = "ce"
	}
	roles, err := seq2seq.Describe(m, cfg.Roles)
	if err != nil {
		return nil, err
	}
	tg, err := buildTrainingGraph(m, roles, cfg)
	if err != nil {
		return nil, err
	}
	return tg.Model, nil
}

// buildTrainingGraph asks passes/autodiff for the training graph of m
// with the loss cfg names.
func buildTrainingGraph(m *graph.Model, roles seq2seq.Model, cfg Config) (*trainingGraph, error) {
	pad := seq2seq.DefaultSpecial().Pad
	if cfg.Train != nil {
		pad = cfg.Train.Special.Pad
	}
	kinds, err := clipKinds(m)
	if err != nil {
		return nil, err
	}
	clips := slices.Sorted(maps.Keys(kinds))
	opts := autodiff.Options{
		Logits:     roles.Logits,
		Untie:      cfg.Untie,
		ClipGrad:   cfg.ClipGrad,
		Accumulate: cfg.Accumulate > 1,
		Recompute:  true,
		Loss: autodiff.Loss{
			Kind:           cfg.Loss.Kind,
			LabelSmoothing: float32(cfg.Loss.LabelSmoothing),
			PadID:          pad,
			KDWeight:       float32(cfg.Loss.KDWeight),
			Temperature:    float32(cfg.Loss.Temperature),
		},
	}
	if cfg.FreezeWeights {
		opts.Trainable = clips
		if len(opts.Trainable) == 0 {
			return nil, fmt.Errorf("freezing the weights leaves nothing to train: the model has no clip ranges (no quantizer reads a clip initializer); insert quantizers first")
		}
	}
	if cfg.Loss.WeightClipL2 != 0 || cfg.Loss.ActClipL2 != 0 {
		opts.Loss.ClipL2 = map[string]float32{}
		for clip, weight := range kinds {
			coef := cfg.Loss.ActClipL2
			if weight {
				coef = cfg.Loss.WeightClipL2
			}
			if coef != 0 {
				opts.Loss.ClipL2[clip] = float32(coef)
			}
		}
	}
	if cfg.Loss.Hidden < 0 {
		return nil, fmt.Errorf("hidden-state distillation weight %v: want >= 0", cfg.Loss.Hidden)
	}
	if cfg.Loss.Hidden > 0 {
		if opts.Loss.Hidden, err = quantizedActivations(m); err != nil {
			return nil, err
		}
		opts.Loss.HiddenWeight = float32(cfg.Loss.Hidden)
	}
	tm, info, err := autodiff.Build(m, opts)
	if err != nil {
		return nil, fmt.Errorf("training graph: %v", err)
	}
	tg := &trainingGraph{
		Model:     tm,
		Grads:     map[string]string{},
		Clips:     map[string]bool{},
		Labels:    info.Labels,
		Loss:      info.Loss,
		Tied:      map[string][]tiedCopy{},
		GradIns:   map[string]string{},
		GradScale: info.GradScale,
		Aliases:   info.Aliases,
	}
	if tg.Labels == "" {
		return nil, fmt.Errorf("training graph: it takes no labels")
	}
	tg.Hidden, tg.TeacherHidden = opts.Loss.Hidden, info.TeacherHidden
	if cfg.Loss.usesTeacherLogits() && info.TeacherLogits != teacherInput {
		return nil, fmt.Errorf("training graph: the distillation loss takes no %q input", teacherInput)
	}
	for _, p := range info.Params {
		tg.Params = append(tg.Params, p.Name)
		tg.Grads[p.Name] = p.Grad
		if p.GradIn != "" {
			tg.GradIns[p.Name] = p.GradIn
		}
		if _, ok := kinds[p.Name]; ok {
			tg.Clips[p.Name] = true
		}
	}
	for _, t := range info.Ties {
		tg.Tied[t.Param] = append(tg.Tied[t.Param], tiedCopy{Name: t.Copy, Transpose: t.Transposed})
	}
	return tg, nil
}

// quantizedActivations returns the tensors the activation quantizers of a
// QAT graph quantize, in graph order, each once: the values hidden-state
// distillation compares with the teacher's.
func quantizedActivations(m *graph.Model) ([]string, error) {
	qs, err := quantize.Find(m)
	if err != nil {
		return nil, err
	}
	var xs []string
	seen := map[string]bool{}
	for _, q := range qs {
		if q.Kind == quantize.KindWeight || m.Initializer(q.Tensor) != nil || seen[q.Tensor] {
			continue
		}
		seen[q.Tensor] = true
		xs = append(xs, q.Tensor)
	}
	if len(xs) == 0 {
		return nil, fmt.Errorf("hidden-state distillation: the model has no activation quantizers; insert them first (it distils the quantized activations)")
	}
	return xs, nil
}

// clipKinds maps every clip range of a QAT graph (a float initializer a
// quantizer's scale is computed from) to whether it quantizes a weight
// rather than an activation, for the L2 terms NeurST weighs differently.
// The quantization record says so; a model without one (a QAT graph from
// elsewhere) is read from the graph (quantize.Units). A record whose clip
// is missing from the graph is an error, found before training.
func clipKinds(m *graph.Model) (map[string]bool, error) {
	kinds := map[string]bool{}
	rec, err := quantize.ReadRecord(m)
	switch {
	case errors.Is(err, quantize.ErrNoRecord):
	case err != nil:
		return nil, err
	default:
		for _, q := range rec.Quantizers {
			if q.Clip == "" {
				continue
			}
			init := m.Initializer(q.Clip)
			if init == nil {
				return nil, fmt.Errorf("the quantizer of %q has no clip initializer %q in the graph; the QAT model is damaged, insert the quantizers again", q.Tensor, q.Clip)
			}
			if graph.TensorType(init) != graph.Float {
				return nil, fmt.Errorf("clip %q of %q is %s, not float32", q.Clip, q.Tensor, graph.TensorType(init))
			}
			kinds[q.Clip] = kinds[q.Clip] || q.Kind == quantize.KindWeight
		}
		return kinds, nil
	}
	us, err := quantize.Units(m)
	if err != nil {
		return nil, err
	}
	for _, u := range us {
		if t := m.Initializer(u.Clip); t != nil && graph.TensorType(t) == graph.Float {
			kinds[u.Clip] = kinds[u.Clip] || u.Kind == quantize.KindWeight
		}
	}
	return kinds, nil
}

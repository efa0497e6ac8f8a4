package autodiff

import (
	"fmt"
	"maps"
	"slices"

	"github.com/qatc/qatc/graph"
)

// buildLoss adds the loss to the graph and seeds the logits' gradient
// (and the clips' L2 gradients) with their closed forms, which are exact
// and cheaper than differentiating the loss ops:
//
//	ce: (softmax − (1−ε)·onehot − ε/V) · mask / count
//	kd: T · (softmax(s/T) − softmax(t/T)) · mask / count
func buildLoss(b *builder, logits string, info *Info) error {
	L := b.opts.Loss
	m := b.m
	dt := b.f.Elem(logits)
	if L.Kind == "scalar" {
		if r := b.f.Rank(logits); r > 0 {
			return fmt.Errorf("loss %q has rank %d; a scalar loss must be a scalar", logits, r)
		}
		terms, err := clipL2(b, logits)
		if err != nil {
			return err
		}
		loss := b.typed(dt, 0, "Sum", append([]string{logits}, terms...))
		m.Op("Identity", "", []string{loss}, []string{LossOutput})
		b.accum(logits, b.like(logits, "Expand", []string{b.constOf(logits, 1), b.shape(logits)}))
		return nil
	}
	var dims []string
	if o := m.Output(logits); o != nil {
		if s := o.GetType().GetTensorType().GetShape(); s != nil {
			for _, d := range s.Dim {
				dims = append(dims, d.GetDimParam())
			}
		}
	}
	for len(dims) < 3 {
		dims = append(dims, "")
	}
	info.Labels = LabelsInput
	m.AddInput(LabelsInput, graph.Int64, []int64{-1, -1}, dims[0], dims[1])
	b.f.set(LabelsInput, graph.Int64, 2)
	info.Batch = append(info.Batch, LabelsInput)
	c := func(v float64) string { return b.constOf(logits, v) }

	valid := b.typed(graph.Bool, 2, "Not", []string{b.cmp("Equal", LabelsInput, b.scalar(graph.Int64, float64(L.PadID)))})
	maskF := b.maskOf(valid, logits)
	count := b.like(maskF, "Max", []string{b.typed(dt, 0, "ReduceSum", []string{maskF}, graph.AttrInt("keepdims", 0)), c(1)})
	b.f.rank[count] = 0
	mask3 := b.unsqueeze(maskF, -1)
	scale3 := b.div(mask3, count) // mask / count, [B, T, 1]

	var terms, seeds []string
	if L.Kind == "ce" || L.Kind == "ce+kd" {
		eps := float64(L.LabelSmoothing)
		if eps < 0 || eps >= 1 {
			return fmt.Errorf("label smoothing %v: want 0 <= ε < 1", eps)
		}
		safe := b.typed(graph.Int64, 2, "Where", []string{valid, LabelsInput, b.scalar(graph.Int64, 0)})
		lsm := b.like(logits, "LogSoftmax", []string{logits}, graph.AttrInt("axis", -1))
		picked := b.like(logits, "GatherElements", []string{lsm, b.unsqueeze(safe, -1)}, graph.AttrInt("axis", -1))
		nll := b.neg(b.reduceSum(picked, []int64{-1}, false))
		smooth := b.neg(b.reduceMean(lsm, -1))
		tok := b.add(b.mul(nll, c(1-eps)), b.mul(smooth, c(eps)))
		terms = append(terms, b.div(b.typed(dt, 0, "ReduceSum", []string{b.mul(tok, maskF)}, graph.AttrInt("keepdims", 0)), count))

		vocab := b.typed(graph.Int64, 1, "Slice", []string{b.shape(logits), b.ints(-1), b.ints(1 << 62)})
		vocabS := b.typed(graph.Int64, 0, "Reshape", []string{vocab, b.ints()})
		rng := b.typed(graph.Int64, 1, "Range", []string{b.scalar(graph.Int64, 0), vocabS, b.scalar(graph.Int64, 1)})
		onehot := b.maskOf(b.cmp("Equal", b.unsqueeze(safe, -1), rng), logits)
		b.f.rank[onehot] = 3
		vf := b.typed(dt, 0, "Cast", []string{vocabS}, graph.AttrInt("to", int64(dt)))
		p := b.like(logits, "Exp", []string{lsm})
		d := b.sub(b.sub(p, b.mul(onehot, c(1-eps))), b.div(c(eps), vf))
		seeds = append(seeds, b.mul(d, scale3))
	}
	if L.Kind == "kd" || L.Kind == "ce+kd" {
		T := float64(L.Temperature)
		if T == 0 {
			T = 1
		}
		if T < 0 {
			return fmt.Errorf("temperature %v: want > 0", T)
		}
		w := 1.0
		if L.Kind == "ce+kd" {
			w = float64(L.KDWeight)
		}
		m.AddInput(TeacherInput, dt, []int64{-1, -1, -1}, dims...)
		b.f.set(TeacherInput, dt, 3)
		info.TeacherLogits = TeacherInput
		info.Batch = append(info.Batch, TeacherInput)
		lpt := b.like(logits, "LogSoftmax", []string{b.div(TeacherInput, c(T))}, graph.AttrInt("axis", -1))
		lps := b.like(logits, "LogSoftmax", []string{b.div(logits, c(T))}, graph.AttrInt("axis", -1))
		pt := b.like(logits, "Exp", []string{lpt})
		kl := b.reduceSum(b.mul(pt, b.sub(lpt, lps)), []int64{-1}, false)
		kd := b.div(b.typed(dt, 0, "ReduceSum", []string{b.mul(kl, maskF)}, graph.AttrInt("keepdims", 0)), count)
		terms = append(terms, b.mul(kd, c(w*T*T)))
		ps := b.like(logits, "Exp", []string{lps})
		seeds = append(seeds, b.mul(b.mul(b.sub(ps, pt), scale3), c(w*T)))
	}
	l2, err := clipL2(b, logits)
	if err != nil {
		return err
	}
	terms = append(terms, l2...)
	hidden, err := hiddenKD(b, logits, info)
	if err != nil {
		return err
	}
	terms = append(terms, hidden...)
	loss := terms[0]
	if len(terms) > 1 {
		loss = b.typed(dt, 0, "Sum", terms)
	}
	m.Op("Identity", "", []string{loss}, []string{LossOutput})
	for _, s := range seeds {
		b.accum(logits, s)
	}
	return nil
}

// reduceMean averages x over one static axis, dropping it.
func (b *builder) reduceMean(x string, axis int64) string {
	r := b.f.Rank(x)
	if r > 0 {
		r--
	}
	if b.opset >= 18 {
		return b.typed(b.f.Elem(x), r, "ReduceMean", []string{x, b.ints(axis)}, graph.AttrInt("keepdims", 0))
	}
	return b.typed(b.f.Elem(x), r, "ReduceMean", []string{x}, graph.AttrInts("axes", axis), graph.AttrInt("keepdims", 0))
}

// hiddenKD returns the terms w·‖x − t‖²/‖t‖² of the distilled hidden
// values and seeds their gradients, 2w·(x − t)/‖t‖². The teacher's values
// come in as inputs; no gradient flows into them.
func hiddenKD(b *builder, logits string, info *Info) ([]string, error) {
	L := b.opts.Loss
	if len(L.Hidden) == 0 {
		return nil, nil
	}
	if L.HiddenWeight <= 0 {
		return nil, fmt.Errorf("hidden-state distillation: weight %v, want > 0", L.HiddenWeight)
	}
	info.TeacherHidden = map[string]string{}
	var terms []string
	for _, x := range L.Hidden {
		if _, dup := info.TeacherHidden[x]; dup {
			return nil, fmt.Errorf("hidden-state distillation: %q is listed twice", x)
		}
		if b.m.Producer(x) == nil {
			return nil, fmt.Errorf("hidden-state distillation: %q is not computed by a node of the model", x)
		}
		if !b.needs(x) {
			return nil, fmt.Errorf("hidden-state distillation: %q does not depend on a trainable parameter", x)
		}
		dt, r := b.f.Elem(x), b.f.Rank(x)
		if !isFloat(dt) {
			return nil, fmt.Errorf("hidden-state distillation: %q is %s, not float", x, dt)
		}
		t := TeacherPrefix + x
		if b.m.HasName(t) {
			return nil, fmt.Errorf("hidden-state distillation: the model already uses the name %q", t)
		}
		dims := make([]int64, max(r, 0))
		for i := range dims {
			dims[i] = -1
		}
		b.m.AddInput(t, dt, dims)
		b.f.set(t, dt, r)
		info.TeacherHidden[x] = t
		info.Batch = append(info.Batch, t)
		sum := func(v string) string {
			return b.typed(dt, 0, "ReduceSum", []string{v}, graph.AttrInt("keepdims", 0))
		}
		d := b.sub(x, t)
		// ‖t‖² is at least tiny: an all-zero teacher value adds ‖x‖²/tiny,
		// large but finite.
		norm := b.like(x, "Max", []string{sum(b.mul(t, t)), b.constOf(x, 1e-12)})
		b.f.rank[norm] = 0
		terms = append(terms, castTo(b, b.mul(b.div(sum(b.mul(d, d)), norm), b.constOf(x, float64(L.HiddenWeight))), logits))
		b.accum(x, b.mul(d, b.div(b.constOf(x, 2*float64(L.HiddenWeight)), norm)))
	}
	return terms, nil
}

// clipL2 returns the terms coef·mean(clip²), one per clip tensor, and adds
// their gradients 2·coef·clip/n. The mean keeps NeurST's penalty for its
// per-tensor clips (n = 1) and gives a tensor of n channel or block clips
// the same weight as one: a sum would make each block's share of the
// penalty outweigh its tiny share of the data loss, and Adam, which
// normalises every clip's step, would then shrink all of them.
func clipL2(b *builder, logits string) ([]string, error) {
	L := b.opts.Loss
	var terms []string
	for _, name := range slices.Sorted(maps.Keys(L.ClipL2)) {
		coef := float64(L.ClipL2[name])
		if !b.needs(name) {
			return nil, fmt.Errorf("clip L2: %q is not a trainable parameter of the training graph", name)
		}
		ti := b.f.info[name]
		n, static := int64(1), ti.RankKnown
		for _, d := range ti.Dims {
			n *= d.Value
			static = static && d.Static()
		}
		if !static || n == 0 {
			return nil, fmt.Errorf("clip L2: the shape of clip %q is not static (%v); give the clip tensor fixed dimensions", name, ti)
		}
		sq := b.typed(b.f.Elem(name), 0, "ReduceMean", []string{b.mul(name, name)}, graph.AttrInt("keepdims", 0))
		terms = append(terms, b.mul(castTo(b, sq, logits), b.constOf(logits, coef)))
		b.accum(name, b.mul(name, b.constOf(name, 2*coef/float64(n))))
	}
	return terms, nil
}

package autodiff

import (
	"fmt"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// Loss configures the loss the training graph computes.
type Loss struct {
	// Kind is "ce" (token cross-entropy, the default), "kd" (distillation
	// from teacher logits), "ce+kd", or "scalar": the output named by
	// Options.Logits is a scalar the model computes and is itself the loss
	// (no labels input).
	Kind string
	// LabelSmoothing is ε of PyTorch's definition:
	// (1−ε)·nll + ε·mean_v(−log p_v).
	LabelSmoothing float32
	// PadID marks labels that do not count (nor enter the mean).
	PadID int64
	// KDWeight scales the kd term of "ce+kd".
	KDWeight float32
	// Temperature of the distillation softmaxes (0 means 1). The teacher's
	// logits come in as the graph input "teacher_logits" [batch, tgt_len,
	// vocab], computed by the caller with the fp32 teacher.
	Temperature float32
	// ClipL2 adds coef·mean(clip²) to the loss for each named clip parameter
	// (NeurST: 0.001 for weight clips, 0.01 for activation clips); a
	// per-tensor clip is NeurST's coef·clip², a tensor of channel or block
	// clips weighs as much as one.
	ClipL2 map[string]float32
	// Hidden lists forward values to distil from the teacher (hidden
	// states, attention probabilities: TernaryBERT's intermediate
	// distillation). For each value X the graph takes the teacher's X as
	// the input "teacher/X" and adds HiddenWeight · ‖X − teacher/X‖² /
	// ‖teacher/X‖², a relative squared error that weighs tensors of every
	// scale alike. It works with any Kind but "scalar".
	Hidden       []string
	HiddenWeight float32
}

// Options configure Build.
type Options struct {
	// Logits names the output to train on; by default the model's only
	// float output of rank 3.
	Logits string
	// Trainable lists the initializers to differentiate. By default: every
	// float initializer that is a parameter on a differentiable path to the
	// logits (not scalar constants other than clips, not tables
	// holding infinities, and not sinusoidal position tables).
	Trainable []string
	// Untie makes every initializer its own parameter; by default exact
	// and transposed copies of a parameter are rebuilt from it in the graph
	// and their gradients summed.
	Untie bool
	// ClipGrad is the scale gradient of quantizers: "neurst" (default) or
	// "lsq" (adds Σ g·(round(x/s) − x/s) inside the range).
	ClipGrad string
	// Loss is the loss to build.
	Loss Loss
	// Accumulate makes every gradient output a running sum, so that
	// several micro-batches add up to one update without a second
	// gradient buffer: the graph takes a float scalar GradScaleInput and,
	// per parameter, an input <name>_grad_in of its shape, and outputs
	// <name>_grad = <name>_grad_in + grad_scale·∂loss/∂<name>. A caller
	// that binds one buffer as both <name>_grad_in and <name>_grad sums
	// in place (each output element is computed from the same input
	// element alone).
	Accumulate bool
	// Recompute computes the values that depend on parameters alone (a
	// QAT model's fake-quantized weights) again for the backward pass,
	// from alias inputs of the parameters (Info.Aliases), so that their
	// forward copies do not live through the whole step. The gradients
	// are the same.
	Recompute bool
}

// Param is one trainable input of the training graph.
type Param struct {
	Name  string  // graph input (the former initializer's name)
	Shape []int64 // its shape
	Grad  string  // the graph output holding its gradient
	// GradIn is the accumulator input added to Grad (Options.Accumulate;
	// "" otherwise).
	GradIn string
}

// Tie records an initializer the training graph rebuilds from a parameter.
type Tie struct {
	Param, Copy string
	Transposed  bool // Copy is Paramᵀ (else an exact copy)
}

// Info describes the training graph's interface.
type Info struct {
	Params        []Param  // the trainable inputs, in the model's initializer order
	Ties          []Tie    // copies rebuilt from a parameter (none when untied)
	Batch         []string // batch inputs: the model's inputs, then Labels and TeacherLogits
	Labels        string   // int64 [batch, tgt_len]; "" for a scalar loss
	TeacherLogits string   // float [batch, tgt_len, vocab]; "" unless the loss uses kd
	// TeacherHidden maps each value of Loss.Hidden to the input that takes
	// the teacher's value of it (the same shape).
	TeacherHidden map[string]string
	Loss          string // scalar float output
	Opset         int64  // the training graph's opset
	// GradScale is the float scalar input that weighs this run's
	// gradients in an accumulating graph (Options.Accumulate; "" otherwise).
	GradScale string
	// Aliases are the inputs that take a parameter's values once more
	// (Options.Recompute): bind the parameter's buffer to each.
	Aliases []Alias
}

// An Alias is an input of the training graph that takes the same values
// as a parameter.
type Alias struct {
	Input, Param string
}

// The names of the training graph's fixed inputs and outputs.
const (
	LabelsInput  = "labels"
	TeacherInput = "teacher_logits"
	// TeacherPrefix starts the inputs of the teacher's hidden values.
	TeacherPrefix = "teacher/"
	LossOutput    = "loss"
	GradSuffix    = "_grad"
	// GradScaleInput and GradInSuffix name the inputs of an accumulating
	// graph (Options.Accumulate).
	GradScaleInput = "grad_scale"
	GradInSuffix   = "_grad_in"
)

// Build returns the training graph of m: the forward graph with its
// trainable initializers turned into inputs, the loss, and the gradient
// of the loss with respect to every parameter, all in standard ONNX ops.
// m is not changed.
func Build(m *graph.Model, opts Options) (*graph.Model, *Info, error) {
	if opts.ClipGrad == "" {
		opts.ClipGrad = "neurst"
	}
	if opts.ClipGrad != "neurst" && opts.ClipGrad != "lsq" {
		return nil, nil, fmt.Errorf("clip gradient %q: want neurst or lsq", opts.ClipGrad)
	}
	if opts.Loss.Kind == "" {
		opts.Loss.Kind = "ce"
	}
	switch opts.Loss.Kind {
	case "ce", "kd", "ce+kd":
	case "scalar":
		if opts.Logits == "" {
			return nil, nil, fmt.Errorf("loss scalar: name the scalar output that is the loss")
		}
		if len(opts.Loss.Hidden) > 0 {
			return nil, nil, fmt.Errorf("loss scalar: hidden-state distillation needs a ce or kd loss")
		}
	default:
		return nil, nil, fmt.Errorf("loss %q: want ce, kd, ce+kd or scalar", opts.Loss.Kind)
	}
	tm := m.CloneShared()
	if err := tm.TopoSort(); err != nil {
		return nil, nil, err
	}
	logits, err := findLogits(tm, opts.Logits)
	if err != nil {
		return nil, nil, err
	}
	if opts.Loss.Kind == "scalar" && logits == LossOutput {
		// The model's own loss is called "loss": free the name for the
		// training graph's output.
		logits = renameValue(tm, logits, tm.UniqueName(logits+"/model"))
	}
	reserved := []string{LossOutput}
	if opts.Accumulate {
		reserved = append(reserved, GradScaleInput)
	}
	if opts.Loss.Kind != "scalar" {
		reserved = append(reserved, LabelsInput, TeacherInput)
	}
	for _, name := range reserved {
		if tm.HasName(name) {
			return nil, nil, fmt.Errorf("the model already uses the name %q, which the training graph needs", name)
		}
	}
	b := &builder{m: tm, opset: tm.Opset(""), grads: map[string][]string{}, opts: &opts}
	b.f = newFacts(tm)
	if b.quant, err = findQuantUnits(tm); err != nil {
		return nil, nil, err
	}
	unsignActivations(b)
	forward := append([]*onnx.NodeProto(nil), tm.Graph().Node...)

	params, err := choosePar(b, forward, logits, opts)
	if err != nil {
		return nil, nil, err
	}
	for _, p := range params {
		if tm.HasName(p + GradSuffix) {
			return nil, nil, fmt.Errorf("gradient output %q: the model already uses that name", p+GradSuffix)
		}
		if opts.Accumulate && tm.HasName(p+GradInSuffix) {
			return nil, nil, fmt.Errorf("gradient accumulator input %q: the model already uses that name", p+GradInSuffix)
		}
	}
	info := &Info{Loss: LossOutput}
	for _, v := range tm.Graph().Input {
		if tm.Initializer(v.Name) == nil {
			info.Batch = append(info.Batch, v.Name)
		}
	}
	var ties []Tie
	if !opts.Untie {
		ties = findTies(tm, params)
	}
	copies := map[string]bool{}
	for _, t := range ties {
		copies[t.Copy] = true
	}
	// Parameters become inputs; tied copies are rebuilt from them.
	for _, p := range params {
		if copies[p] {
			continue
		}
		init := tm.Initializer(p)
		// A scalar gets an empty, not a missing, shape: every input and
		// gradient output then declares its rank, which a session needs
		// (without it onnxruntime is asked, by opening the model once
		// more).
		dims := append([]int64{}, init.Dims...)
		dt := graph.TensorType(init)
		tm.RemoveInitializer(p)
		tm.AddInput(p, dt, dims)
		pi := Param{Name: p, Shape: dims, Grad: p + GradSuffix}
		if opts.Accumulate {
			pi.GradIn = p + GradInSuffix
		}
		info.Params = append(info.Params, pi)
	}
	for _, t := range ties {
		tm.RemoveInitializer(t.Copy)
		if t.Transposed {
			tm.Op("Transpose", "", []string{t.Param}, []string{t.Copy}, graph.AttrInts("perm", 1, 0))
		} else {
			tm.Op("Identity", "", []string{t.Param}, []string{t.Copy})
		}
		forward = append([]*onnx.NodeProto{tm.Producer(t.Copy)}, forward...)
	}
	info.Ties = ties

	b.active = map[string]bool{}
	for _, p := range info.Params {
		b.active[p.Name] = true
	}
	propagate(b, forward)
	if !b.active[logits] {
		return nil, nil, fmt.Errorf("logits %q do not depend on any trainable parameter", logits)
	}

	if err := buildLoss(b, logits, info); err != nil {
		return nil, nil, err
	}
	if err := backward(b, forward); err != nil {
		return nil, nil, err
	}
	if opts.Recompute {
		recompute(b, forward, info)
	}

	g := tm.Graph()
	g.Output = nil
	tm.Reindex()
	tm.AddOutput(LossOutput, b.f.Elem(logits), []int64{})
	if opts.Accumulate {
		tm.AddInput(GradScaleInput, graph.Float, []int64{})
		b.f.set(GradScaleInput, graph.Float, 0)
		info.GradScale = GradScaleInput
	}
	// A gradient computed by a node of its own is renamed to its output's
	// name; an Identity would copy every gradient once more per step.
	rename := map[string]string{}
	for _, p := range info.Params {
		gv := b.grad(p.Name)
		if gv == "" {
			b.node = nil
			gv = b.zerosLike(p.Name)
		}
		if opts.Accumulate {
			b.node = nil
			dt := b.f.Elem(p.Name)
			tm.AddInput(p.GradIn, dt, p.Shape)
			b.f.set(p.GradIn, dt, len(p.Shape))
			gv = b.add(p.GradIn, b.mul(gv, castTo(b, GradScaleInput, p.Name)))
		}
		if _, done := rename[gv]; !done && tm.Producer(gv) != nil && !tm.IsGraphOutput(gv) {
			rename[gv] = p.Grad
		} else {
			tm.Op("Identity", "", []string{gv}, []string{p.Grad})
		}
		tm.AddOutput(p.Grad, b.f.Elem(p.Name), p.Shape)
	}
	renameAll(tm, rename)
	prune(tm)
	if err := tm.TopoSort(); err != nil {
		return nil, nil, err
	}
	info.Opset = tm.Opset("")
	return tm, info, nil
}

// findLogits returns the output to train on.
func findLogits(m *graph.Model, name string) (string, error) {
	if name != "" {
		if !m.IsGraphOutput(name) && m.Producer(name) == nil {
			return "", fmt.Errorf("logits %q: no such output or value in the model", name)
		}
		return name, nil
	}
	var found []string
	for _, o := range m.Outputs() {
		if isFloat(o.Elem) && o.Dims != nil && len(o.Dims) == 3 {
			found = append(found, o.Name)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("the model has no float output of rank 3 (logits [batch, len, vocab]); name the logits output")
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("the model has several float outputs of rank 3 (%s); name the logits output", strings.Join(found, ", "))
}

// propagate marks the float values that depend on an active value.
func propagate(b *builder, nodes []*onnx.NodeProto) {
	for _, n := range nodes {
		any := false
		if u := b.quant[n]; u != nil {
			any = b.active[u.x] || b.active[u.Scale] || b.active[in(n, 1)]
		} else {
			for _, x := range n.Input {
				if b.active[x] {
					any = true
					break
				}
			}
		}
		if !any {
			continue
		}
		for _, o := range n.Output {
			dt := b.f.Elem(o)
			if o != "" && (dt == graph.Undefined || isFloat(dt)) {
				b.active[o] = true
			}
		}
	}
}

// backward runs the rules over the forward nodes in reverse order.
func backward(b *builder, nodes []*onnx.NodeProto) error {
	for i := len(nodes) - 1; i >= 0; i-- {
		n := nodes[i]
		gy := make([]string, len(n.Output))
		reached := false
		for j, o := range n.Output {
			if o == "" {
				continue
			}
			if gy[j] = b.grad(o); gy[j] != "" {
				reached = true
				if r := b.f.Rank(o); r >= 0 {
					b.f.rank[gy[j]] = r
				}
			}
		}
		if !reached {
			continue
		}
		needed := false
		for _, x := range n.Input {
			if b.needs(x) {
				needed = true
			}
		}
		if u := b.quant[n]; u != nil {
			needed = b.needs(u.x) || b.needs(u.Scale)
		}
		if !needed {
			continue
		}
		r := rules[n.OpType]
		if n.Domain != "" && n.Domain != "ai.onnx" {
			r = nil
		}
		if r == nil {
			return fmt.Errorf("node %s (%s) is on a gradient path and has no gradient rule", graph.NodeName(n), opName(n))
		}
		b.node = n
		if err := r(b, n, gy); err != nil {
			return fmt.Errorf("node %s (%s): %w", graph.NodeName(n), n.OpType, err)
		}
	}
	b.node = nil
	return nil
}

func opName(n *onnx.NodeProto) string {
	if n.Domain != "" && n.Domain != "ai.onnx" {
		return n.Domain + "." + n.OpType
	}
	return n.OpType
}

// unsignActivations moves the signed 8-bit activation quantizers that
// feed a MatMul's left operand to uint8 with zero point 128. The grid and
// every value after DequantizeLinear stay the same (q+128 saturates at 0
// and 255 exactly where q saturates at -128 and 127), but onnxruntime's
// x86 kernels fuse DequantizeLinear → MatMul into an integer product only
// for an unsigned left operand, which makes the forward matmuls of a
// training step 2-3× faster. Weights stay signed (the right operand);
// quantizers with an integer Clip in between, or whose integers another
// node reads too, are left alone.
func unsignActivations(b *builder) {
	zp128 := ""
	for _, u := range b.quant {
		if u.Clamp != nil || b.m.Initializer(u.x) != nil || b.f.Elem(u.Q.Output[0]) != graph.Int8 || len(b.m.Consumers(u.Q.Output[0])) != 1 {
			continue
		}
		if z := in(u.Q, 2); z == "" || in(u.DQ, 2) != z || b.f.Rank(u.Scale) != 0 {
			continue
		}
		if vals, ok := b.m.ConstInts(in(u.Q, 2)); !ok || len(vals) != 1 || vals[0] != 0 {
			continue
		}
		left := false
		for _, c := range b.m.Consumers(u.DQ.Output[0]) {
			left = left || c.OpType == "MatMul" && (c.Domain == "" || c.Domain == "ai.onnx") && c.Input[0] == u.DQ.Output[0]
		}
		if !left {
			continue
		}
		if zp128 == "" {
			zp128 = b.m.UniqueName("grad/uint8_zero_point")
			b.m.AddInitializer(graph.Uint8Tensor(zp128, nil, []uint8{128}))
			b.f.set(zp128, graph.Uint8, 0)
		}
		u.Q.Input[2], u.DQ.Input[2] = zp128, zp128
		b.f.elem[u.Q.Output[0]] = graph.Uint8
	}
	if zp128 != "" {
		b.m.Reindex()
	}
}

// renameAll renames node outputs (and their uses) from old to new names
// in one pass.
func renameAll(m *graph.Model, names map[string]string) {
	if len(names) == 0 {
		return
	}
	var walk func(nodes []*onnx.NodeProto)
	walk = func(nodes []*onnx.NodeProto) {
		for _, n := range nodes {
			for _, v := range [][]string{n.Input, n.Output} {
				for i, x := range v {
					if r, ok := names[x]; ok {
						v[i] = r
					}
				}
			}
			for _, sg := range graph.Subgraphs(n) {
				walk(sg.Node)
			}
		}
	}
	walk(m.Graph().Node)
	m.Reindex()
}

// renameValue renames value old (a node output) to new everywhere and
// returns new.
func renameValue(m *graph.Model, old, new string) string {
	if p := m.Producer(old); p != nil {
		for i, o := range p.Output {
			if o == old {
				p.Output[i] = new
			}
		}
	}
	m.ReplaceUses(old, new)
	for _, o := range m.Graph().Output {
		if o.Name == old {
			o.Name = new
		}
	}
	m.Reindex()
	return new
}

// prune removes the nodes and initializers no graph output depends on.
func prune(m *graph.Model) {
	g := m.Graph()
	live := map[string]bool{}
	for _, o := range g.Output {
		live[o.Name] = true
	}
	keep := make([]bool, len(g.Node))
	// Nodes are in forward order after the gradient nodes were appended,
	// so iterate to a fixed point.
	for changed := true; changed; {
		changed = false
		for i := len(g.Node) - 1; i >= 0; i-- {
			if keep[i] {
				continue
			}
			n := g.Node[i]
			for _, o := range n.Output {
				if live[o] {
					keep[i] = true
				}
			}
			if keep[i] {
				changed = true
				for _, x := range graph.NodeReads(n) {
					live[x] = true
				}
			}
		}
	}
	var nodes []*onnx.NodeProto
	for i, n := range g.Node {
		if keep[i] {
			nodes = append(nodes, n)
		}
	}
	g.Node = nodes
	var inits []*onnx.TensorProto
	for _, t := range g.Initializer {
		if live[t.Name] {
			inits = append(inits, t)
		}
	}
	g.Initializer = inits
	m.Reindex()
}

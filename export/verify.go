package export

import (
	"encoding/json"
	"fmt"
	"github.com/qatc/qatc/decode"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/fold"
	"github.com/qatc/qatc/passes/quantize"
)

// Agreement bounds, per format, in steps. A step is one activation
// quantization step at the logits' scale: the step s of the quantizer on
// the input of the output projection W, carried to the logits as
// s · max_j Σ_i |W_ij| (W dequantized), the most any logit moves when each
// of its inputs moves by one step. Where the logits do not come from a
// quantized projection, it is one 8-bit step of their range,
// max |logit| / 127.
//
// qdq runs the same integers and scales as the QAT model, and onnxruntime
// applies the same fusions to both, so they agree to float rounding.
// qoperator runs the same arithmetic in other kernels (exact int32
// accumulation, one rescale): float rounding differs, and an activation
// lying on a rounding boundary of its quantizer may land one step away;
// the logits stay within one step. dynamic quantizes activations per
// batch over their observed range instead of the learned clips, a grid of
// about the same step but other boundaries, and gets two; positions whose
// two best logits lie within a step of each other can flip on such a grid
// (common in a barely trained model), so their top-1 floor is lower and
// the error bound is what catches a broken export.
//
// A format that quantizes activations on grids of its own (dynamic,
// matmulnbits: Regrid) moves every activation by up to a step of its
// grid, in every layer, and the later layers carry those moves to the
// logits amplified, beyond what the last projection's step measures. Its
// weights are the QAT model's and its grids are no coarser than the
// learned ones (each spans the values at hand), so it lies no further
// from the QAT model with its activations left in float than the QAT
// model does, and by the triangle inequality within twice the QAT model's
// activation quantization error (max |QAT − QAT without activation
// quantizers| on the batch) of the QAT model: the bound is the larger of
// the two.
var bounds = map[string]struct {
	Steps  float64 // max abs logit error, in steps
	Top1   float64 // minimum top-1 agreement
	Regrid bool    // activations quantized on the format's own grids
}{
	"qdq":       {1, 0.995, false},
	"qoperator": {1, 0.995, false},
	"dynamic":   {2, 0.95, true},
	// matmulnbits: the weights are the QAT model's, but accuracy level 4
	// requantizes each activation block to int8 over its own range, a
	// grid no coarser than the learned one with other boundaries, like
	// dynamic.
	"matmulnbits": {2, 0.95, true},
}

// intKernels are onnxruntime CPU kernels that compute in 8-bit integers
// (MatMulNBits at the accuracy level 4 that export writes).
var intKernels = map[string]bool{
	"MatMulInteger": true, "MatMulIntegerToFloat": true, "DynamicQuantizeMatMul": true,
	"QLinearMatMul": true, "QGemm": true, "QAttention": true, "QLinearConv": true,
	"ConvInteger": true, "QEmbedLayerNormalization": true, "DynamicQuantizeLSTM": true,
	"MatMulNBits": true,
}

// floatMatMuls are the float matrix kernels: a quantized weight read by
// one of these runs in fp32.
var floatMatMuls = map[string]bool{"MatMul": true, "Gemm": true, "FusedMatMul": true, "FusedGemm": true}

// VerifyReport compares an exported model with its QAT model on a batch.
type VerifyReport struct {
	Format string
	Output string // the compared output (the logits)
	// MaxAbsErr is the largest |exported - QAT| over the output; Step is
	// one activation step at the logits' scale (see bounds) and Bound the
	// allowed error.
	MaxAbsErr float64
	Step      float64
	Bound     float64
	// StepRule says which rule gave Step: the quantized projection that
	// computes the output, or max |logit|/127 and why the projection rule
	// did not apply.
	StepRule string
	// QuantErr is the QAT model's activation quantization error, max
	// |QAT − QAT without activation quantizers| on the batch (measured
	// for the formats with grids of their own); Rule says which rule set
	// Bound: the steps, or twice QuantErr.
	QuantErr float64
	Rule     string
	// Top1 is the fraction of positions whose argmax over the last axis
	// agrees; Positions how many. A position whose two best QAT logits
	// lie within twice the bound of each other is a tie at the format's
	// precision (an export within the bound may pick either, as happens
	// all the time on the near-flat logits of random token ids); the
	// other positions are Decisive, and DecisiveTop1, the agreement over
	// them, must reach MinTop1.
	Top1      float64
	Positions int
	// Padded is the number of padded target positions left out.
	Padded       int
	Decisive     int
	DecisiveTop1 float64
	MinTop1      float64
	// Kernels counts the nodes onnxruntime ran per operator type (from
	// its profiler); IntKernels and FloatMatMuls sum the integer and the
	// float matrix kernels among them.
	Kernels      map[string]int
	IntKernels   int
	FloatMatMuls int
}

// Padding names the positions the check leaves out: those whose target
// id (input Target, [batch, len] like the output's first two axes) is
// Pad. No loss and no decoding step reads the logits of a padded target
// position, so finetuning never fits the clips to them, and a format with
// grids of its own can differ there by more than anywhere that matters
// (matmulnbits of the tied post-norm fixture: 1.05 there, 0.49 at the
// other positions, against a bound of 0.86). The zero value compares
// every position.
type Padding struct {
	Target string
	Pad    int64
}

// Verify runs the QAT model and the exported model (from Export) on the
// inputs and compares their first common float output at every position
// not padded (see Padding): the max abs error must stay within the
// format's bound and the top-1 agreement above its minimum on the
// positions not tied within twice the bound (see bounds), and onnxruntime
// must run integer kernels for the exported model, at least one per
// integer matrix node the file holds (an integer node that onnxruntime
// decomposes or drops runs in float). It returns the report together with
// the failure.
//
// Each model runs in a session of its own, closed before the next opens,
// without prepacked weights (a second copy of every weight, which a
// single run does not repay).
func Verify(qat, exported *graph.Model, inputs map[string]*ort.Tensor, pad Padding) (VerifyReport, error) {
	format, _ := exported.Metadata(fold.FormatKey)
	output, err := commonOutput(exported, func(name string) bool { return qat.Output(name) != nil })
	if err != nil {
		return VerifyReport{Format: format}, err
	}
	ref, err := run(qat, inputs, output, &ort.Options{Optimization: refOptimization, NoPrepack: true})
	if err != nil {
		return VerifyReport{Format: format}, fmt.Errorf("run the QAT model: %w", err)
	}
	var plain *ort.Tensor
	if bounds[format].Regrid {
		if plain, err = plainOutput(qat, inputs, output); err != nil {
			return VerifyReport{Format: format}, err
		}
	}
	step, rule, err := projectionStep(qat, output)
	return check(exported, inputs, pad, output, ref.out, plain, stepInfo{step, rule, err})
}

// commonOutput returns the exported model's first float output that the
// QAT model has too (has says which it has): the one the check compares.
func commonOutput(exported *graph.Model, has func(string) bool) (string, error) {
	format, _ := exported.Metadata(fold.FormatKey)
	if _, ok := bounds[format]; !ok {
		return "", fmt.Errorf("exported model has no known %s metadata (%q); verify models written by export.Export", fold.FormatKey, format)
	}
	for _, o := range exported.Graph().Output {
		if has(o.Name) && elemType(o) == graph.Float {
			return o.Name, nil
		}
	}
	return "", fmt.Errorf("the exported and the QAT model share no float output to compare")
}

// plainOutput runs the QAT model without its activation quantizers: the
// formats that quantize activations on grids of their own are bounded by
// its difference from the QAT model.
func plainOutput(qat *graph.Model, inputs map[string]*ort.Tensor, output string) (*ort.Tensor, error) {
	weightsOnly, err := quantize.StripActivations(qat)
	if err != nil {
		return nil, err
	}
	plain, err := run(weightsOnly, inputs, output, &ort.Options{Optimization: refOptimization, NoPrepack: true})
	if err != nil {
		return nil, fmt.Errorf("run the QAT model without its activation quantizers: %w", err)
	}
	return plain.out, nil
}

// stepInfo is projectionStep's answer for one output.
type stepInfo struct {
	step float64
	rule string
	err  error
}

// check runs the exported model on the inputs with onnxruntime's profiler
// and compares its output with ref, the QAT model's (plain: the QAT
// model's without activation quantizers, for the formats that need it),
// at the positions pad keeps, as Verify says.
func check(exported *graph.Model, inputs map[string]*ort.Tensor, pad Padding, output string, ref, plain *ort.Tensor, step stepInfo) (VerifyReport, error) {
	format, _ := exported.Metadata(fold.FormatKey)
	r := VerifyReport{Format: format, Output: output}
	b := bounds[format]
	dir, err := os.MkdirTemp("", "qatc-profile")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	got, err := run(exported, inputs, r.Output, &ort.Options{ProfilePrefix: filepath.Join(dir, "export"), NoPrepack: true})
	if err != nil {
		return r, fmt.Errorf("run the %s model: %w", format, err)
	}
	if r.Kernels, err = readProfile(got.profile); err != nil {
		return r, err
	}
	for op, n := range r.Kernels {
		if intKernels[op] {
			r.IntKernels += n
		}
		if floatMatMuls[op] {
			r.FloatMatMuls += n
		}
	}

	a, e := ref.Float32s(), got.out.Float32s()
	if len(a) != len(e) || len(ref.Shape) == 0 {
		return r, fmt.Errorf("output %q: the QAT model gives %v, the %s model %v", r.Output, ref.Shape, format, got.out.Shape)
	}
	n := int(ref.Shape[len(ref.Shape)-1])
	keep, err := pad.keep(inputs, ref)
	if err != nil {
		return r, err
	}
	var amax float64
	for p := 0; p+n <= len(a); p += n {
		if !keep(p / n) {
			r.Padded++
			continue
		}
		for i := p; i < p+n; i++ {
			amax = math.Max(amax, math.Abs(float64(a[i])))
			r.MaxAbsErr = math.Max(r.MaxAbsErr, math.Abs(float64(a[i])-float64(e[i])))
			if math.IsNaN(float64(e[i])) {
				r.MaxAbsErr = math.Inf(1)
			}
		}
	}
	if step.err == nil {
		r.Step, r.StepRule = step.step, step.rule
	} else {
		r.Step = amax / 127
		r.StepRule = fmt.Sprintf("max|%s|/127, one 8-bit step of the output's range, because no quantized projection step applies: %v", r.Output, step.err)
	}
	r.Bound = b.Steps * r.Step
	r.Rule = fmt.Sprintf("%g logit steps of %.4g", b.Steps, r.Step)
	if b.Regrid {
		for i, v := range plain.Float32s() {
			if keep(i / n) {
				r.QuantErr = math.Max(r.QuantErr, math.Abs(float64(v)-float64(a[i])))
			}
		}
		if 2*r.QuantErr > r.Bound {
			r.Bound = 2 * r.QuantErr
			r.Rule = fmt.Sprintf("twice the QAT model's activation quantization error %.4g", r.QuantErr)
		}
	}
	r.MinTop1 = b.Top1
	agree, decisiveAgree := 0, 0
	for p := 0; p+n <= len(a); p += n {
		if !keep(p / n) {
			continue
		}
		r.Positions++
		same := decode.Argmax(a[p:p+n]) == decode.Argmax(e[p:p+n])
		if same {
			agree++
		}
		if margin(a[p:p+n]) > 2*r.Bound {
			r.Decisive++
			if same {
				decisiveAgree++
			}
		}
	}
	r.Top1 = float64(agree) / float64(max(r.Positions, 1))
	r.DecisiveTop1 = 1
	if r.Decisive > 0 {
		r.DecisiveTop1 = float64(decisiveAgree) / float64(r.Decisive)
	}

	intNodes := 0
	for _, n := range exported.Graph().Node {
		if intKernels[n.OpType] {
			intNodes++
		}
	}
	switch {
	case r.Positions == 0:
		return r, fmt.Errorf("the check batch holds no target position that is not padding (id %d in %s)", pad.Pad, pad.Target)
	case r.IntKernels == 0:
		return r, fmt.Errorf("%s model: onnxruntime ran no integer kernel (it ran %s); the export would run in fp32", format, kernelList(r.Kernels))
	case r.IntKernels < intNodes:
		return r, fmt.Errorf("%s model: the file has %d integer matrix nodes but onnxruntime ran only %d integer kernels (%s)", format, intNodes, r.IntKernels, kernelList(r.Kernels))
	case !(r.MaxAbsErr <= r.Bound):
		return r, fmt.Errorf("%s model: max abs error %.4g on %q exceeds %.4g (%s; the step: %s)", format, r.MaxAbsErr, r.Output, r.Bound, r.Rule, r.StepRule)
	case r.DecisiveTop1 < b.Top1:
		return r, fmt.Errorf("%s model: top-1 agreement %.2f%% on the %d positions of %q whose two best logits differ by more than twice the bound is below %.1f%%", format, 100*r.DecisiveTop1, r.Decisive, r.Output, 100*b.Top1)
	}
	return r, nil
}

// keep returns whether the check compares position i of out (its
// positions are the elements of all axes but the last, in order).
func (pad Padding) keep(inputs map[string]*ort.Tensor, out *ort.Tensor) (func(i int) bool, error) {
	if pad.Target == "" {
		return func(int) bool { return true }, nil
	}
	t := inputs[pad.Target]
	if t == nil {
		return nil, fmt.Errorf("the check batch has no target input %s", pad.Target)
	}
	if len(out.Shape) != 3 || len(t.Shape) != 2 || t.Shape[0] != out.Shape[0] || t.Shape[1] != out.Shape[1] {
		return nil, fmt.Errorf("target input %s %v does not give the positions of the output %v", pad.Target, t.Shape, out.Shape)
	}
	ids := t.Int64s()
	return func(i int) bool { return ids[i] != pad.Pad }, nil
}

// margin is the gap between the two largest values of v.
func margin(v []float32) float64 {
	first, second := math.Inf(-1), math.Inf(-1)
	for _, x := range v {
		switch f := float64(x); {
		case f > first:
			first, second = f, first
		case f > second:
			second = f
		}
	}
	return first - second
}

// refOptimization is the level the QAT model runs at as the reference.
var refOptimization = ort.OptimizeDefault

type result struct {
	out     *ort.Tensor
	profile string
}

// run evaluates one output of m; with a ProfilePrefix it also returns the
// profile onnxruntime wrote.
func run(m *graph.Model, inputs map[string]*ort.Tensor, output string, opts *ort.Options) (result, error) {
	s, err := ort.Open(m, opts)
	if err != nil {
		return result{}, err
	}
	outs, err := s.Run(inputs, output)
	if err != nil {
		s.Close()
		return result{}, err
	}
	res := result{out: outs[output]}
	if opts != nil && opts.ProfilePrefix != "" {
		res.profile, err = s.EndProfiling()
		return res, err
	}
	return res, s.Close()
}

// readProfile counts the nodes per operator type in an onnxruntime
// profile (a JSON array of trace events; each node run is a "Node" event
// whose args name the op).
func readProfile(path string) (map[string]int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the onnxruntime profile: %w", err)
	}
	var events []struct {
		Cat  string `json:"cat"`
		Name string `json:"name"`
		Args struct {
			OpName string `json:"op_name"`
		} `json:"args"`
	}
	if err := json.Unmarshal(data, &events); err != nil {
		return nil, fmt.Errorf("onnxruntime profile %s: %v", path, err)
	}
	seen := map[string]bool{}
	kernels := map[string]int{}
	for _, e := range events {
		if e.Cat != "Node" || e.Args.OpName == "" || !strings.HasSuffix(e.Name, "_kernel_time") || seen[e.Name] {
			continue
		}
		seen[e.Name] = true
		kernels[e.Args.OpName]++
	}
	return kernels, nil
}

// Kernels runs m once on inputs and returns how many nodes of each
// operator type onnxruntime ran, after its graph optimizations.
func Kernels(m *graph.Model, inputs map[string]*ort.Tensor) (map[string]int, error) {
	dir, err := os.MkdirTemp("", "qatc-profile")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	s, err := ort.Open(m, &ort.Options{ProfilePrefix: filepath.Join(dir, "kernels")})
	if err != nil {
		return nil, err
	}
	if _, err := s.Run(inputs); err != nil {
		s.Close()
		return nil, err
	}
	path, err := s.EndProfiling()
	if err != nil {
		return nil, err
	}
	return readProfile(path)
}

func kernelList(k map[string]int) string {
	var parts []string
	for op, n := range k {
		parts = append(parts, fmt.Sprintf("%s×%d", op, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// elemType returns a value's tensor element type (Undefined if unknown).
func elemType(v *onnx.ValueInfoProto) graph.DataType {
	return graph.DataType(v.GetType().GetTensorType().GetElemType())
}

// projectionStep returns one activation quantization step at the scale of
// output: s·max_j Σ_i |W_ij| for the quantized projection y = DQ(x)·DQ(W)
// (+ bias) that produces it, read from the folded QAT model, with the rule
// in words; or why no such projection computes the output.
func projectionStep(qat *graph.Model, output string) (float64, string, error) {
	m := qat.CloneShared()
	if _, err := fold.Fold(m); err != nil {
		return 0, "", fmt.Errorf("the QAT model does not fold: %v", err)
	}
	return foldedStep(m, output)
}

// foldedStep is projectionStep on the QAT model already folded (m).
func foldedStep(m *graph.Model, output string) (float64, string, error) {
	v := output
	var mm *onnx.NodeProto
	for mm == nil {
		p := m.Producer(v)
		switch {
		case p == nil:
			return 0, "", fmt.Errorf("%s is not computed by a MatMul or Gemm", output)
		case p.OpType == "MatMul" || p.OpType == "Gemm" && graph.IntAttr(p, "transA", 0) == 0:
			mm = p
		case p.OpType == "Add" || p.OpType == "Identity" || p.OpType == "Reshape":
			// Through a bias (the other input constant) or a reshape.
			v = p.Input[0]
			if p.OpType == "Add" && m.Initializer(v) != nil {
				v = p.Input[1]
			}
		default:
			return 0, "", fmt.Errorf("%s is computed by %s %s, not a MatMul or Gemm (through bias Add, Reshape or Identity)", output, p.OpType, graph.NodeName(p))
		}
	}
	in, err := fold.DequantizedAt(m, mm.Input[0])
	if err != nil || in == nil || len(in.Scale) != 1 {
		return 0, "", fmt.Errorf("the input of %s %s is not quantized per tensor", mm.OpType, graph.NodeName(mm))
	}
	sa := in.Scale
	// The weight may be read through a Transpose after its
	// DequantizeLinear (a blocked scale does not move past it).
	wv, after := mm.Input[1], false
	if p := m.Producer(wv); p != nil && p.OpType == "Transpose" && len(graph.IntsAttr(p, "perm")) <= 2 {
		wv, after = p.Input[0], true
	}
	wd, err := fold.DequantizedAt(m, wv)
	if err != nil || wd == nil || wd.Stored == nil || len(wd.Stored.Dims) != 2 {
		return 0, "", fmt.Errorf("the weight of %s %s is not a quantized matrix", mm.OpType, graph.NodeName(mm))
	}
	w, tr := wd.Stored, wd.Transposed
	q, err := intsAt(w)
	if err != nil {
		return 0, "", fmt.Errorf("the weight of %s %s: %v", mm.OpType, graph.NodeName(mm), err)
	}
	// d indexes the DequantizeLinear's input, w or wᵀ (tr).
	rows, cols := int(w.Dims[0]), int(w.Dims[1])
	d0, d1 := rows, cols
	if tr {
		d0, d1 = cols, rows
	}
	idx, err := wd.ScaleIndex([]int64{int64(d0), int64(d1)})
	if err != nil {
		return 0, "", fmt.Errorf("the weight scale of %s %s (%d values) fits no per-tensor, per-axis or blocked layout of [%d, %d]", mm.OpType, graph.NodeName(mm), len(wd.Scale), d0, d1)
	}
	scale := func(i, j int) float32 { return wd.Scale[idx(i*d1+j)] }
	// The product reads B = d, or dᵀ under one of a Transpose after the
	// DequantizeLinear and Gemm's transB.
	flip := after != (mm.OpType == "Gemm" && graph.IntAttr(mm, "transB", 0) != 0)
	k, n := d0, d1
	if flip {
		k, n = d1, d0
	}
	var best float64
	for j := range n {
		var sum float64
		for i := range k {
			a, b := i, j // d's coordinates
			if flip {
				a, b = j, i
			}
			e := q(a*cols + b)
			if tr {
				e = q(b*cols + a)
			}
			sum += math.Abs(float64(e)) * float64(scale(a, b))
		}
		best = math.Max(best, sum)
	}
	if best == 0 {
		return 0, "", fmt.Errorf("the weight of %s %s is all zeros", mm.OpType, graph.NodeName(mm))
	}
	return float64(sa[0]) * best, fmt.Sprintf("one input step s of %s %s carried to its outputs (s·max_j Σ_i |W_ij|)", mm.OpType, graph.NodeName(mm)), nil
}

// intsAt returns an integer tensor's element i: read from its 8-bit raw
// data in place (a quantized embedding table has tens of millions), or
// from graph.Int64s.
func intsAt(t *onnx.TensorProto) (func(i int) int64, error) {
	if raw := t.RawData; int64(len(raw)) == graph.NumElements(t.Dims) && !graph.HasExternalData(t) {
		switch graph.TensorType(t) {
		case graph.Int8:
			return func(i int) int64 { return int64(int8(raw[i])) }, nil
		case graph.Uint8:
			return func(i int) int64 { return int64(raw[i]) }, nil
		}
	}
	v, err := graph.Int64s(t)
	if err != nil {
		return nil, err
	}
	return func(i int) int64 { return v[i] }, nil
}

// SampleBatch returns the sentences recorded in m (quantize.SampleKey, by
// insert's calibration or finetune) as input tensors and the file they
// came from, or a nil batch when m has none.
func SampleBatch(m *graph.Model) (map[string]*ort.Tensor, string, error) {
	s, err := quantize.ReadSample(m)
	if err != nil || s == nil {
		return nil, "", err
	}
	batch := map[string]*ort.Tensor{}
	for name, t := range s.Inputs {
		batch[name] = ort.Int64(t.Shape, t.Data)
	}
	return batch, s.From, nil
}

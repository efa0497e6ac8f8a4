package export

import (
	"fmt"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/passes"
	"github.com/qatc/qatc/passes/fold"
	"google.golang.org/protobuf/proto"
)

// Formats are the ONNX formats Export writes. (The LightSeq file is
// written by export/lightseq.)
var Formats = []string{"qdq", "qoperator", "dynamic", "matmulnbits"}

// nbits configures the matmulnbits format: int8 compute (onnxruntime's
// fast CPU kernel), the activation quantizers kept in front of MatMulNBits
// so that their learned clips still saturate (dropping them changes the
// numbers wherever an activation exceeds its clip; BenchmarkNBits times
// both).
var nbits = fold.NBitsOptions{AccuracyLevel: 4}

// SourceKey is the metadata key recording the QAT model an export was made
// from (Options.Source).
const SourceKey = "qatc.source"

// Options configure Export.
type Options struct {
	// Source names the QAT model (its path) in the exported model's
	// metadata; empty leaves it out.
	Source string
	// Dump writes the model after the passes it names (--dump-after).
	Dump passes.Options
	// afterFold, when set, rewrites the folded model before the format's
	// conversion (the incremental graphs' integer cache).
	afterFold func(*graph.Model) error
}

// Report says what Export wrote.
type Report struct {
	Format     string
	Quantizers []fold.Folded
	// IntWeights counts the integer initializers; IntBytes and FloatBytes
	// are the initializer bytes stored as integers and as floats.
	IntWeights int
	IntBytes   int64
	FloatBytes int64
	// Size is the serialized size of the exported model, SourceSize that
	// of the QAT model it came from.
	Size       int64
	SourceSize int64
	// Int4Weights counts the weights stored as INT4/UINT4 (qdq) and
	// NBitsWeights those read by MatMulNBits (matmulnbits).
	Int4Weights  int
	NBitsWeights int
	// FloatProducts are the weight products qoperator and dynamic left
	// in float, each with the reason (also in Notes).
	FloatProducts []fold.FloatProduct
	// Notes says what Export chose that changes the file but not the
	// numbers: a fallback to int8 storage, weights left in the qdq form,
	// weight products left in float.
	Notes []string
}

// Export converts a QAT model into the named deployment format and returns
// the exported model, leaving m unchanged. The exported model shares the
// bytes of the tensors it keeps as they are (biases, LayerNorm parameters)
// with m; the weights it converts are converted one at a time, into
// integer tensors of their own:
//
//   - qdq: int8 weights + DequantizeLinear, activation Q/DQ pairs with
//     constant scales (fold.Fold);
//   - qoperator: qdq, then integer MatMuls with static activation scales
//     (fold.QOperator);
//   - dynamic: qdq weights, activations quantized per batch
//     (fold.Dynamic);
//   - matmulnbits: qdq, then onnxruntime's MatMulNBits for every weight
//     product (fold.MatMulNBits), packed 2-, 4- or 8-bit weights with
//     per-block scales, int8 compute.
//
// With weights of 4 bits or fewer, qdq stores them as INT4 initializers
// (fold.Int4), raising the model to opset 21 where ONNX defines them
// (fold.RaiseOpset); where the opset cannot be raised they stay int8
// containers, and Report.Notes says why.
//
// The metadata records the format (fold.FormatKey) and keeps the source's
// quantization record.
func Export(m *graph.Model, format string, opts *Options) (*graph.Model, *Report, error) {
	out, r, _, err := export(m, format, opts)
	return out, r, err
}

// export is Export that also returns, for each float output of m, the
// check's logit step (foldedStep), read from the folded model before the
// format's rewrite.
func export(m *graph.Model, format string, opts *Options) (*graph.Model, *Report, map[string]stepInfo, error) {
	if opts == nil {
		opts = &Options{}
	}
	if err := checkFormat(format); err != nil {
		return nil, nil, nil, err
	}
	r := &exportRun{format: format, opts: opts, src: m}
	u := &passes.Unit{Model: m}
	if err := r.pipeline().Run(u, &opts.Dump); err != nil {
		return nil, nil, nil, err
	}
	out, rep := u.Model, r.rep
	rep.Size, rep.SourceSize = int64(proto.Size(out.Proto)), int64(proto.Size(m.Proto))
	for _, t := range out.Graph().Initializer {
		switch graph.TensorType(t) {
		case graph.Int8, graph.Uint8, graph.Int4, graph.Uint4:
			if graph.NumElements(t.Dims) > 1 {
				rep.IntWeights++
			}
			rep.IntBytes += int64(len(t.RawData))
		case graph.Float:
			rep.FloatBytes += int64(len(t.RawData)) + 4*int64(len(t.FloatData))
		}
	}
	return out, rep, r.steps, nil
}

// Pipeline is the export pipeline of format (one of Formats): what
// qatc export --passes lists and --dump-after names.
func Pipeline(format string) *passes.Pipeline {
	return (&exportRun{format: format, opts: &Options{}}).pipeline()
}

// exportRun is one export: its passes share it.
type exportRun struct {
	format string
	opts   *Options
	src    *graph.Model // the QAT model, left unchanged
	res    *fold.Result
	rep    *Report
	steps  map[string]stepInfo
}

// formatDocs say what each format's pass does.
var formatDocs = map[string]string{
	"qdq":         "store the weights of 4 bits or fewer as INT4 initializers, raising the opset to 21 where nothing changes meaning (fold.Int4)",
	"qoperator":   "rewrite the matrix products with quantized operands into MatMulIntegerToFloat with static activation scales (fold.QOperator)",
	"dynamic":     "rewrite the weight products into DynamicQuantizeLinear + MatMulInteger, activations quantized per batch (fold.Dynamic)",
	"matmulnbits": "rewrite the weight products into com.microsoft.MatMulNBits with packed weights and per-block scales (fold.MatMulNBits)",
}

func (r *exportRun) pipeline() *passes.Pipeline {
	intCache := "only for the incremental graphs' integer cache"
	if r.opts.afterFold != nil {
		intCache = ""
	}
	return &passes.Pipeline{Name: "export", Given: []string{propQAT}, Passes: []*passes.Pass{
		{Name: "fold", Doc: "fold the clips' arithmetic into constant scales and the weights into integers (the qdq form), on a copy sharing the QAT model's bytes (passes/fold)",
			Requires: []string{propQAT}, Produces: []string{propFolded}, Removes: []string{propQAT}, Run: r.fold},
		{Name: "int-cache", Doc: "keep the key/value cache in integers: dequantize each past input, concatenate integers (passes/incremental)",
			Requires: []string{propFolded}, Off: intCache, Run: func(u *passes.Unit) error { return r.opts.afterFold(u.Model) }},
		{Name: r.format, Doc: formatDocs[r.format], Requires: []string{propFolded}, Produces: []string{propFormat}, Run: r.convert},
		{Name: "guard-blocked", Doc: "dequantize blocked int8 weights in a [blocks, block] view, so that onnxruntime does not fuse them into MatMulIntegerToFloat (fold.GuardBlocked)",
			Requires: []string{propFormat}, Run: r.guard},
		{Name: "check-folded", Doc: "record the source and check that no quantized weight is left in float",
			Requires: []string{propFormat}, Produces: []string{propExported}, Run: r.checkFolded},
	}}
}

// The export pipeline's properties of the model.
const (
	propQAT      = "qat"
	propFolded   = "folded"
	propFormat   = "format"
	propExported = "exported"
)

func (r *exportRun) fold(u *passes.Unit) error {
	out := r.src.CloneShared()
	res, err := fold.Fold(out)
	if err != nil {
		return err
	}
	r.res, r.steps = res, map[string]stepInfo{}
	for _, o := range out.Graph().Output {
		if elemType(o) == graph.Float {
			s, rule, err := foldedStep(out, o.Name)
			r.steps[o.Name] = stepInfo{s, rule, err}
		}
	}
	u.Model = out
	r.rep = &Report{Format: r.format, Quantizers: res.Quantizers}
	return nil
}

func (r *exportRun) convert(u *passes.Unit) error {
	out, res, rep := u.Model, r.res, r.rep
	var err error
	switch r.format {
	case "qdq":
		err = int4(out, res, rep)
	case "qoperator":
		err = fold.QOperator(out, res)
	case "dynamic":
		err = fold.Dynamic(out, res)
	case "matmulnbits":
		var nr *fold.NBitsResult
		if nr, err = fold.MatMulNBits(out, res, nbits); err == nil {
			rep.NBitsWeights = len(nr.Converted)
			for _, k := range nr.Kept {
				rep.Notes = append(rep.Notes, "kept in qdq form: "+k)
			}
			if rep.NBitsWeights == 0 {
				err = fmt.Errorf("no weight product can be expressed as MatMulNBits (%s): export with --format qdq", strings.Join(nr.Kept, "; "))
			} else {
				// A blocked embedding table, now read only by its
				// DequantizeLinear, is stored INT4 as in qdq.
				err = int4(out, res, rep)
			}
		}
	}
	if err != nil {
		return err
	}
	rep.FloatProducts = res.Float
	for _, p := range res.Float {
		rep.Notes = append(rep.Notes, p.String())
	}
	return nil
}

func (r *exportRun) guard(u *passes.Unit) error {
	guarded, err := fold.GuardBlocked(u.Model)
	if err != nil {
		return err
	}
	if len(guarded) > 0 {
		r.rep.Notes = append(r.rep.Notes, fmt.Sprintf("%d blocked int8 weights are dequantized in a [blocks, block] view, so that onnxruntime does not fuse them into MatMulIntegerToFloat (which rejects per-block scales)", len(guarded)))
	}
	return nil
}

func (r *exportRun) checkFolded(u *passes.Unit) error {
	if r.opts.Source != "" {
		u.Model.SetMetadata(SourceKey, r.opts.Source)
	}
	return checkFolded(u.Model, r.res)
}

// int4 stores the remaining weights of 4 bits or fewer as INT4 where the
// model's opset can be raised to fold.OpsetInt4, and notes why not
// otherwise.
func int4(m *graph.Model, res *fold.Result, r *Report) error {
	ir, err := fold.Int4(m, res)
	if err != nil {
		return err
	}
	r.Int4Weights = len(ir.Converted)
	if ir.Unraised != nil {
		r.Notes = append(r.Notes, fmt.Sprintf("4-bit weights stored as int8 in [-8, 7], not INT4 (which needs opset %d): %v", fold.OpsetInt4, ir.Unraised))
	}
	return nil
}

// checkFormat refuses a format Export does not write.
func checkFormat(format string) error {
	if !known(format) {
		return fmt.Errorf("unknown export format %q: use %s (the LightSeq file is written by export/lightseq)", format, strings.Join(Formats, ", "))
	}
	return nil
}

func known(format string) bool {
	for _, f := range Formats {
		if f == format {
			return true
		}
	}
	return false
}

// checkFolded makes sure nothing float remains where an integer tensor is
// meant: no quantized weight is still read as float by a QuantizeLinear,
// and every folded weight is stored as integers.
func checkFolded(m *graph.Model, res *fold.Result) error {
	for _, n := range m.Graph().Node {
		if n.OpType == "QuantizeLinear" && m.Initializer(n.Input[0]) != nil {
			return fmt.Errorf("internal error: %s still quantizes the float initializer %q", graph.NodeName(n), n.Input[0])
		}
	}
	for _, f := range res.Quantizers {
		if f.Int == "" {
			continue
		}
		t := m.Initializer(f.Int)
		if t == nil {
			// The integers were only read through a Transpose that is now
			// stored transposed under another name; nothing is float.
			continue
		}
		if dt := graph.TensorType(t); dt != graph.Int8 && dt != graph.Uint8 && dt != graph.Int4 && dt != graph.Uint4 {
			return fmt.Errorf("internal error: weight %q is stored as %s", f.Tensor, dt)
		}
	}
	return nil
}

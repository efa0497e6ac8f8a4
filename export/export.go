package export

import (
	"fmt"
	"strings"

	"github.com/qatc/qatc/graph"
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
	out := m.CloneShared()
	res, err := fold.Fold(out)
	if err != nil {
		return nil, nil, nil, err
	}
	steps := map[string]stepInfo{}
	for _, o := range out.Graph().Output {
		if elemType(o) == graph.Float {
			s, rule, err := foldedStep(out, o.Name)
			steps[o.Name] = stepInfo{s, rule, err}
		}
	}
	if opts.afterFold != nil {
		if err := opts.afterFold(out); err != nil {
			return nil, nil, nil, err
		}
	}
	r := &Report{Format: format, Quantizers: res.Quantizers}
	switch format {
	case "qdq":
		err = int4(out, res, r)
	case "qoperator":
		err = fold.QOperator(out, res)
	case "dynamic":
		err = fold.Dynamic(out, res)
	case "matmulnbits":
		var nr *fold.NBitsResult
		if nr, err = fold.MatMulNBits(out, res, nbits); err == nil {
			r.NBitsWeights = len(nr.Converted)
			for _, k := range nr.Kept {
				r.Notes = append(r.Notes, "kept in qdq form: "+k)
			}
			if r.NBitsWeights == 0 {
				err = fmt.Errorf("no weight product can be expressed as MatMulNBits (%s): export with --format qdq", strings.Join(nr.Kept, "; "))
			} else {
				// A blocked embedding table, now read only by its
				// DequantizeLinear, is stored INT4 as in qdq.
				err = int4(out, res, r)
			}
		}
	}
	if err != nil {
		return nil, nil, nil, err
	}
	r.FloatProducts = res.Float
	for _, p := range res.Float {
		r.Notes = append(r.Notes, p.String())
	}
	guarded, err := fold.GuardBlocked(out)
	if err != nil {
		return nil, nil, nil, err
	}
	if len(guarded) > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("%d blocked int8 weights are dequantized in a [blocks, block] view, so that onnxruntime does not fuse them into MatMulIntegerToFloat (which rejects per-block scales)", len(guarded)))
	}
	if opts.Source != "" {
		out.SetMetadata(SourceKey, opts.Source)
	}
	if err := checkFolded(out, res); err != nil {
		return nil, nil, nil, err
	}
	r.Size, r.SourceSize = int64(proto.Size(out.Proto)), int64(proto.Size(m.Proto))
	for _, t := range out.Graph().Initializer {
		switch graph.TensorType(t) {
		case graph.Int8, graph.Uint8, graph.Int4, graph.Uint4:
			if graph.NumElements(t.Dims) > 1 {
				r.IntWeights++
			}
			r.IntBytes += int64(len(t.RawData))
		case graph.Float:
			r.FloatBytes += int64(len(t.RawData)) + 4*int64(len(t.FloatData))
		}
	}
	return out, r, steps, nil
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

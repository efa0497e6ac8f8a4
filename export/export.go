package export

import (
	"fmt"
	"strings"

	"github.com/advancedclimatesystems/gonnx/onnx"
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/passes/fold"
	"google.golang.org/protobuf/proto"
)

// Formats are the int8 ONNX formats Export writes.
var Formats = []string{"qdq", "qoperator", "dynamic"}

// SourceKey is the metadata key recording the QAT model an export was made
// from (Options.Source).
const SourceKey = "qatc.source"

// Options configure Export.
type Options struct {
	// Source names the QAT model (its path) in the exported model's
	// metadata; empty leaves it out.
	Source string
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
}

// Export converts a QAT model into the named deployment format and returns
// the exported model as read back from its serialized bytes (the exact
// file a caller then saves), leaving m unchanged:
//
//   - qdq: int8 weights + DequantizeLinear, activation Q/DQ pairs with
//     constant scales (fold.Fold);
//   - qoperator: qdq, then integer MatMuls with static activation scales
//     (fold.QOperator);
//   - dynamic: qdq weights, activations quantized per batch
//     (fold.Dynamic).
//
// The metadata records the format (fold.FormatKey) and keeps the source's
// quantization record.
func Export(m *graph.Model, format string, opts *Options) (*graph.Model, *Report, error) {
	if opts == nil {
		opts = &Options{}
	}
	if !known(format) {
		return nil, nil, fmt.Errorf("unknown export format %q: use %s", format, strings.Join(Formats, ", "))
	}
	src, err := m.Marshal()
	if err != nil {
		return nil, nil, fmt.Errorf("encode the QAT model: %w", err)
	}
	out := graph.FromProto(proto.Clone(m.Proto).(*onnx.ModelProto), m.Dir)
	res, err := fold.Fold(out)
	if err != nil {
		return nil, nil, err
	}
	switch format {
	case "qoperator":
		err = fold.QOperator(out, res)
	case "dynamic":
		err = fold.Dynamic(out, res)
	}
	if err != nil {
		return nil, nil, err
	}
	if opts.Source != "" {
		out.SetMetadata(SourceKey, opts.Source)
	}
	if err := checkFolded(out, res); err != nil {
		return nil, nil, err
	}
	data, err := out.Marshal()
	if err != nil {
		return nil, nil, fmt.Errorf("encode the %s model: %w", format, err)
	}
	back, err := graph.Parse(data, "")
	if err != nil {
		return nil, nil, fmt.Errorf("read back the %s model: %w", format, err)
	}
	r := &Report{Format: format, Quantizers: res.Quantizers, Size: int64(len(data)), SourceSize: int64(len(src))}
	for _, t := range back.Graph().Initializer {
		switch graph.TensorType(t) {
		case graph.Int8, graph.Uint8:
			if graph.NumElements(t.Dims) > 1 {
				r.IntWeights++
			}
			r.IntBytes += int64(len(t.RawData))
		case graph.Float:
			r.FloatBytes += int64(len(t.RawData)) + 4*int64(len(t.FloatData))
		}
	}
	return back, r, nil
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
		if dt := graph.TensorType(t); dt != graph.Int8 && dt != graph.Uint8 {
			return fmt.Errorf("internal error: weight %q is stored as %s", f.Tensor, dt)
		}
	}
	return nil
}

package quantize

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/qatc/qatc/graph"
)

// MetadataKey is the metadata_props key of the quantization record.
const MetadataKey = "qatc.quantization"

// RecordVersion is the version of the record's JSON layout.
const RecordVersion = 1

// ErrNoRecord is returned (wrapped) by ReadRecord for a model without a
// quantization record.
var ErrNoRecord = errors.New("model has no " + MetadataKey + " record: run qatc insert on the fp32 model first")

// A Quantizer is one Q/DQ pair in the graph.
type Quantizer struct {
	// Tensor is the quantized value: an initializer for weights, else an
	// activation.
	Tensor string `json:"tensor"`
	// Kind is weight, act, relu or softmax.
	Kind string `json:"kind"`
	Bits int    `json:"bits"`
	// Axis is the tensor's quantization axis: the output channel for
	// per-channel weights, the blocked input axis for block granularity;
	// nil for one clip per tensor.
	Axis *int `json:"axis,omitempty"`
	// BlockSize is the block length along Axis (0 unless blocked).
	BlockSize int `json:"block_size,omitempty"`
	// Clip is the clip initializer's name ("" for softmax). Tied copies of
	// one weight share it.
	Clip string `json:"clip,omitempty"`
	// TiedTo names the weight this one is an exact (or, with Transposed,
	// a transposed) copy of; the two share Clip.
	TiedTo     string `json:"tied_to,omitempty"`
	Transposed bool   `json:"transposed,omitempty"`
	// Quantize and Dequantize are the node names; Output is the
	// dequantized value the consumers read.
	Quantize   string `json:"quantize,omitempty"`
	Dequantize string `json:"dequantize,omitempty"`
	Output     string `json:"output,omitempty"`
	// Consumers are the nodes that read Output (Plan: that will read it).
	Consumers []string `json:"consumers,omitempty"`
}

// Signed reports whether the kind's grid is signed.
func (q *Quantizer) Signed() bool { return q.Kind == KindWeight || q.Kind == KindAct }

// QRange returns the integer range of the quantizer's grid.
func (q *Quantizer) QRange() (qmin, qmax int) { return qrange(q.Kind, q.Bits) }

func qrange(kind string, bits int) (int, int) {
	if kind == KindWeight || kind == KindAct {
		return -(1 << (bits - 1)), 1<<(bits-1) - 1
	}
	return 0, 1<<bits - 1
}

// Calibration records how activation clips were set from data.
type Calibration struct {
	Method     string  `json:"method"`
	Percentile float64 `json:"percentile,omitempty"`
	Batches    int     `json:"batches,omitempty"`
}

// Record is the qatc.quantization metadata: the parameters of the insert
// and one entry per quantizer, in graph order.
type Record struct {
	Version     int          `json:"version"`
	Params      Params       `json:"params"`
	Calibration *Calibration `json:"calibration,omitempty"`
	Quantizers  []Quantizer  `json:"quantizers"`
	// Unquantized lists the constant operands of matrix products that
	// stay float because the placement cannot quantize them, and why.
	Unquantized []Unquantized `json:"unquantized,omitempty"`
}

// Unquantized is a constant operand of a MatMul, Gemm or embedding Gather
// (or a whole product of another operator, Input −1) that the placement
// left in float: a weight that is not float32, or one computed by ops it
// does not follow.
type Unquantized struct {
	Node   string `json:"node"`
	Input  int    `json:"input"`
	Tensor string `json:"tensor,omitempty"`
	Reason string `json:"reason"`
}

// Lookup returns the record's quantizer on tensor, or nil.
func (r *Record) Lookup(tensor string) *Quantizer {
	for i := range r.Quantizers {
		if r.Quantizers[i].Tensor == tensor {
			return &r.Quantizers[i]
		}
	}
	return nil
}

// ReadRecord decodes the model's qatc.quantization record; a model without
// one gives an error wrapping ErrNoRecord.
func ReadRecord(m *graph.Model) (*Record, error) {
	s, ok := m.Metadata(MetadataKey)
	if !ok {
		return nil, ErrNoRecord
	}
	r := &Record{}
	if err := json.Unmarshal([]byte(s), r); err != nil {
		return nil, fmt.Errorf("metadata %s is not a valid record: %v", MetadataKey, err)
	}
	if r.Version != RecordVersion {
		return nil, fmt.Errorf("metadata %s has version %d; this qatc reads version %d", MetadataKey, r.Version, RecordVersion)
	}
	if r.Params.Recipe != nil {
		if err := r.Params.Recipe.compile(); err != nil {
			return nil, fmt.Errorf("metadata %s: %v", MetadataKey, err)
		}
	}
	return r, nil
}

// WriteRecord stores r as the model's qatc.quantization metadata.
func WriteRecord(m *graph.Model, r *Record) error {
	r.Version = RecordVersion
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode %s: %v", MetadataKey, err)
	}
	m.SetMetadata(MetadataKey, string(b))
	return nil
}

// WritePlan writes the record's quantizers as a table, as insert's dry
// run shows them: tensor, kind, bits, axis and consumers.
func (r *Record) WritePlan(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "tensor\tkind\tbits\taxis\tconsumers")
	for _, q := range r.Quantizers {
		axis := "-"
		if q.Axis != nil {
			axis = fmt.Sprint(*q.Axis)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", q.Tensor, q.Kind, q.Bits, axis, strings.Join(q.Consumers, " "))
	}
	return tw.Flush()
}

// WriteUnquantized says which constant operands of matrix products stay
// float, and why (nothing when none does).
func (r *Record) WriteUnquantized(w io.Writer) error {
	if len(r.Unquantized) == 0 {
		return nil
	}
	fmt.Fprintf(w, "%d matrix-product operands stay float:\n", len(r.Unquantized))
	for _, u := range r.Unquantized {
		where := fmt.Sprintf("%s input %d", u.Node, u.Input)
		if u.Input < 0 {
			where = u.Node
		}
		if _, err := fmt.Fprintf(w, "  %s: %s\n", where, u.Reason); err != nil {
			return err
		}
	}
	return nil
}

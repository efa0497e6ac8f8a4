package inspect

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/fold"
	"github.com/qatc/qatc/passes/quantize"
	"google.golang.org/protobuf/proto"
)

// A Row is one line of inspect's quantizer table.
type Row struct {
	Tensor      string `json:"tensor"`
	Kind        string `json:"kind"`
	Bits        int    `json:"bits"`
	Granularity string `json:"granularity"`
	Axis        *int   `json:"axis,omitempty"`
	BlockSize   int    `json:"block_size,omitempty"`
	Clip        *Span  `json:"clip"`  // nil for softmax's fixed scale, or where unknown
	Scale       *Span  `json:"scale"` // nil where unknown (dynamic activations)
	// Clipped and SQNR are known for the weights of a QAT model only; SQNR
	// is also null when quantization is exact (infinite).
	Clipped *float64 `json:"clipped_share"`
	SQNR    *float64 `json:"sqnr_db"`
	// Files lists, for a model directory, the files that apply this
	// quantizer (one clip across them); Tensors names its tensor in the
	// files that call it otherwise than Tensor does.
	Files   []string          `json:"files,omitempty"`
	Tensors map[string]string `json:"tensors,omitempty"`

	// key identifies the quantizer across a directory's files: its
	// QuantizeLinear node, which qatc names alike in every file.
	key string
}

// A Span summarises a scalar or a vector of clips or scales.
type Span struct {
	Min   float64 `json:"min"`
	Max   float64 `json:"max"`
	Count int     `json:"count"`
}

func spanOf(v []float32) *Span {
	if len(v) == 0 {
		return nil
	}
	s := &Span{Min: math.Inf(1), Max: math.Inf(-1), Count: len(v)}
	for _, x := range v {
		s.Min = math.Min(s.Min, float64(x))
		s.Max = math.Max(s.Max, float64(x))
	}
	return s
}

func (s *Span) String() string {
	switch {
	case s == nil:
		return "-"
	case s.Min == s.Max:
		return fmt.Sprintf("%.6g", s.Min)
	}
	return fmt.Sprintf("%.6g..%.6g", s.Min, s.Max)
}

// exported reports whether m is a deployment model: written by qatc
// export, or by another tool that stores integer weights (a QAT model's
// weights are float).
func exported(m *graph.Model) bool {
	if _, ok := m.Metadata(fold.FormatKey); ok {
		return true
	}
	return len(fold.Stored(m).Names) > 0
}

// granularity names a quantizer's clip layout.
func granularity(axis *int, blockSize int) string {
	switch {
	case blockSize > 0:
		return quantize.Block
	case axis != nil:
		return quantize.Channel
	}
	return quantize.Tensor
}

// Quantizers lists m's quantizers for inspect: nil for a model without
// any. A QAT model's weights are folded (on a copy) to measure, from the
// very integers an export stores, the share of values the quantizer clips
// and the SQNR of the fake-quantized weight; an exported model has no float
// weights, so both are unknown there, and so they are for a graph that
// cannot be folded (a training graph, whose clips are inputs): the note
// then says why.
func Quantizers(m *graph.Model) (rows []Row, note string, err error) {
	if exported(m) {
		rows, err := exportedRows(m)
		if len(rows) > 0 {
			note = "an exported model keeps no float weights, so the clipped share and SQNR of its weights are not known"
		}
		return rows, note, err
	}
	qs, err := quantize.Find(m)
	if err != nil || len(qs) == 0 {
		return nil, "", err
	}
	fv, err := foldCopy(m)
	if err != nil {
		fv = nil
		note = fmt.Sprintf("the weights' clipped share and SQNR are not measured: the model does not fold as an export would (%v)", err)
	}
	rows = make([]Row, len(qs))
	for i, q := range qs {
		r := Row{Tensor: q.Tensor, Kind: q.Kind, Bits: q.Bits, Granularity: granularity(q.Axis, q.BlockSize), Axis: q.Axis, BlockSize: q.BlockSize, key: q.Quantize}
		_, qmax := q.QRange()
		switch {
		case q.Kind == quantize.KindSoftmax:
			r.Scale = spanOf([]float32{float32(1 / math.Ldexp(1, q.Bits))})
		case m.Initializer(q.Clip) != nil:
			c, err := graph.Floats(m.Initializer(q.Clip))
			if err != nil {
				return nil, "", fmt.Errorf("clip %q: %v", q.Clip, err)
			}
			// The graph's own float32 arithmetic: Max(clip, tiny) / qmax.
			sc := make([]float32, len(c))
			for i, x := range c {
				sc[i] = max(x, float32(quantize.Tiny)) / float32(qmax)
			}
			r.Clip, r.Scale = spanOf(c), spanOf(sc)
		}
		if f := fv.weight(q.Tensor); f != nil {
			st, err := fv.weightStats(m, f)
			if err != nil {
				return nil, "", err
			}
			r.Clipped = &st.clipped
			if !math.IsInf(st.sqnr, 0) {
				r.SQNR = &st.sqnr
			}
		}
		rows[i] = r
	}
	return rows, note, nil
}

// exportedRows lists an exported model's quantizers from its record, with
// the scales the graph stores.
func exportedRows(m *graph.Model) ([]Row, error) {
	rec, err := quantize.ReadRecord(m)
	if err != nil && !errors.Is(err, quantize.ErrNoRecord) {
		return nil, err
	}
	stored := fold.Stored(m)
	if rec == nil {
		// Not written by qatc: list the stored integer weights as the
		// graph describes them.
		rec = &quantize.Record{}
		for _, n := range stored.Names {
			rec.Quantizers = append(rec.Quantizers, stored.ByName[n].Quantizer())
		}
	}
	var rows []Row
	for _, q := range rec.Quantizers {
		r := Row{Tensor: q.Tensor, Kind: q.Kind, Bits: q.Bits, Granularity: granularity(q.Axis, q.BlockSize), Axis: q.Axis, BlockSize: q.BlockSize, key: q.Quantize}
		if r.key == "" {
			r.key = q.Tensor
		}
		var scale []float32
		if q.Kind == quantize.KindWeight || stored.ByName[q.Tensor] != nil {
			if st := stored.ByName[q.Tensor]; st != nil {
				scale = st.Scale
			} else if st := stored.ForTensor(q.Tensor); st != nil {
				scale = st.Scale
			}
		} else {
			scale = fold.ActivationScale(m, q.Tensor)
		}
		r.Scale = spanOf(scale)
		if q.Kind != quantize.KindSoftmax && len(scale) > 0 {
			_, qmax := q.QRange()
			c := make([]float32, len(scale))
			for i, s := range scale {
				c[i] = s * float32(qmax)
			}
			r.Clip = spanOf(c)
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// writeRows prints the quantizer table and its note.
func writeRows(w io.Writer, rows []Row, note string) error {
	fmt.Fprintf(w, "\n%d quantizers\n", len(rows))
	files := len(rows) > 0 && len(rows[0].Files) > 0
	table := make([][]string, len(rows))
	for i, r := range rows {
		clipped, sqnr := "-", "-"
		if r.Clipped != nil {
			clipped = fmt.Sprintf("%.2f%%", 100**r.Clipped)
			sqnr = "inf" // the grid holds every value exactly
		}
		if r.SQNR != nil {
			sqnr = fmt.Sprintf("%.2f", *r.SQNR)
		}
		table[i] = []string{r.Tensor, r.Kind, fmt.Sprint(r.Bits), r.Granularity, r.Clip.String(), r.Scale.String(), clipped, sqnr}
		if files {
			table[i] = append(table[i], strings.Join(r.Files, ", "))
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	head := "tensor\tkind\tbits\tgranularity\tclip\tscale\tclipped\tsqnr_db"
	if files {
		head += "\tfiles"
	}
	fmt.Fprintln(tw, head)
	for _, r := range table {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if note != "" {
		_, err := fmt.Fprintf(w, "note: %s\n", note)
		return err
	}
	return nil
}

// foldView is a folded copy of a QAT model: the integers and constant
// scales an export would store.
type foldView struct {
	m      *graph.Model
	folded map[string]*fold.Folded // by quantized tensor
}

// foldCopy folds a copy of the QAT model m with fold.Fold.
func foldCopy(m *graph.Model) (*foldView, error) {
	c := graph.FromProto(proto.Clone(m.Proto).(*onnx.ModelProto), m.Dir)
	res, err := fold.Fold(c)
	if err != nil {
		return nil, err
	}
	fv := &foldView{m: c, folded: map[string]*fold.Folded{}}
	for i := range res.Quantizers {
		f := &res.Quantizers[i]
		fv.folded[f.Tensor] = f
	}
	return fv, nil
}

// weight returns the folded weight quantizer on tensor, or nil (also for
// a nil view).
func (fv *foldView) weight(tensor string) *fold.Folded {
	if fv == nil {
		return nil
	}
	if f := fv.folded[tensor]; f != nil && f.Int != "" {
		return f
	}
	return nil
}

// ints returns the integers and scales folded for f, in the stored layout.
func (fv *foldView) ints(f *fold.Folded) (v []int64, dims []int64, scale []float32, err error) {
	t := fv.m.Initializer(f.Int)
	if t == nil {
		return nil, nil, nil, fmt.Errorf("internal error: folding kept no integer initializer for weight %q", f.Tensor)
	}
	if v, err = graph.Int64s(t); err != nil {
		return nil, nil, nil, err
	}
	if scale, err = graph.Floats(fv.m.Initializer(f.Scale)); err != nil {
		return nil, nil, nil, err
	}
	return v, t.Dims, scale, nil
}

// wstats are a weight quantizer's measures against the float weight.
type wstats struct {
	clipped float64 // share of values whose integer saturated
	sqnr    float64 // dB
}

// weightStats compares the folded integers of f with the float weight of
// the QAT model m: the fake-quantized weight is int·scale (what
// DequantizeLinear computes), and a value is clipped when w/scale rounds
// outside the integer range (QuantizeLinear's float32 division).
func (fv *foldView) weightStats(m *graph.Model, f *fold.Folded) (wstats, error) {
	iv, dims, scale, err := fv.ints(f)
	if err != nil {
		return wstats{}, err
	}
	t := m.Initializer(f.Tensor)
	if t == nil {
		return wstats{}, fmt.Errorf("weight %q: no float initializer", f.Tensor)
	}
	w, err := graph.Floats(t)
	if err != nil {
		return wstats{}, fmt.Errorf("weight %q: %v", f.Tensor, err)
	}
	if f.Perm != nil {
		w, _ = graph.Transpose(w, t.Dims, f.Perm)
	}
	idx, err := fold.ScaleIndex(dims, len(scale), f.Axis, f.BlockSize)
	if err != nil {
		return wstats{}, fmt.Errorf("weight %q: %v", f.Tensor, err)
	}
	qmin, qmax := qrange(f.Kind, f.Bits)
	var sig, noise float64
	clipped := 0
	for i, x := range w {
		s := scale[idx(i)]
		y := float64(float32(iv[i]) * s)
		sig += float64(x) * float64(x)
		noise += (float64(x) - y) * (float64(x) - y)
		if r := math.RoundToEven(float64(x / s)); r < float64(qmin) || r > float64(qmax) {
			clipped++
		}
	}
	st := wstats{clipped: float64(clipped) / float64(len(w)), sqnr: math.Inf(1)}
	if noise > 0 {
		st.sqnr = 10 * math.Log10(sig/noise)
	}
	return st, nil
}

// qrange is the integer range of a kind at bits, as passes/quantize
// defines it.
func qrange(kind string, bits int) (int, int) {
	q := quantize.Quantizer{Kind: kind, Bits: bits}
	return q.QRange()
}

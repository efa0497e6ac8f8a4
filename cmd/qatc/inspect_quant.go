package main

import (
	"bytes"
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"path/filepath"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/fold"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/safeio"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"google.golang.org/protobuf/proto"
)

// quantRow is one line of inspect's quantizer table.
type quantRow struct {
	Tensor      string `json:"tensor"`
	Kind        string `json:"kind"`
	Bits        int    `json:"bits"`
	Granularity string `json:"granularity"`
	Axis        *int   `json:"axis,omitempty"`
	BlockSize   int    `json:"block_size,omitempty"`
	Clip        *span  `json:"clip"`  // nil for softmax's fixed scale, or where unknown
	Scale       *span  `json:"scale"` // nil where unknown (dynamic activations)
	// Clipped and SQNR are known for the weights of a QAT model only; SQNR
	// is also null when quantization is exact (infinite).
	Clipped *float64 `json:"clipped_share"`
	SQNR    *float64 `json:"sqnr_db"`
}

// span summarises a scalar or a vector of clips or scales.
type span struct {
	Min   float64 `json:"min"`
	Max   float64 `json:"max"`
	Count int     `json:"count"`
}

func spanOf(v []float32) *span {
	if len(v) == 0 {
		return nil
	}
	s := &span{Min: math.Inf(1), Max: math.Inf(-1), Count: len(v)}
	for _, x := range v {
		s.Min = math.Min(s.Min, float64(x))
		s.Max = math.Max(s.Max, float64(x))
	}
	return s
}

func (s *span) String() string {
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

// quantizerRows lists m's quantizers for inspect: nil for a model without
// any. A QAT model's weights are folded (on a copy) to measure, from the
// very integers an export stores, the share of values the quantizer clips
// and the SQNR of the fake-quantized weight; an exported model has no float
// weights, so both are unknown there, and so they are for a graph that
// cannot be folded (a training graph, whose clips are inputs): the note
// then says why.
func quantizerRows(m *graph.Model) (rows []quantRow, note string, err error) {
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
	rows = make([]quantRow, len(qs))
	for i, q := range qs {
		r := quantRow{Tensor: q.Tensor, Kind: q.Kind, Bits: q.Bits, Granularity: granularity(q.Axis, q.BlockSize), Axis: q.Axis, BlockSize: q.BlockSize}
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
func exportedRows(m *graph.Model) ([]quantRow, error) {
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
	var rows []quantRow
	for _, q := range rec.Quantizers {
		r := quantRow{Tensor: q.Tensor, Kind: q.Kind, Bits: q.Bits, Granularity: granularity(q.Axis, q.BlockSize), Axis: q.Axis, BlockSize: q.BlockSize}
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

func printQuantRows(w io.Writer, rows []quantRow, note string) {
	fmt.Fprintf(w, "\n%d quantizers\n", len(rows))
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
	}
	writeTable(w, []string{"tensor", "kind", "bits", "granularity", "clip", "scale", "clipped", "sqnr_db"}, table)
	if note != "" {
		fmt.Fprintf(w, "note: %s\n", note)
	}
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

// scaleIndex maps each element of a tensor with dims to its scale, as
// DequantizeLinear does: one scale, one per index of axis, or one per
// block of blockSize along axis (the scale then has the tensor's rank).
func scaleIndex(dims []int64, nScale int, axis, blockSize int64) (func(int) int, error) {
	if nScale == 1 && blockSize == 0 {
		return func(int) int { return 0 }, nil
	}
	if axis < 0 {
		axis += int64(len(dims))
	}
	if axis < 0 || axis >= int64(len(dims)) {
		return nil, fmt.Errorf("scale axis %d out of range for shape %v", axis, dims)
	}
	inner, c := graph.NumElements(dims[axis+1:]), dims[axis]
	if blockSize == 0 {
		if int64(nScale) != c {
			return nil, fmt.Errorf("%d scales for %d channels along axis %d of %v", nScale, c, axis, dims)
		}
		return func(i int) int { return int(int64(i) / inner % c) }, nil
	}
	nb := (c + blockSize - 1) / blockSize
	if int64(nScale) != graph.NumElements(dims)/c*nb {
		return nil, fmt.Errorf("%d scales for blocks of %d along axis %d of %v", nScale, blockSize, axis, dims)
	}
	return func(i int) int {
		j := int64(i)
		return int((j/(inner*c)*nb+j/inner%c/blockSize)*inner + j%inner)
	}, nil
}

// tensorView is what inspect --tensor shows of one quantized weight.
type tensorView struct {
	Tensor string `json:"tensor"` // the weight as the QAT graph names it
	Stored string `json:"stored"` // the integer initializer (in the export, or as an export would write it)
	// Source is "qat" (integers folded on the fly from the float weight)
	// or "export" (the stored integers).
	Source      string   `json:"source"`
	Shape       []int64  `json:"shape"`
	DType       string   `json:"dtype"`
	StorageType string   `json:"storage_type"`
	QMin        int      `json:"qmin"`
	QMax        int      `json:"qmax"`
	Kind        string   `json:"kind"`
	Bits        int      `json:"bits"`
	Granularity string   `json:"granularity"`
	Axis        *int     `json:"axis,omitempty"`
	BlockSize   int      `json:"block_size,omitempty"`
	Clip        *span    `json:"clip"`
	Scale       *span    `json:"scale"`
	OutputMin   float64  `json:"output_min"`
	OutputMax   float64  `json:"output_max"`
	Ints        intStats `json:"integers"`
	Plot        string   `json:"plot,omitempty"`

	values []int64
	floats []float32 // the float weight (QAT models only)
	scales []float32
}

// intStats summarises the integers.
type intStats struct {
	Count     int64   `json:"count"`
	Min       int64   `json:"min"`
	Max       int64   `json:"max"`
	Mean      float64 `json:"mean"`
	Std       float64 `json:"std"`
	Zeros     int64   `json:"zeros"`
	Saturated int64   `json:"saturated"` // at qmin or qmax
	// Histogram counts each integer from qmin to qmax.
	Histogram []int64 `json:"histogram"`
}

// tensorInts finds the integers of the quantized weight name in m: for a
// QAT model, those fold.Fold computes from the float weight (exactly what
// an export stores); for an exported model, the stored initializer. name
// is the weight's name or its integer initializer's.
func tensorInts(m *graph.Model, path, name string) (*tensorView, error) {
	read := qatInts
	if exported(m) {
		read = exportedInts
	}
	v, err := read(m, path, name)
	if err != nil {
		return nil, err
	}
	v.fill()
	return v, nil
}

// exportedInts reads the stored integers of name from an exported model.
func exportedInts(m *graph.Model, path, name string) (*tensorView, error) {
	v := &tensorView{Source: "export"}
	var q *quantize.Quantizer
	rec, err := quantize.ReadRecord(m)
	if err != nil && !errors.Is(err, quantize.ErrNoRecord) {
		return nil, err
	}
	s := fold.Stored(m)
	st := s.ByName[name]
	if st == nil && rec != nil {
		if q = rec.Lookup(name); q != nil {
			st = s.ForTensor(name)
		}
	}
	if st == nil && q != nil && q.Kind != quantize.KindWeight {
		return nil, activationOnly(path, q)
	}
	if st == nil {
		return nil, notQuantized(m, path, name, recordWeights(rec, s))
	}
	v.Tensor, v.Stored = name, st.Name
	if rec != nil && q == nil {
		for i := range rec.Quantizers {
			if c := &rec.Quantizers[i]; c.Kind == quantize.KindWeight && s.ForTensor(c.Tensor) == st {
				q = c
			}
		}
	}
	if v.values, err = st.Ints(); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	v.Shape, v.StorageType, v.scales = st.Dims, st.Storage, st.Scale
	if q == nil {
		sq := st.Quantizer()
		q = &sq
		q.Tensor = v.Tensor
	}
	v.Tensor, v.Kind, v.Bits, v.Axis, v.BlockSize = q.Tensor, q.Kind, q.Bits, q.Axis, q.BlockSize
	if len(v.scales) == 0 {
		return nil, fmt.Errorf("%s: the scale of %q (read by %s) is not a constant float tensor", path, v.Stored, graph.NodeName(st.Node))
	}
	return v, nil
}

// qatInts folds a copy of the QAT model m and reads the integers of name.
func qatInts(m *graph.Model, path, name string) (*tensorView, error) {
	v := &tensorView{Source: "qat"}
	var q *quantize.Quantizer
	qs, err := quantize.Find(m)
	if err != nil {
		return nil, err
	}
	if len(qs) == 0 {
		return nil, fmt.Errorf("%s has no quantizers: --tensor shows the integers of a QAT model (qatc insert) or of an exported one (qatc export)", path)
	}
	fv, err := foldCopy(m)
	if err != nil {
		return nil, err
	}
	var f *fold.Folded
	for i := range qs {
		c := &qs[i]
		ff := fv.folded[c.Tensor]
		if c.Tensor == name || ff != nil && ff.Int != "" && (ff.Int == name || name == c.Tensor+"_quantized") {
			q, f = c, ff
		}
	}
	if q == nil {
		var ws []string
		for _, c := range qs {
			if c.Kind == quantize.KindWeight {
				ws = append(ws, c.Tensor)
			}
		}
		return nil, notQuantized(m, path, name, ws)
	}
	if f == nil || f.Int == "" {
		return nil, activationOnly(path, q)
	}
	v.Tensor, v.Stored, v.Kind, v.Bits, v.Axis, v.BlockSize = q.Tensor, f.Int, q.Kind, q.Bits, q.Axis, q.BlockSize
	if v.values, v.Shape, v.scales, err = fv.ints(f); err != nil {
		return nil, err
	}
	v.StorageType = graph.TensorType(fv.m.Initializer(f.Int)).String()
	if v.floats, err = graph.Floats(m.Initializer(q.Tensor)); err != nil {
		return nil, fmt.Errorf("%s: weight %q: %v", path, q.Tensor, err)
	}
	if q.Clip != "" {
		c, err := graph.Floats(m.Initializer(q.Clip))
		if err != nil {
			return nil, fmt.Errorf("%s: clip %q: %v", path, q.Clip, err)
		}
		v.Clip = spanOf(c)
	}
	return v, nil
}

// fill derives the summary fields from the integers, scales and kind.
func (v *tensorView) fill() {
	v.QMin, v.QMax = qrange(v.Kind, v.Bits)
	v.Granularity = granularity(v.Axis, v.BlockSize)
	base := "int"
	if v.QMin == 0 {
		base = "uint"
	}
	if v.Bits <= 4 {
		v.DType = base + "4"
	} else {
		v.DType = base + "8"
	}
	v.Scale = spanOf(v.scales)
	if v.Clip == nil && v.Kind != quantize.KindSoftmax {
		c := make([]float32, len(v.scales))
		for i, s := range v.scales {
			c[i] = s * float32(v.QMax)
		}
		v.Clip = spanOf(c)
	}
	// The widest range any channel or block represents.
	v.OutputMin = float64(v.QMin) * v.Scale.Max
	v.OutputMax = float64(v.QMax) * v.Scale.Max
	s := &v.Ints
	s.Count = int64(len(v.values))
	s.Histogram = make([]int64, v.QMax-v.QMin+1)
	if s.Count == 0 {
		return
	}
	s.Min, s.Max = v.values[0], v.values[0]
	var sum, sq float64
	for _, x := range v.values {
		s.Min, s.Max = min(s.Min, x), max(s.Max, x)
		sum += float64(x)
		sq += float64(x) * float64(x)
		if x == 0 {
			s.Zeros++
		}
		if x <= int64(v.QMin) || x >= int64(v.QMax) {
			s.Saturated++
		}
		if x >= int64(v.QMin) && x <= int64(v.QMax) {
			s.Histogram[x-int64(v.QMin)]++
		}
	}
	s.Mean = sum / float64(s.Count)
	s.Std = math.Sqrt(math.Max(0, sq/float64(s.Count)-s.Mean*s.Mean))
}

// print writes the view as NeurST's viewer shows a quantized weight: name,
// shape, dtype, the integers (numpy's summary of large arrays) and the
// represented range.
func (v *tensorView) print(w io.Writer) {
	how := "folded from the QAT model's float weight, as qatc export stores it"
	if v.Source == "export" {
		how = "stored in the exported model"
	}
	var shape []string
	for _, d := range v.Shape {
		shape = append(shape, fmt.Sprint(d))
	}
	sh := strings.Join(shape, ", ")
	if len(shape) == 1 {
		sh += ","
	}
	gran := v.Granularity
	switch {
	case v.BlockSize > 0:
		gran = fmt.Sprintf("per block of %d along axis %d", v.BlockSize, *v.Axis)
	case v.Axis != nil:
		gran = fmt.Sprintf("per channel along axis %d", *v.Axis)
	default:
		gran = "per tensor"
	}
	scale := fmt.Sprintf("%.9g", v.Scale.Min)
	if v.Scale.Count > 1 {
		scale = fmt.Sprintf("%d values, %.9g..%.9g", v.Scale.Count, v.Scale.Min, v.Scale.Max)
	}
	fmt.Fprintf(w, "tensor      %s\n", v.Tensor)
	fmt.Fprintf(w, "integers    %s: %s, %s\n", v.Stored, v.StorageType, how)
	fmt.Fprintf(w, "shape       (%s)\n", sh)
	fmt.Fprintf(w, "dtype       %s (values %d..%d)\n", v.DType, v.QMin, v.QMax)
	fmt.Fprintf(w, "quantizer   %s, %d bits, %s\n", v.Kind, v.Bits, gran)
	fmt.Fprintf(w, "clip        %s\n", v.Clip)
	fmt.Fprintf(w, "scale       %s\n", scale)
	fmt.Fprintf(w, "output_min  %.9g\n", v.OutputMin)
	fmt.Fprintf(w, "output_max  %.9g\n", v.OutputMax)
	s := v.Ints
	fmt.Fprintf(w, "values      min %d, max %d, mean %.4g, std %.4g, zeros %.2f%%, at qmin/qmax %.2f%%\n",
		s.Min, s.Max, s.Mean, s.Std, 100*float64(s.Zeros)/float64(max(s.Count, 1)), 100*float64(s.Saturated)/float64(max(s.Count, 1)))
	fmt.Fprintln(w, numpyString(v.values, v.Shape))
}

// numpyString formats an integer array as numpy's str does: an array of
// more than 1000 elements shows the first and last three entries of each
// longer axis around "...".
func numpyString(v []int64, dims []int64) string {
	const edge, threshold = 3, 1000
	if len(dims) == 0 {
		if len(v) == 0 {
			return "[]"
		}
		return fmt.Sprint(v[0])
	}
	summarize := graph.NumElements(dims) > threshold
	shown := func(n int64) []int64 { // indices along an axis; -1 is the ellipsis
		var out []int64
		if !summarize || n <= 2*edge {
			for i := int64(0); i < n; i++ {
				out = append(out, i)
			}
			return out
		}
		return []int64{0, 1, 2, -1, n - 3, n - 2, n - 1}
	}
	strides := make([]int64, len(dims))
	s := int64(1)
	for i := len(dims) - 1; i >= 0; i-- {
		strides[i] = s
		s *= dims[i]
	}
	width := 0
	var measure func(off int64, axis int)
	measure = func(off int64, axis int) {
		for _, i := range shown(dims[axis]) {
			switch {
			case i < 0:
			case axis == len(dims)-1:
				width = max(width, len(fmt.Sprint(v[off+i])))
			default:
				measure(off+i*strides[axis], axis+1)
			}
		}
	}
	measure(0, 0)
	var render func(off int64, axis int, indent string) string
	render = func(off int64, axis int, indent string) string {
		var parts []string
		for _, i := range shown(dims[axis]) {
			switch {
			case i < 0:
				parts = append(parts, "...")
			case axis == len(dims)-1:
				parts = append(parts, fmt.Sprintf("%*d", width, v[off+i]))
			default:
				parts = append(parts, render(off+i*strides[axis], axis+1, indent+" "))
			}
		}
		sep := " "
		if axis < len(dims)-1 {
			sep = strings.Repeat("\n", len(dims)-axis-1) + indent + " "
		}
		return "[" + strings.Join(parts, sep) + "]"
	}
	return render(0, 0, "")
}

// activationOnly is the error for a --tensor name that is a quantized
// activation.
func activationOnly(path string, q *quantize.Quantizer) error {
	return fmt.Errorf("%s: %q has an activation quantizer (%s, %d bits): its integers exist only while the model runs; --tensor shows quantized weights", path, q.Tensor, q.Kind, q.Bits)
}

// recordWeights lists the weights an exported model stores as integers.
func recordWeights(rec *quantize.Record, s *fold.StoredSet) []string {
	var out []string
	if rec != nil {
		for _, q := range rec.Quantizers {
			if q.Kind == quantize.KindWeight {
				out = append(out, q.Tensor)
			}
		}
	}
	return append(out, s.Names...)
}

// notQuantized is the error for a --tensor name that names no quantized
// weight: it says whether the tensor exists and lists the closest
// quantized weights.
func notQuantized(m *graph.Model, path, name string, weights []string) error {
	what := "has no tensor"
	switch {
	case m.Initializer(name) != nil:
		what = "does not quantize the initializer"
	case m.Producer(name) != nil || m.Input(name) != nil:
		what = "has no weight quantizer on the value"
	}
	return fmt.Errorf("%s %s %q; quantized weights with close names: %s", path, what, name, closeList(name, weights))
}

// plotHistogram draws the histogram of a QAT model's float weight with the
// clip range marked in red: solid lines at qmin·scale and qmax·scale
// (−c·128/127 and c for a signed weight) of the widest channel or block,
// dashed ones at the narrowest where the clips differ. The image format follows path's
// extension (png, svg, pdf, jpg).
func plotHistogram(path string, v *tensorView) error {
	if v.floats == nil {
		return fmt.Errorf("--plot draws a QAT model's float weight, and %q is stored only as integers in this exported model: run inspect --plot on the QAT model", v.Tensor)
	}
	ext := strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), ".")
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s: %d values, %d-bit %s clip %s; red: clip range [%.4g, %.4g]", v.Tensor, len(v.floats), v.Bits, v.Granularity, v.Clip, v.OutputMin, v.OutputMax)
	p.X.Label.Text = "value"
	p.Y.Label.Text = "count"
	vals := make(plotter.Values, len(v.floats))
	for i, x := range v.floats {
		vals[i] = float64(x)
	}
	h, err := plotter.NewHist(vals, 100)
	if err != nil {
		return fmt.Errorf("--plot %s: %v", path, err)
	}
	h.FillColor = color.RGBA{R: 70, G: 110, B: 180, A: 255}
	h.LineStyle.Width = 0
	p.Add(h)
	top := 0.0
	for _, b := range h.Bins {
		top = math.Max(top, b.Weight)
	}
	mark := func(s float64, dashed bool) error {
		for _, x := range []float64{float64(v.QMin) * s, float64(v.QMax) * s} {
			l, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: top * 1.05}})
			if err != nil {
				return err
			}
			l.Color = color.RGBA{R: 200, G: 30, B: 30, A: 255}
			l.Width = vg.Points(1.5)
			if dashed {
				l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			}
			p.Add(l)
		}
		return nil
	}
	if err := mark(v.Scale.Max, false); err != nil {
		return err
	}
	if v.Scale.Min != v.Scale.Max {
		if err := mark(v.Scale.Min, true); err != nil {
			return err
		}
	}
	// Leave room around the data and the clip lines.
	lo, hi := float64(v.QMin)*v.Scale.Max, float64(v.QMax)*v.Scale.Max
	for _, x := range v.floats {
		lo, hi = math.Min(lo, float64(x)), math.Max(hi, float64(x))
	}
	pad := 0.05 * (hi - lo)
	p.X.Min, p.X.Max = lo-pad, hi+pad
	wt, err := p.WriterTo(8*vg.Inch, 5*vg.Inch, ext)
	if err != nil {
		return fmt.Errorf("--plot %s: %v (use a .png, .svg, .pdf or .jpg file)", path, err)
	}
	var buf bytes.Buffer
	if _, err := wt.WriteTo(&buf); err != nil {
		return fmt.Errorf("--plot %s: %v", path, err)
	}
	return safeio.WriteFile(path, buf.Bytes())
}

// closeList lists up to five of names closest to name.
func closeList(name string, names []string) string {
	if len(names) == 0 {
		return "(none)"
	}
	return strings.Join(quantize.CloseNames(name, names, 5), ", ")
}

package inspect

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
	"github.com/qatc/qatc/passes/fold"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/safeio"
	"github.com/qatc/qatc/seq2seq"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// A Tensor is what inspect --tensor shows of one quantized weight.
type Tensor struct {
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
	Clip        *Span    `json:"clip"`
	Scale       *Span    `json:"scale"`
	OutputMin   float64  `json:"output_min"`
	OutputMax   float64  `json:"output_max"`
	Ints        IntStats `json:"integers"`
	Plot        string   `json:"plot,omitempty"`

	values []int64
	floats []float32 // the float weight (QAT models only)
	scales []float32
}

// IntStats summarises a weight's integers.
type IntStats struct {
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

// TensorFile reads the model at path (a file, or a model directory's
// encoder and decoder composed) and finds the integers of its quantized
// weight name (TensorOf).
func TensorFile(path, name string) (*Tensor, error) {
	if seq2seq.IsDir(path) {
		// The weights of a directory's encoder and decoder, composed.
		d, err := seq2seq.ReadDir(path)
		if err != nil {
			return nil, err
		}
		m, err := d.Compose(d.Config.PadID)
		if err != nil {
			return nil, err
		}
		return TensorOf(m, path, name)
	}
	m, err := graph.LoadValid(path)
	if err != nil {
		return nil, err
	}
	return TensorOf(m, path, name)
}

// TensorOf finds the integers of the quantized weight name in m: for a
// QAT model, those fold.Fold computes from the float weight (exactly what
// an export stores); for an exported model, the stored initializer. name
// is the weight's name or its integer initializer's.
func TensorOf(m *graph.Model, path, name string) (*Tensor, error) {
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
func exportedInts(m *graph.Model, path, name string) (*Tensor, error) {
	v := &Tensor{Source: "export"}
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
func qatInts(m *graph.Model, path, name string) (*Tensor, error) {
	v := &Tensor{Source: "qat"}
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
func (v *Tensor) fill() {
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

// Write prints the view as NeurST's viewer shows a quantized weight: name,
// shape, dtype, the integers (numpy's summary of large arrays) and the
// represented range.
func (v *Tensor) Write(w io.Writer) error {
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
	_, err := fmt.Fprintln(w, numpyString(v.values, v.Shape))
	return err
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

// WritePlot draws the histogram of a QAT model's float weight with the
// clip range marked in red: solid lines at qmin·scale and qmax·scale
// (−c·128/127 and c for a signed weight) of the widest channel or block,
// dashed ones at the narrowest where the clips differ. The image format follows path's
// extension (png, svg, pdf, jpg).
func (v *Tensor) WritePlot(path string) error {
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
	if err := safeio.WriteFile(path, buf.Bytes()); err != nil {
		return err
	}
	v.Plot = path
	return nil
}

// closeList lists up to five of names closest to name.
func closeList(name string, names []string) string {
	if len(names) == 0 {
		return "(none)"
	}
	return strings.Join(quantize.CloseNames(name, names, 5), ", ")
}

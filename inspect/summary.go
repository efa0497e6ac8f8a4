package inspect

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/safeio"
)

// A Summary is what inspect prints about any model: inputs, outputs,
// opsets, operators, parameters, metadata, and the quantizers of a QAT or
// exported model.
type Summary struct {
	Inputs       []Value           `json:"inputs"`
	Outputs      []Value           `json:"outputs"`
	Opsets       map[string]int64  `json:"opsets"`
	IRVersion    int64             `json:"ir_version"`
	Producer     string            `json:"producer"`
	Nodes        int               `json:"nodes"`
	OpCounts     map[string]int    `json:"op_counts"`
	Parameters   int64             `json:"parameters"`
	ParamBytes   int64             `json:"parameter_bytes"`
	Initializers int               `json:"initializers"`
	Largest      []TensorEntry     `json:"largest_initializers"`
	Metadata     map[string]string `json:"metadata,omitempty"`
	// Quantizers lists a QAT or exported model's quantizers.
	Quantizers []Row `json:"quantizers,omitempty"`
	// QuantNote says why the weights' clipped share and SQNR are unknown.
	QuantNote string `json:"quantizers_note,omitempty"`
}

// A Value is a graph input or output.
type Value struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Shape string `json:"shape"`
}

// A TensorEntry is one of the largest initializers.
type TensorEntry struct {
	Name     string  `json:"name"`
	Type     string  `json:"type"`
	Shape    []int64 `json:"shape"`
	Elements int64   `json:"elements"`
	Bytes    int64   `json:"bytes"`
}

// File reads the model file at path and describes it (Model).
func File(path string, top int) (*Summary, error) {
	m, err := graph.LoadValid(path)
	if err != nil {
		return nil, err
	}
	s, err := Model(m, top)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// Model describes m with its top largest initializers and, for a QAT or
// exported model, its quantizers (Quantizers).
func Model(m *graph.Model, top int) (*Summary, error) {
	s := Summarize(m, top)
	var err error
	s.Quantizers, s.QuantNote, err = Quantizers(m)
	return s, err
}

// Summarize describes m, listing its top largest initializers, without its
// quantizers (Model adds them).
func Summarize(m *graph.Model, top int) *Summary {
	g := m.Graph()
	s := &Summary{
		Opsets:    map[string]int64{},
		IRVersion: m.Proto.IrVersion,
		Producer:  strings.TrimSpace(m.Proto.ProducerName + " " + m.Proto.ProducerVersion),
		Nodes:     len(g.Node),
		OpCounts:  map[string]int{},
	}
	for _, o := range m.Proto.OpsetImport {
		d := o.Domain
		if d == "" {
			d = "ai.onnx"
		}
		s.Opsets[d] = o.Version
	}
	for _, v := range g.Input {
		if m.Initializer(v.Name) == nil {
			s.Inputs = append(s.Inputs, describeValue(v))
		}
	}
	for _, v := range g.Output {
		s.Outputs = append(s.Outputs, describeValue(v))
	}
	for _, n := range g.Node {
		op := n.OpType
		if n.Domain != "" && n.Domain != "ai.onnx" {
			op = n.Domain + "." + op
		}
		s.OpCounts[op]++
	}
	var all []TensorEntry
	for _, t := range g.Initializer {
		e := TensorEntry{Name: t.Name, Type: graph.TensorType(t).String(), Shape: t.Dims, Elements: graph.NumElements(t.Dims)}
		e.Bytes = (e.Elements*int64(graph.TensorType(t).Bits()) + 7) / 8
		all = append(all, e)
		s.Parameters += e.Elements
		s.ParamBytes += e.Bytes
	}
	s.Initializers = len(all)
	sort.SliceStable(all, func(i, j int) bool { return all[i].Elements > all[j].Elements })
	if top < len(all) {
		all = all[:top]
	}
	s.Largest = all
	if len(m.Proto.MetadataProps) > 0 {
		s.Metadata = map[string]string{}
		for _, p := range m.Proto.MetadataProps {
			v := p.Value
			if len(v) > 200 {
				v = v[:200] + "…"
			}
			s.Metadata[p.Key] = v
		}
	}
	return s
}

func describeValue(v *onnx.ValueInfoProto) Value {
	out := Value{Name: v.Name, Type: "?", Shape: "?"}
	tt := v.GetType().GetTensorType()
	if tt == nil {
		return out
	}
	out.Type = graph.DataType(tt.ElemType).String()
	if tt.Shape == nil {
		return out
	}
	dims := make([]string, len(tt.Shape.Dim))
	for i, d := range tt.Shape.Dim {
		switch {
		case d.GetDimParam() != "":
			dims[i] = d.GetDimParam()
		case d.GetValue() != nil:
			dims[i] = fmt.Sprint(d.GetDimValue())
		default:
			dims[i] = "?"
		}
	}
	out.Shape = "[" + strings.Join(dims, ", ") + "]"
	return out
}

// Write prints the summary as aligned text, the quantizer table after it.
func (s *Summary) Write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "producer\t%s\nir version\t%d\n", s.Producer, s.IRVersion)
	var ops []string
	for d, v := range s.Opsets {
		ops = append(ops, fmt.Sprintf("%s %d", d, v))
	}
	sort.Strings(ops)
	fmt.Fprintf(tw, "opsets\t%s\n\n", strings.Join(ops, ", "))
	fmt.Fprintln(tw, "input\ttype\tshape")
	for _, v := range s.Inputs {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", v.Name, v.Type, v.Shape)
	}
	fmt.Fprintln(tw, "\noutput\ttype\tshape")
	for _, v := range s.Outputs {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", v.Name, v.Type, v.Shape)
	}
	fmt.Fprintf(tw, "\nnodes\t%d\n", s.Nodes)
	type kv struct {
		op string
		n  int
	}
	var counts []kv
	for op, n := range s.OpCounts {
		counts = append(counts, kv{op, n})
	}
	sort.Slice(counts, func(i, j int) bool {
		if counts[i].n != counts[j].n {
			return counts[i].n > counts[j].n
		}
		return counts[i].op < counts[j].op
	})
	for _, c := range counts {
		fmt.Fprintf(tw, "  %s\t%d\n", c.op, c.n)
	}
	fmt.Fprintf(tw, "\nparameters\t%d (%s in %d initializers)\n", s.Parameters, safeio.FormatSize(s.ParamBytes, 1), s.Initializers)
	fmt.Fprintln(tw, "\nlargest initializer\ttype\tshape\telements")
	for _, t := range s.Largest {
		fmt.Fprintf(tw, "%s\t%s\t%v\t%d\n", t.Name, t.Type, t.Shape, t.Elements)
	}
	if len(s.Metadata) > 0 {
		fmt.Fprintln(tw, "\nmetadata\tvalue")
		for _, k := range slices.Sorted(maps.Keys(s.Metadata)) {
			fmt.Fprintf(tw, "%s\t%s\n", k, s.Metadata[k])
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(s.Quantizers) > 0 {
		return writeRows(w, s.Quantizers, s.QuantNote)
	}
	return nil
}

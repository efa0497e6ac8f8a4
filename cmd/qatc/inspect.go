package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/safeio"
	"github.com/urfave/cli/v2"
)

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "describe a model: inputs, outputs, opsets, operators, parameters, quantizers, a weight's integers",
		ArgsUsage: "MODEL",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print one JSON document"},
			&cli.IntFlag{Name: "top", Value: 10, Usage: "how many of the largest initializers to list"},
			&cli.StringFlag{Name: "tensor", Usage: "print the integers of this quantized weight (its name or its integer initializer's), of a QAT or an exported model"},
			&cli.StringFlag{Name: "plot", Usage: "with --tensor on a QAT model: draw the float weight's histogram with the clip range marked to this file (.png)"},
		},
		Action: inspectAction,
	}
}

// inspectAction prints the model summary (with the quantizer table of a
// QAT or exported model), or with --tensor one weight's integers.
func inspectAction(c *cli.Context) error {
	path, err := oneArg(c, "MODEL")
	if err != nil {
		return err
	}
	if c.IsSet("plot") && (!c.IsSet("tensor") || c.String("plot") == "") {
		return usagef("--plot FILE.png draws one weight: name it with --tensor NAME")
	}
	if f := c.String("plot"); f != "" {
		if err := safeio.Check(safeio.Plan{
			Inputs:  []safeio.Group{modelInput("MODEL", path)},
			Outputs: []safeio.Group{{Flag: "--plot", Path: f}},
		}); err != nil {
			return err
		}
	}
	m, err := graph.LoadValid(path)
	if err != nil {
		return err
	}
	if name := c.String("tensor"); c.IsSet("tensor") {
		v, err := tensorInts(m, path, name)
		if err != nil {
			return err
		}
		if plotPath := c.String("plot"); plotPath != "" {
			if err := plotHistogram(plotPath, v); err != nil {
				return err
			}
			v.Plot = plotPath
		}
		if c.Bool("json") {
			return writeJSON(c.App.Writer, v)
		}
		v.print(c.App.Writer)
		if v.Plot != "" {
			fmt.Fprintf(c.App.Writer, "wrote %s\n", v.Plot)
		}
		return nil
	}
	s := summarize(m, c.Int("top"))
	if s.Quantizers, s.QuantNote, err = quantizerRows(m); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, s)
	}
	s.print(c.App.Writer)
	if len(s.Quantizers) > 0 {
		printQuantRows(c.App.Writer, s.Quantizers, s.QuantNote)
	}
	return nil
}

// oneArg returns the command's single positional argument.
func oneArg(c *cli.Context, what string) (string, error) {
	if c.NArg() != 1 {
		return "", usagef("%s takes one %s argument, got %d (see qatc %s --help)", c.Command.Name, what, c.NArg(), c.Command.Name)
	}
	return c.Args().First(), nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// modelSummary is what inspect prints about any model.
type modelSummary struct {
	Inputs       []valueSummary    `json:"inputs"`
	Outputs      []valueSummary    `json:"outputs"`
	Opsets       map[string]int64  `json:"opsets"`
	IRVersion    int64             `json:"ir_version"`
	Producer     string            `json:"producer"`
	Nodes        int               `json:"nodes"`
	OpCounts     map[string]int    `json:"op_counts"`
	Parameters   int64             `json:"parameters"`
	ParamBytes   int64             `json:"parameter_bytes"`
	Initializers int               `json:"initializers"`
	Largest      []tensorEntry     `json:"largest_initializers"`
	Metadata     map[string]string `json:"metadata,omitempty"`
	// Quantizers lists a QAT or exported model's quantizers.
	Quantizers []quantRow `json:"quantizers,omitempty"`
	// QuantNote says why the weights' clipped share and SQNR are unknown.
	QuantNote string `json:"quantizers_note,omitempty"`
}

type valueSummary struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Shape string `json:"shape"`
}

type tensorEntry struct {
	Name     string  `json:"name"`
	Type     string  `json:"type"`
	Shape    []int64 `json:"shape"`
	Elements int64   `json:"elements"`
	Bytes    int64   `json:"bytes"`
}

func summarize(m *graph.Model, top int) *modelSummary {
	g := m.Graph()
	s := &modelSummary{
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
	var all []tensorEntry
	for _, t := range g.Initializer {
		e := tensorEntry{Name: t.Name, Type: graph.TensorType(t).String(), Shape: t.Dims, Elements: graph.NumElements(t.Dims)}
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

func describeValue(v *onnx.ValueInfoProto) valueSummary {
	out := valueSummary{Name: v.Name, Type: "?", Shape: "?"}
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

func (s *modelSummary) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	defer tw.Flush()
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
	fmt.Fprintf(tw, "\nparameters\t%d (%s in %d initializers)\n", s.Parameters, humanBytes(s.ParamBytes), s.Initializers)
	fmt.Fprintln(tw, "\nlargest initializer\ttype\tshape\telements")
	for _, t := range s.Largest {
		fmt.Fprintf(tw, "%s\t%s\t%v\t%d\n", t.Name, t.Type, t.Shape, t.Elements)
	}
	if len(s.Metadata) > 0 {
		fmt.Fprintln(tw, "\nmetadata\tvalue")
		keys := make([]string, 0, len(s.Metadata))
		for k := range s.Metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%s\n", k, s.Metadata[k])
		}
	}
}

// humanBytes formats a byte count with a binary unit.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for v := n / unit; v >= unit; v /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// writeTable prints an aligned table.
func writeTable(w io.Writer, header []string, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	defer tw.Flush()
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
}

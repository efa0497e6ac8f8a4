// Package passes runs qatc's graph transformations as pipelines, in the
// manner of Go's compiler (cmd/compile/internal/ssa's pass list) and of
// golang.org/x/tools/go/analysis: every step is a Pass, a named value that
// declares the properties of the model it requires and those it produces;
// a Pipeline checks once, before anything runs, that every requirement is
// produced by an earlier pass (or holds from the start), lists itself
// (qatc's --passes), runs the passes in order and writes the graph after
// the passes named in Options.DumpAfter (qatc's --dump-after, the
// GOSSAFUNC habit).
//
// The commands' pipelines are built where their passes meet onnxruntime:
// insert, finetune and train in package train (InsertPipeline,
// FinetunePipeline), the ONNX formats' export in package export
// (export.Pipeline: fold, the format's rewrite, the checks of the folded
// form; export.File runs the QAT model for the reference before it and
// the exported model against it after). The
// transformations themselves live in the subpackages: quantize (the QAT
// graph form: insert, find, strip), calibrate, smooth, autodiff, fold,
// transformer (the recogniser) and incremental.
package passes

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/qatc/qatc/graph"
)

// A Pass is one step of a pipeline.
type Pass struct {
	// Name is how --dump-after and --passes call the pass: short, lower
	// case, unique in its pipeline.
	Name string
	// Doc says in one line what the pass does.
	Doc string
	// Requires are the properties of the model the pass needs; Produces
	// those that hold after it, Removes those that no longer do.
	Requires, Produces, Removes []string
	// Off, when set, says why the pass does not run in this pipeline (an
	// option is not given); the pipeline lists it and skips it.
	Off string
	// Run transforms the unit's model, or measures it.
	Run func(*Unit) error
}

// A Unit is what a pipeline works on: the model, and the graphs a pass
// builds beside it (a training graph, a teacher), which Attach hands to
// the dump.
type Unit struct {
	Model *graph.Model
	// Context, when set, is what a long pass (a training loop) watches
	// for cancellation.
	Context  context.Context
	attached []named
}

type named struct {
	name string
	m    *graph.Model
}

// Attach records a graph the running pass built beside the model, so
// that a dump after the pass writes it too (as NN-pass.name.onnx).
func (u *Unit) Attach(name string, m *graph.Model) {
	u.attached = append(u.attached, named{name, m})
}

// A Pipeline is a command's passes, in order.
type Pipeline struct {
	// Name is the command's.
	Name string
	// Given are the properties that hold before the first pass.
	Given  []string
	Passes []*Pass
}

// Check reports a pass whose requirement does not hold when it runs (no
// earlier running pass produces it and the pipeline is not given it, or
// an earlier pass removed it), and a name used twice.
func (p *Pipeline) Check() error {
	have := map[string]bool{}
	for _, g := range p.Given {
		have[g] = true
	}
	seen := map[string]bool{}
	for _, ps := range p.Passes {
		if seen[ps.Name] {
			return fmt.Errorf("%s pipeline: two passes are named %q", p.Name, ps.Name)
		}
		seen[ps.Name] = true
		if ps.Off != "" {
			continue
		}
		for _, r := range ps.Requires {
			if !have[r] {
				return fmt.Errorf("%s pipeline: pass %s requires %q, which does not hold before it", p.Name, ps.Name, r)
			}
		}
		for _, r := range ps.Removes {
			delete(have, r)
		}
		for _, r := range ps.Produces {
			have[r] = true
		}
	}
	return nil
}

// Options configure Run.
type Options struct {
	// DumpAfter names the passes after which the model is written to
	// DumpDir; "all" names every pass that runs.
	DumpAfter []string
	DumpDir   string
	// Done, when set, is called after each pass that ran, with the time
	// it took; Dumped after each file a dump wrote, with the pass's name.
	Done   func(p *Pass, elapsed time.Duration)
	Dumped func(pass, file string)
}

// dumps reports whether o asks for a dump after the pass named name.
func (o *Options) dumps(name string) bool {
	return o != nil && o.DumpDir != "" && (slices.Contains(o.DumpAfter, "all") || slices.Contains(o.DumpAfter, name))
}

// CheckDump checks that every name in after (Options.DumpAfter) is a
// pass of p, or all, before anything runs.
func (p *Pipeline) CheckDump(after []string) error {
	for _, n := range after {
		if n == "all" || slices.ContainsFunc(p.Passes, func(ps *Pass) bool { return ps.Name == n }) {
			continue
		}
		var names []string
		for _, ps := range p.Passes {
			names = append(names, ps.Name)
		}
		return fmt.Errorf("--dump-after %s: %s has no such pass (its passes: %s, or all)", n, p.Name, strings.Join(names, ", "))
	}
	return nil
}

// Run checks the pipeline and runs its passes on u in order, writing the
// model after each pass o names. A pass's error is returned naming it
// unless it already says which pass failed.
func (p *Pipeline) Run(u *Unit, o *Options) error {
	if err := p.Check(); err != nil {
		return err
	}
	if o != nil {
		if err := p.CheckDump(o.DumpAfter); err != nil {
			return err
		}
	}
	if o != nil && o.DumpDir != "" && len(o.DumpAfter) > 0 {
		if err := os.MkdirAll(o.DumpDir, 0o755); err != nil {
			return fmt.Errorf("--dump-after: %w", err)
		}
	}
	for i, ps := range p.Passes {
		if ps.Off != "" {
			continue
		}
		u.attached = nil
		start := time.Now()
		if err := ps.Run(u); err != nil {
			return err
		}
		if o != nil && o.Done != nil {
			o.Done(ps, time.Since(start))
		}
		if o.dumps(ps.Name) {
			if err := dump(u, o, i+1, ps); err != nil {
				return fmt.Errorf("--dump-after %s: %w", ps.Name, err)
			}
		}
	}
	return nil
}

// DumpFile is the file a dump after the pass at position i (from 1)
// writes; side is "" for the model, else an attached graph's name.
func DumpFile(dir string, i int, pass, side string) string {
	name := fmt.Sprintf("%02d-%s", i, pass)
	if side != "" {
		name += "." + side
	}
	return filepath.Join(dir, name+".onnx")
}

// dump writes u's model and the graphs the pass attached.
func dump(u *Unit, o *Options, i int, ps *Pass) error {
	graphs := u.attached
	if u.Model != nil {
		graphs = append([]named{{"", u.Model}}, graphs...)
	}
	for _, g := range graphs {
		file := DumpFile(o.DumpDir, i, ps.Name, g.name)
		if err := g.m.Save(file); err != nil {
			return err
		}
		if o.Dumped != nil {
			o.Dumped(ps.Name, file)
		}
	}
	return nil
}

// List writes the pipeline as a table, one pass a line: its position,
// name, the properties it requires, produces and removes, what it does,
// and why it is off.
func (p *Pipeline) List(w io.Writer) error {
	given := "nothing"
	if len(p.Given) > 0 {
		given = strings.Join(p.Given, ", ")
	}
	fmt.Fprintf(w, "%s pipeline, given %s:\n", p.Name, given)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  #\tpass\trequires\tproduces\tremoves\twhat it does")
	for i, ps := range p.Passes {
		doc := ps.Doc
		if ps.Off != "" {
			doc += " (off: " + ps.Off + ")"
		}
		fmt.Fprintf(tw, "%3d\t%s\t%s\t%s\t%s\t%s\n", i+1, ps.Name, list(ps.Requires), list(ps.Produces), list(ps.Removes), doc)
	}
	return tw.Flush()
}

// list joins properties, "-" for none.
func list(props []string) string {
	if len(props) == 0 {
		return "-"
	}
	return strings.Join(props, ",")
}

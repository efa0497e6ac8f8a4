package passes_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/passes"
)

// pipeline adds one node per pass to a small model, so that each dump
// shows how far the pipeline got.
func pipeline() *passes.Pipeline {
	add := func(op string) func(*passes.Unit) error {
		return func(u *passes.Unit) error {
			last := u.Model.Graph().Output[0].Name
			out := u.Model.UniqueName(op)
			u.Model.Op(op, "", []string{last}, []string{out})
			u.Model.Graph().Output[0].Name = out
			u.Model.Reindex()
			return nil
		}
	}
	return &passes.Pipeline{Name: "test", Given: []string{"fp32"}, Passes: []*passes.Pass{
		{Name: "first", Doc: "adds a Relu", Requires: []string{"fp32"}, Produces: []string{"relu"}, Run: add("Relu")},
		{Name: "off", Doc: "never runs", Requires: []string{"missing"}, Off: "no --flag", Run: add("Abs")},
		{Name: "second", Doc: "adds a Neg beside a side graph", Requires: []string{"relu"}, Produces: []string{"neg"}, Run: func(u *passes.Unit) error {
			u.Attach("side", graph.New("side", 17))
			return add("Neg")(u)
		}},
	}}
}

func model() *graph.Model {
	m := graph.New("m", 17)
	m.AddInput("x", graph.Float, []int64{2})
	m.Op("Identity", "", []string{"x"}, []string{"y"})
	m.AddOutput("y", graph.Float, []int64{2})
	return m
}

func TestRunAndDump(t *testing.T) {
	for _, tc := range []struct {
		after []string
		files []string
	}{
		{[]string{"all"}, []string{"01-first.onnx", "03-second.onnx", "03-second.side.onnx"}},
		{[]string{"first"}, []string{"01-first.onnx"}},
		{nil, nil},
	} {
		dir := filepath.Join(t.TempDir(), "dump")
		var ran []string
		u := &passes.Unit{Model: model()}
		err := pipeline().Run(u, &passes.Options{DumpAfter: tc.after, DumpDir: dir, Done: func(p *passes.Pass, _ time.Duration) { ran = append(ran, p.Name) }})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(ran, " ") != "first second" {
			t.Errorf("ran %v, want first second", ran)
		}
		entries, _ := os.ReadDir(dir)
		var got []string
		for _, e := range entries {
			got = append(got, e.Name())
		}
		if strings.Join(got, " ") != strings.Join(tc.files, " ") {
			t.Errorf("--dump-after %v wrote %v, want %v", tc.after, got, tc.files)
		}
		if len(got) > 0 {
			// The dump after the first pass holds its node, not the second's.
			d, err := graph.Load(filepath.Join(dir, "01-first.onnx"))
			if err != nil {
				t.Fatal(err)
			}
			if n := len(d.Graph().Node); n != 2 {
				t.Errorf("01-first.onnx has %d nodes, want 2", n)
			}
		}
		if n := len(u.Model.Graph().Node); n != 3 {
			t.Errorf("the model has %d nodes after the pipeline, want 3", n)
		}
	}
}

func TestCheck(t *testing.T) {
	p := pipeline()
	p.Passes[1].Off = ""
	if err := p.Check(); err == nil || !strings.Contains(err.Error(), `pass off requires "missing", which does not hold before it`) {
		t.Errorf("unmet requirement: %v", err)
	}
	p = pipeline()
	p.Passes[0].Removes = []string{"fp32"}
	p.Passes[2].Requires = []string{"fp32"}
	if err := p.Check(); err == nil || !strings.Contains(err.Error(), `pass second requires "fp32", which does not hold before it`) {
		t.Errorf("removed requirement: %v", err)
	}
	p = pipeline()
	p.Passes[2].Name = "first"
	if err := p.Check(); err == nil || !strings.Contains(err.Error(), `two passes are named "first"`) {
		t.Errorf("duplicate name: %v", err)
	}
	err := pipeline().Run(&passes.Unit{Model: model()}, &passes.Options{DumpAfter: []string{"thrid"}, DumpDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "--dump-after thrid: test has no such pass (its passes: first, off, second, or all)") {
		t.Errorf("unknown pass: %v", err)
	}
}

func TestList(t *testing.T) {
	var b bytes.Buffer
	if err := pipeline().List(&b); err != nil {
		t.Fatal(err)
	}
	want := `test pipeline, given fp32:
  #  pass    requires  produces  removes  what it does
  1  first   fp32      relu      -        adds a Relu
  2  off     missing   -         -        never runs (off: no --flag)
  3  second  relu      neg       -        adds a Neg beside a side graph
`
	if b.String() != want {
		t.Errorf("List:\n%s\nwant:\n%s", b.String(), want)
	}
}

package cmdline

import (
	"math"
	"slices"
	"testing"

	"github.com/urfave/cli/v2"
)

func TestRange(t *testing.T) {
	bits := Range{Lo: 2, Hi: 8}
	smooth := Range{Lo: 0, LoOpen: true, Hi: 1, Zero: true}
	ls := Range{Lo: 0, Hi: 1, HiOpen: true}
	for _, tc := range []struct {
		r       Range
		integer bool
		in, out []float64
		says    string
	}{
		{Positive, true, []float64{1, 1e9}, []float64{0, -1, math.NaN(), math.Inf(1)}, "an integer of at least 1"},
		{NonNegative, true, []float64{0, 3}, []float64{-1}, "an integer of at least 0"},
		{Above0, false, []float64{1e-9, 5}, []float64{0, -1e-9, math.Inf(1)}, "a finite number greater than 0"},
		{bits, true, []float64{2, 8}, []float64{1, 9}, "an integer from 2 to 8"},
		{smooth, false, []float64{0, 0.5, 1}, []float64{-0.1, 1.5}, "0 or a finite number in (0, 1]"},
		{ls, false, []float64{0, 0.99}, []float64{1, -0.1}, "a finite number in [0, 1)"},
	} {
		for _, v := range tc.in {
			if !tc.r.Holds(v) {
				t.Errorf("%+v does not hold %v", tc.r, v)
			}
		}
		for _, v := range tc.out {
			if tc.r.Holds(v) {
				t.Errorf("%+v holds %v", tc.r, v)
			}
		}
		if got := tc.r.Describe(tc.integer); got != tc.says {
			t.Errorf("%+v says %q, want %q", tc.r, got, tc.says)
		}
	}
}

func TestReorderArgs(t *testing.T) {
	app := &cli.App{Name: "qatc", Commands: []*cli.Command{{Name: "insert", Flags: []cli.Flag{
		&cli.StringFlag{Name: "output", Aliases: []string{"o"}},
		&cli.BoolFlag{Name: "json"},
		&cli.StringFlag{Name: "dump-after"},
		&cli.StringFlag{Name: "dump-dir"},
	}}}}
	two := map[string]string{"dump-after": "dump-dir"}
	for _, tc := range []struct{ in, want []string }{
		{[]string{"qatc", "insert", "m.onnx", "-o", "q.onnx", "--json"}, []string{"qatc", "insert", "-o", "q.onnx", "--json", "--", "m.onnx"}},
		{[]string{"qatc", "--debug", "insert", "m.onnx", "--dump-after", "all", "dumps"}, []string{"qatc", "--debug", "insert", "--dump-after", "all", "--dump-dir", "dumps", "--", "m.onnx"}},
		{[]string{"qatc", "insert", "--", "-m.onnx"}, []string{"qatc", "insert", "--", "-m.onnx"}},
		{[]string{"qatc", "nosuch", "x", "--json"}, []string{"qatc", "nosuch", "x", "--json"}},
	} {
		if got := ReorderArgs(app, tc.in, two); !slices.Equal(got, tc.want) {
			t.Errorf("ReorderArgs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestOneLine(t *testing.T) {
	if got := OneLine("a\n  b\tc\n"); got != "a; b c;" {
		t.Errorf("OneLine: %q", got)
	}
}

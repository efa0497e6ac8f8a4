package autodiff_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/autodiff"
	"github.com/qatc/qatc/testmodels"
)

// TestTestmodelsDirectional builds the training graph of the project's
// transformer builders in several shapes (opsets with decomposed or fused
// LayerNorm and GELU, fused QKV with Split, post-norm, separate tables),
// converted to float64 (onnxruntime has no float64 Erf, so the GELU
// variants stay float32 with a tolerance to match), and compares the
// gradient along a random direction over all parameters with a central
// difference of the loss.
func TestTestmodelsDirectional(t *testing.T) {
	if err := ort.Init(); err != nil {
		t.Fatal(err)
	}
	tiny := testmodels.Tiny()
	variants := map[string]func(*testmodels.Config){
		"opset14":         func(c *testmodels.Config) { c.Opset = 14 },
		"opset17/fused":   func(c *testmodels.Config) { c.FusedQKV = true },
		"opset20/gelu":    func(c *testmodels.Config) { c.Opset, c.Activation, c.FusedQKV = 20, "gelu", true },
		"postnorm/tables": func(c *testmodels.Config) { c.PreNorm, c.SharedEmbeddings, c.Activation = false, false, "gelu" },
	}
	for _, name := range sortedNames(variants) {
		t.Run(name, func(t *testing.T) {
			cfg := tiny
			cfg.EncoderLayers, cfg.DecoderLayers = 1, 1
			variants[name](&cfg)
			m32, err := testmodels.Build(cfg)
			if err != nil {
				t.Fatal(err)
			}
			double := cfg.Activation == "relu"
			m := m32
			if double {
				m = toDouble(t, m32)
			}
			tm, info, err := autodiff.Build(m, autodiff.Options{Loss: autodiff.Loss{LabelSmoothing: 0.1}})
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range info.Params {
				if p.Name == testmodels.PositionTable {
					t.Fatalf("the sinusoidal position table is a parameter")
				}
			}
			s, err := ort.Open(tm, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			rng := rand.New(rand.NewPCG(3, 4))
			ids := func(rows, cols, pads int) *ort.Tensor {
				v := make([]int64, rows*cols)
				for i := range v {
					v[i] = 4 + rng.Int64N(int64(cfg.Vocab-4))
				}
				for j := cols - pads; j < cols; j++ {
					v[cols+j] = 0 // second row padded
				}
				return ort.Int64([]int64{int64(rows), int64(cols)}, v)
			}
			base := map[string][]float64{}
			dir := map[string][]float64{}
			for _, p := range info.Params {
				w, err := graph.Floats(m32.Initializer(p.Name))
				if err != nil {
					t.Fatal(err)
				}
				base[p.Name] = f64(w)
				d := make([]float64, len(w))
				for i := range d {
					d[i] = rng.NormFloat64()
				}
				dir[p.Name] = d
			}
			batch := map[string]*ort.Tensor{"src_ids": ids(2, 7, 2), "tgt_ids": ids(2, 6, 1), "labels": ids(2, 6, 1)}
			run := func(step float64) map[string]*ort.Tensor {
				feeds := map[string]*ort.Tensor{}
				for k, v := range batch {
					feeds[k] = v
				}
				for _, p := range info.Params {
					w := make([]float64, len(base[p.Name]))
					for i := range w {
						w[i] = base[p.Name][i] + step*dir[p.Name][i]
					}
					feeds[p.Name] = toTensor(p.Shape, w, !double)
				}
				out, err := s.Run(feeds)
				if err != nil {
					t.Fatal(err)
				}
				return out
			}
			out := run(0)
			sym := 0.0
			for _, p := range info.Params {
				g := toFloat64s(out[p.Grad])
				for i, d := range dir[p.Name] {
					sym += float64(g[i]) * float64(d)
				}
			}
			h, tol := 1e-6, 1e-6
			if !double {
				h, tol = 1e-3, 1e-3
			}
			num := (toFloat64s(run(h)["loss"])[0] - toFloat64s(run(-h)["loss"])[0]) / (2 * h)
			if math.Abs(num-sym) > tol*math.Abs(sym) {
				t.Errorf("directional derivative: symbolic %.6g, central difference %.6g", sym, num)
			}
			t.Logf("%d parameters; directional derivative %.6g, central difference %.6g", len(info.Params), sym, num)
		})
	}
}

func sortedNames[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// toDouble returns a float64 copy of a float32 model: initializers,
// constants, casts, graph inputs and outputs.
func toDouble(t *testing.T, m *graph.Model) *graph.Model {
	t.Helper()
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	d, err := graph.Parse(data, "")
	if err != nil {
		t.Fatal(err)
	}
	conv := func(tp *onnx.TensorProto) *onnx.TensorProto {
		if graph.TensorType(tp) != graph.Float {
			return tp
		}
		v, err := graph.Floats(tp)
		if err != nil {
			t.Fatal(err)
		}
		return doubleTensor(tp.Name, tp.Dims, f64(v))
	}
	g := d.Graph()
	for i, tp := range g.Initializer {
		g.Initializer[i] = conv(tp)
	}
	for _, n := range g.Node {
		for _, a := range n.Attribute {
			switch {
			case a.T != nil:
				a.T = conv(a.T)
			case n.OpType == "Cast" && a.Name == "to" && a.I == int64(graph.Float):
				a.I = int64(graph.Double)
			case n.OpType == "Constant" && a.Name == "value_float":
				*a = *graph.AttrTensor("value", doubleTensor("", nil, []float64{float64(a.F)}))
			}
		}
	}
	for _, vs := range [][]*onnx.ValueInfoProto{g.Input, g.Output, g.ValueInfo} {
		for _, v := range vs {
			if tt := v.GetType().GetTensorType(); tt != nil && tt.ElemType == int32(graph.Float) {
				tt.ElemType = int32(graph.Double)
			}
		}
	}
	d.Reindex()
	return d
}

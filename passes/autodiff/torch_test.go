package autodiff_test

import (
	"encoding/json"
	"math"
	"os"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/autodiff"
)

type reference struct {
	Loss struct {
		Value float64 `json:"value"`
	} `json:"loss"`
	Gradients map[string]map[string]struct {
		File       string  `json:"file"`
		Shape      []int64 `json:"shape"`
		Transposed bool    `json:"transposed"`
	} `json:"gradients"`
}

func loadReference(t *testing.T) *reference {
	t.Helper()
	data := fixture.Read(t, fixture.TorchDir+"/"+fixture.TransformerRef)
	var ref reference
	if err := json.Unmarshal(data, &ref); err != nil {
		t.Fatal(err)
	}
	return &ref
}

func readF32(t *testing.T, path string) []float32 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(uint32(b[4*i]) | uint32(b[4*i+1])<<8 | uint32(b[4*i+2])<<16 | uint32(b[4*i+3])<<24)
	}
	return v
}

func readNpy(t *testing.T, name string) *ort.Tensor {
	t.Helper()
	x, err := ort.ReadNpy(fixture.Torch(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// batchFeeds returns paramFeeds and the fixture's batch: source and
// target ids and labels.
func batchFeeds(t *testing.T, src *graph.Model, info *autodiff.Info) map[string]*ort.Tensor {
	t.Helper()
	feeds := paramFeeds(t, src, info)
	feeds["src_ids"] = readNpy(t, fixture.TransformerSrc)
	feeds["tgt_ids"] = readNpy(t, fixture.TransformerTgt)
	feeds["labels"] = readNpy(t, fixture.TransformerLabels)
	return feeds
}

// paramFeeds returns the initial values of the training graph's
// parameters (the source model's initializers).
func paramFeeds(t *testing.T, src *graph.Model, info *autodiff.Info) map[string]*ort.Tensor {
	t.Helper()
	feeds := map[string]*ort.Tensor{}
	for _, p := range info.Params {
		v, err := graph.Floats(src.Initializer(p.Name))
		if err != nil {
			t.Fatal(err)
		}
		feeds[p.Name] = ort.Float32(p.Shape, v)
	}
	return feeds
}

// trainingSession builds m's training graph with opts and opens it in
// onnxruntime with o; the caller closes the session.
func trainingSession(t *testing.T, m *graph.Model, opts autodiff.Options, o *ort.Options) (*ort.Session, *autodiff.Info) {
	t.Helper()
	tm, info, err := autodiff.Build(m, opts)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ort.Open(tm, o)
	if err != nil {
		t.Fatal(err)
	}
	return s, info
}

func runTraining(t *testing.T, src *graph.Model, opts autodiff.Options) (map[string]*ort.Tensor, *autodiff.Info) {
	t.Helper()
	s, info := trainingSession(t, src, opts, nil)
	defer s.Close()
	feeds := batchFeeds(t, src, info)
	out, err := s.Run(feeds)
	if err != nil {
		t.Fatal(err)
	}
	return out, info
}

func maxAbs(v []float32) float64 {
	m := 0.0
	for _, x := range v {
		m = max(m, math.Abs(float64(x)))
	}
	return m
}

// TestTorchParity checks the untied training graph of PyTorch's exported
// transformer against the loss and per-initializer gradients PyTorch
// computed, and the tied build against their sums.
func TestTorchParity(t *testing.T) {
	ref := loadReference(t)
	for _, file := range []string{fixture.Transformer14, fixture.Transformer17} {
		t.Run(file, func(t *testing.T) {
			src, err := graph.Load(fixture.Torch(t, file))
			if err != nil {
				t.Fatal(err)
			}
			loss := autodiff.Loss{Kind: "ce", LabelSmoothing: 0.1, PadID: 0}
			out, info := runTraining(t, src, autodiff.Options{Untie: true, Loss: loss})
			if want := src.Opset(""); info.Opset != want {
				t.Errorf("training graph opset %d, want the model's %d", info.Opset, want)
			}
			grads := ref.Gradients[file]
			if len(info.Params) != len(grads) {
				names := []string{}
				for _, p := range info.Params {
					if _, ok := grads[p.Name]; !ok {
						names = append(names, p.Name)
					}
				}
				t.Errorf("%d parameters, reference has %d; extra: %v", len(info.Params), len(grads), names)
			}
			got := float64(out["loss"].Float32s()[0])
			if rel := math.Abs(got-ref.Loss.Value) / ref.Loss.Value; rel > 1e-5 {
				t.Errorf("loss %.8f, PyTorch %.8f (rel %.2g)", got, ref.Loss.Value, rel)
			}
			worst := 0.0
			for name, g := range grads {
				res, ok := out[name+"_grad"]
				if !ok {
					t.Errorf("no gradient output for %s", name)
					continue
				}
				want := readF32(t, fixture.Torch(t, g.File))
				have := res.Float32s()
				if len(have) != len(want) {
					t.Errorf("%s: %d values, want %d", name, len(have), len(want))
					continue
				}
				err := 0.0
				for i := range want {
					err = max(err, math.Abs(float64(have[i]-want[i])))
				}
				rel := err / maxAbs(want)
				worst = max(worst, rel)
				if rel > 1e-4 {
					t.Errorf("%s: max abs error %.3g = %.3g × max|g|", name, err, rel)
				}
			}
			t.Logf("loss %.8f (PyTorch %.8f); worst gradient error %.3g × max|g| over %d tensors", got, ref.Loss.Value, worst, len(grads))

			// Tied: emb.weight is one parameter, the transposed copy is rebuilt.
			tout, tinfo := runTraining(t, src, autodiff.Options{Loss: loss})
			if len(tinfo.Ties) != 1 || tinfo.Ties[0].Param != "emb.weight" || !tinfo.Ties[0].Transposed {
				t.Fatalf("ties %+v, want emb.weight with its transposed copy", tinfo.Ties)
			}
			cp := tinfo.Ties[0].Copy
			if _, ok := tout[cp+"_grad"]; ok {
				t.Errorf("tied copy %s has its own gradient output", cp)
			}
			if len(tinfo.Params) != len(info.Params)-1 {
				t.Errorf("tied build has %d parameters, want %d", len(tinfo.Params), len(info.Params)-1)
			}
			emb := readF32(t, fixture.Torch(t, grads["emb.weight"].File))
			proj := readF32(t, fixture.Torch(t, grads[cp].File)) // [64, 512]
			rows, cols := int(grads["emb.weight"].Shape[0]), int(grads["emb.weight"].Shape[1])
			want := make([]float32, len(emb))
			for i := 0; i < rows; i++ {
				for j := 0; j < cols; j++ {
					want[i*cols+j] = emb[i*cols+j] + proj[j*rows+i]
				}
			}
			have := tout["emb.weight_grad"].Float32s()
			err = nil
			e := 0.0
			for i := range want {
				e = max(e, math.Abs(float64(have[i]-want[i])))
			}
			if rel := e / maxAbs(want); rel > 1e-4 {
				t.Errorf("tied gradient: max abs error %.3g = %.3g × max|g|", e, rel)
			}
			if l := float64(tout["loss"].Float32s()[0]); math.Abs(l-got) > 1e-6*got {
				t.Errorf("tied loss %v, untied %v", l, got)
			}
		})
	}
}

// TestAccumulate checks an accumulating training graph (Options.Accumulate)
// on PyTorch's exported transformer, tied: bound to the same buffers as
// accumulator input and gradient output, one run leaves acc + s·grad in
// them, with grad the plain graph's gradients.
func TestAccumulate(t *testing.T) {
	src, err := graph.Load(fixture.Torch(t, fixture.Transformer17))
	if err != nil {
		t.Fatal(err)
	}
	loss := autodiff.Loss{Kind: "ce", LabelSmoothing: 0.1, PadID: 0}
	plain, _ := runTraining(t, src, autodiff.Options{Loss: loss})
	tm, info, err := autodiff.Build(src, autodiff.Options{Loss: loss, Accumulate: true})
	if err != nil {
		t.Fatal(err)
	}
	if info.GradScale != autodiff.GradScaleInput {
		t.Fatalf("GradScale %q, want %q", info.GradScale, autodiff.GradScaleInput)
	}
	s, err := ort.Open(tm, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	feeds := batchFeeds(t, src, info)
	const scale = 0.375
	feeds[info.GradScale] = ort.Float32(nil, []float32{scale})
	acc := map[string][]float32{}
	into := map[string]*ort.Tensor{}
	for k, p := range info.Params {
		if p.GradIn != p.Name+autodiff.GradInSuffix {
			t.Fatalf("accumulator of %q is %q", p.Name, p.GradIn)
		}
		n := int(graph.NumElements(p.Shape))
		buf := make([]float32, n)
		start := make([]float32, n)
		for i := range buf {
			start[i] = float32((i*7+k)%13) / 13
		}
		copy(buf, start)
		acc[p.Name] = start
		feeds[p.GradIn] = ort.Float32(p.Shape, buf)
		into[p.Grad] = feeds[p.GradIn]
	}
	out, err := s.RunInto(feeds, into)
	if err != nil {
		t.Fatal(err)
	}
	if d := math.Abs(float64(out["loss"].Float32s()[0] - plain["loss"].Float32s()[0])); d > 1e-6 {
		t.Errorf("loss differs from the plain graph's by %g", d)
	}
	for _, p := range info.Params {
		got, g := into[p.Grad].Float32s(), plain[p.Grad].Float32s()
		for i := range got {
			want := float64(acc[p.Name][i]) + scale*float64(g[i])
			if d := math.Abs(float64(got[i]) - want); d > 1e-6*(1+math.Abs(want)) {
				t.Fatalf("%s[%d] = %g, want %g + %g·%g = %g", p.Grad, i, got[i], acc[p.Name][i], scale, g[i], want)
			}
		}
	}
}

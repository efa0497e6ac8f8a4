package main

import (
	"encoding/json"
	"github.com/qatc/qatc/inspect"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/qatc/qatc/export"
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/passes/fold"
	"github.com/qatc/qatc/passes/quantize"
)

// fp32Model is the PyTorch-exported opset-17 fixture.
func fp32Model(t testing.TB) string { return fixture.Torch(t, fixture.Transformer17) }

// insertModel writes a QAT model of the shared opset-17 model with p.
func insertModel(t *testing.T, p quantize.Params) (*graph.Model, string) {
	t.Helper()
	m, err := graph.Load(fp32Model(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := quantize.Insert(m, p); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "qat.onnx")
	if err := m.Save(path); err != nil {
		t.Fatal(err)
	}
	return m, path
}

// exportModel writes the qdq export of the QAT model m next to it.
func exportModel(t *testing.T, m *graph.Model, qatPath string) string {
	t.Helper()
	return exportFormat(t, m, qatPath, "qdq")
}

func exportFormat(t *testing.T, m *graph.Model, qatPath, format string) string {
	t.Helper()
	x, _, err := export.Export(m, format, nil)
	if err != nil {
		t.Fatal(err)
	}
	path := strings.TrimSuffix(qatPath, ".onnx") + "." + format + ".onnx"
	if err := x.Save(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// fakeQuant is NeurST's signed weight quantizer, computed here from the
// float weight and the clip alone: integers round(w/s) (ties to even, as
// ONNX rounds) within qmin..qmax, s = clip/qmax in float32.
func fakeQuant(w []float32, clip float32, bits int) (ints []int64, sqnr, clipped float64) {
	qmax := float64(int(1)<<(bits-1) - 1)
	qmin := -qmax - 1
	s := clip / float32(qmax)
	var sig, noise float64
	n := 0
	for _, x := range w {
		r := math.RoundToEven(float64(x / s))
		if r < qmin || r > qmax {
			n++
		}
		r = math.Max(qmin, math.Min(qmax, r))
		ints = append(ints, int64(r))
		y := float64(float32(r) * s)
		sig += float64(x) * float64(x)
		noise += (float64(x) - y) * (float64(x) - y)
	}
	return ints, 10 * math.Log10(sig/noise), float64(n) / float64(len(w))
}

func inspectJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	code, out, errOut := qatc(t, append([]string{"inspect", "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("inspect %v: exit %d: %s", args, code, errOut)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("inspect %v: %v\n%s", args, err, out)
	}
}

func TestInspectQuantizerTable(t *testing.T) {
	weights := []string{"onnx::MatMul_1051", "emb.weight", "onnx::MatMul_1092", "tf.encoder.layers.0.self_attn.out_proj.weight"}
	for _, tc := range []struct {
		name    string
		clip    float32
		clipped bool // whether some weight values lie outside the clip
	}{
		{"clip 1 above max |w|", 1, false},
		{"clip 0.05 inside the weights", 0.05, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := quantize.DefaultParams()
			p.WeightClipMax = tc.clip
			m, path := insertModel(t, p)
			var s inspect.Summary
			inspectJSON(t, &s, path)
			kinds := map[string]int{}
			for _, r := range s.Quantizers {
				kinds[r.Kind]++
			}
			if len(s.Quantizers) != 68 || kinds["weight"] != 22 || kinds["act"] != 36 || kinds["relu"] != 4 || kinds["softmax"] != 6 {
				t.Fatalf("%d quantizers %v, want 68: 22 weight, 36 act, 4 relu, 6 softmax", len(s.Quantizers), kinds)
			}
			rows := map[string]inspect.Row{}
			for _, r := range s.Quantizers {
				rows[r.Tensor] = r
				switch r.Kind {
				case "weight":
					if r.SQNR == nil || r.Clipped == nil || math.IsInf(*r.SQNR, 0) || !(*r.SQNR > 0) {
						t.Errorf("%s: sqnr %v clipped %v, want finite positive numbers", r.Tensor, r.SQNR, r.Clipped)
					}
				case "act", "relu":
					if r.SQNR != nil || r.Clipped != nil || r.Clip.Max != 16 || r.Clip.Count != 1 {
						t.Errorf("activation %s: %+v, want clip 16 and no clipped share or SQNR", r.Tensor, r)
					}
					want := float32(16) / 127
					if r.Kind == "relu" {
						want = float32(16) / 255
					}
					if r.Scale.Max != float64(want) {
						t.Errorf("%s: scale %v, want %v", r.Tensor, r.Scale.Max, want)
					}
				case "softmax":
					if r.Clip != nil || r.Scale.Max != 1.0/256 {
						t.Errorf("softmax %s: clip %v scale %v, want - and 1/256", r.Tensor, r.Clip, r.Scale)
					}
				}
			}
			for _, name := range weights {
				r, ok := rows[name]
				if !ok {
					t.Fatalf("no quantizer row for %s", name)
				}
				w, err := graph.Floats(m.Initializer(name))
				if err != nil {
					t.Fatal(err)
				}
				maxAbs := 0.0
				for _, x := range w {
					maxAbs = math.Max(maxAbs, math.Abs(float64(x)))
				}
				if (maxAbs > float64(tc.clip)) != tc.clipped {
					t.Fatalf("%s: max |w| %v against clip %v: the test's premise is wrong", name, maxAbs, tc.clip)
				}
				_, sqnr, clipped := fakeQuant(w, tc.clip, 8)
				if math.Abs(*r.SQNR-sqnr) > 1e-9*sqnr || *r.Clipped != clipped {
					t.Errorf("%s: sqnr %v clipped %v, computed here %v and %v", name, *r.SQNR, *r.Clipped, sqnr, clipped)
				}
				if tc.clipped != (*r.Clipped > 0) {
					t.Errorf("%s: clipped share %v with clip %v and max |w| %v", name, *r.Clipped, tc.clip, maxAbs)
				}
				if r.Bits != 8 || r.Granularity != "tensor" || r.Clip.Max != float64(tc.clip) || r.Scale.Max != float64(tc.clip/127) {
					t.Errorf("%s: %+v", name, r)
				}
			}
			code, out, _ := qatc(t, "inspect", path)
			if code != 0 || !strings.Contains(out, "\n68 quantizers\ntensor ") || !regexpLine(out, `onnx::MatMul_1051 +weight +8 +tensor +`) {
				t.Errorf("text table: exit %d\n%s", code, out)
			}

			// The export keeps the record and the scales; its float weights
			// are gone, so there is no clipped share or SQNR.
			var x inspect.Summary
			inspectJSON(t, &x, exportModel(t, m, path))
			if len(x.Quantizers) != 68 {
				t.Fatalf("export: %d quantizers, want 68", len(x.Quantizers))
			}
			for i, r := range x.Quantizers {
				q := s.Quantizers[i]
				if r.Tensor != q.Tensor || r.Kind != q.Kind || r.SQNR != nil || r.Clipped != nil || r.Scale == nil || *r.Scale != *q.Scale {
					t.Errorf("export row %+v, QAT row %+v", r, q)
				}
			}
		})
	}
}

// regexpLine reports whether some line of s starts with the pattern.
func regexpLine(s, pattern string) bool {
	return regexp.MustCompile(`(?m)^` + pattern).MatchString(s)
}

func TestInspectTensorText(t *testing.T) {
	m, path := insertModel(t, quantize.DefaultParams())
	w, err := graph.Floats(m.Initializer("onnx::MatMul_1051"))
	if err != nil {
		t.Fatal(err)
	}
	ints, _, _ := fakeQuant(w, 1, 8)
	code, out, errOut := qatc(t, "inspect", path, "--tensor", "onnx::MatMul_1051")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	for i, want := range []string{
		"tensor      onnx::MatMul_1051",
		"integers    onnx::MatMul_1051_quantized: int8, folded from the QAT model's float weight",
		"shape       (64, 128)",
		"dtype       int8 (values -128..127)",
		"quantizer   weight, 8 bits, per tensor",
		"clip        1",
		"scale       0.00787401572",
		"output_min  ",
		"output_max  ",
		"values      min ",
	} {
		if i >= len(lines) || !strings.HasPrefix(lines[i], want) {
			t.Fatalf("line %d should start with %q\n%s", i+1, want, out)
		}
	}
	s := float64(float32(1) / 127)
	for i, want := range []float64{-128 * s, 127 * s} {
		got, err := strconv.ParseFloat(strings.Fields(lines[7+i])[1], 64)
		if err != nil || math.Abs(got-want) > 1e-6 {
			t.Errorf("%s: want %.9g", lines[7+i], want)
		}
	}
	// numpy's summary: 3 rows, " ...", 3 rows; each row 3 values, "...", 3 values.
	matrix := lines[10:]
	if len(matrix) != 7 || matrix[3] != " ..." || !strings.HasPrefix(matrix[0], "[[") || !strings.HasSuffix(matrix[6], "]]") {
		t.Fatalf("matrix not summarised numpy-style:\n%s", strings.Join(matrix, "\n"))
	}
	for r, row := range []int{0, 1, 2, -1, 61, 62, 63} {
		if row < 0 {
			continue
		}
		f := strings.Fields(strings.Trim(matrix[r], "[] "))
		if len(f) != 7 || f[3] != "..." {
			t.Fatalf("row %q", matrix[r])
		}
		for k, col := range []int{0, 1, 2, -1, 125, 126, 127} {
			if col < 0 {
				continue
			}
			if got, want := f[k], strconv.FormatInt(ints[row*128+col], 10); got != want {
				t.Errorf("[%d, %d] = %s, want %s (round(w·127/c))", row, col, got, want)
			}
		}
	}
}

// The QAT model's integers (folded on the fly) and the export's stored
// ones are the same, at 8 bits per tensor and 4 bits per block or channel.
func TestInspectTensorQATvsExport(t *testing.T) {
	for _, tc := range []struct {
		name        string
		bits        int
		granularity string
		block       int
		scales      int // of onnx::MatMul_1051 [64, 128]
	}{
		{"W8 per tensor", 8, quantize.Tensor, 0, 1},
		{"W4 per channel", 4, quantize.Channel, 0, 128},
		{"W4 per block of 32", 4, quantize.Block, 32, 256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := quantize.DefaultParams()
			p.WeightBits, p.Granularity, p.BlockSize, p.WeightInit = tc.bits, tc.granularity, tc.block, quantize.InitMax
			m, path := insertModel(t, p)
			xpath := exportModel(t, m, path)
			qmin, qmax := -128, 127
			if tc.bits == 4 {
				qmin, qmax = -8, 7
			}
			for _, names := range [][2]string{
				{"onnx::MatMul_1051", "onnx::MatMul_1051"},
				{"onnx::MatMul_1051", "onnx::MatMul_1051_quantized"},
				{"emb.weight", "emb.weight"},
				{"onnx::MatMul_1092", "onnx::MatMul_1092_quantized"},
			} {
				var a, b inspect.Tensor
				inspectJSON(t, &a, path, "--tensor", names[0])
				inspectJSON(t, &b, xpath, "--tensor", names[1])
				if a.Source != "qat" || b.Source != "export" || a.Tensor != names[0] || b.Tensor != names[0] || a.Stored != b.Stored {
					t.Errorf("%s: views %s/%s of %s/%s stored as %s/%s", names[0], a.Source, b.Source, a.Tensor, b.Tensor, a.Stored, b.Stored)
				}
				if a.DType != b.DType || a.QMin != qmin || a.QMax != qmax || a.Bits != tc.bits || a.Granularity != tc.granularity ||
					b.Granularity != tc.granularity || !equalInts(a.Shape, b.Shape) || a.Ints.Min < int64(qmin) || a.Ints.Max > int64(qmax) {
					t.Errorf("%s: QAT %+v\nexport %+v", names[0], a, b)
				}
				if !equalInts(a.Ints.Histogram, b.Ints.Histogram) || a.Ints.Mean != b.Ints.Mean || *a.Scale != *b.Scale ||
					math.Abs(a.OutputMin-b.OutputMin) > 1e-6 || math.Abs(a.OutputMax-b.OutputMax) > 1e-6 {
					t.Errorf("%s: QAT and export integers differ:\n%+v\n%+v", names[0], a.Ints, b.Ints)
				}
				if names[0] == "onnx::MatMul_1051" && (a.Scale.Count != tc.scales || !equalInts(a.Shape, []int64{64, 128})) {
					t.Errorf("%s: %d scales, shape %v; want %d, [64 128]", names[0], a.Scale.Count, a.Shape, tc.scales)
				}
				// The printed integers are the same too.
				_, ta, _ := qatc(t, "inspect", path, "--tensor", names[0])
				_, tb, _ := qatc(t, "inspect", xpath, "--tensor", names[1])
				if ma, mb := ta[strings.Index(ta, "\n["):], tb[strings.Index(tb, "\n["):]; ma != mb {
					t.Errorf("%s: printed integers differ:\n%s\n%s", names[0], ma, mb)
				}
				if want := "dtype       " + a.DType + " (values " + strconv.Itoa(qmin) + ".." + strconv.Itoa(qmax) + ")"; !strings.Contains(ta, want) || !strings.Contains(tb, want) {
					t.Errorf("%s: no %q line in\n%s\n%s", names[0], want, ta, tb)
				}
			}
			if tc.granularity == quantize.Block {
				// onnxruntime's MatMulNBits packs the same integers (shifted
				// by 8, transposed to [N, blocks, blob]); inspect shows them
				// as the product's [K, N] weight, onnx::MatMul_1051's layout.
				if !slices.Contains(export.Formats, "matmulnbits") {
					t.Fatalf("export has no matmulnbits format")
				}
				npath := exportFormat(t, m, path, "matmulnbits")
				var a, b inspect.Tensor
				inspectJSON(t, &a, path, "--tensor", "onnx::MatMul_1051")
				inspectJSON(t, &b, npath, "--tensor", "onnx::MatMul_1051_nbits")
				if b.Tensor != a.Tensor || b.Stored != "onnx::MatMul_1051_nbits" || !equalInts(a.Ints.Histogram, b.Ints.Histogram) || *a.Scale != *b.Scale || !equalInts(a.Shape, b.Shape) {
					t.Errorf("MatMulNBits view %+v\nQAT view %+v", b, a)
				}
				_, ta, _ := qatc(t, "inspect", path, "--tensor", "onnx::MatMul_1051")
				_, tb, _ := qatc(t, "inspect", npath, "--tensor", "onnx::MatMul_1051")
				if ma, mb := ta[strings.Index(ta, "\n["):], tb[strings.Index(tb, "\n["):]; ma != mb {
					t.Errorf("MatMulNBits: printed integers differ:\n%s\n%s", ma, mb)
				}
			}
			if tc.granularity != quantize.Tensor {
				// The table's SQNR and clipped share, from the float weight
				// [K=64, N=128] and its clip initializer, [N] per channel or
				// [N, K/32] per block (DESIGN.md's layout), computed here.
				var s inspect.Summary
				inspectJSON(t, &s, path)
				var row *inspect.Row
				for i := range s.Quantizers {
					if s.Quantizers[i].Tensor == "onnx::MatMul_1051" {
						row = &s.Quantizers[i]
					}
				}
				rec, err := quantize.ReadRecord(m)
				if err != nil {
					t.Fatal(err)
				}
				w, err1 := graph.Floats(m.Initializer("onnx::MatMul_1051"))
				clip, err2 := graph.Floats(m.Initializer(rec.Lookup("onnx::MatMul_1051").Clip))
				if err1 != nil || err2 != nil || row == nil || row.SQNR == nil {
					t.Fatalf("%v %v %+v", err1, err2, row)
				}
				var sig, noise float64
				clipped := 0
				for k := range 64 {
					for n := range 128 {
						c := clip[n]
						if tc.granularity == quantize.Block {
							c = clip[n*2+k/32]
						}
						x := w[k*128+n]
						q, _, cl := fakeQuant([]float32{x}, c, 4)
						y := float64(float32(q[0]) * (c / 7))
						sig += float64(x) * float64(x)
						noise += (float64(x) - y) * (float64(x) - y)
						clipped += int(cl)
					}
				}
				if sqnr := 10 * math.Log10(sig/noise); math.Abs(*row.SQNR-sqnr) > 1e-9*sqnr || *row.Clipped != float64(clipped)/(64*128) || row.Scale.Count != tc.scales {
					t.Errorf("table row %+v: want sqnr %v, clipped %v, %d scales", *row, sqnr, float64(clipped)/(64*128), tc.scales)
				}
			}
			if tc.bits == 4 {
				var v inspect.Tensor
				inspectJSON(t, &v, path, "--tensor", "onnx::MatMul_1051")
				// Max initialisation puts each block's largest |w| on ±7.
				if v.DType != "int4" || v.Ints.Max != 7 || v.Ints.Min < -8 || len(v.Ints.Histogram) != 16 {
					t.Errorf("4-bit view: %+v", v)
				}
			}
		})
	}
}

func equalInts[T int64 | int](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestInspectPlot(t *testing.T) {
	m, path := insertModel(t, quantize.DefaultParams())
	out := filepath.Join(t.TempDir(), "emb.png")
	var v inspect.Tensor
	inspectJSON(t, &v, path, "--tensor", "emb.weight", "--plot", out)
	if v.Plot != out {
		t.Errorf("plot %q, want %q", v.Plot, out)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	b := img.Bounds()
	if b.Dx() < 100 || b.Dy() < 100 {
		t.Fatalf("plot is %v", b)
	}
	// The histogram bars (blue) and the clip lines (red) are drawn.
	blue, red := 0, 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			switch {
			case bl > 0xa000 && r < 0x6000 && g < 0x8000:
				blue++
			case r > 0xb000 && g < 0x4000 && bl < 0x4000:
				red++
			}
		}
	}
	t.Logf("%v plot: %d blue, %d red pixels", b, blue, red)
	// Two vertical lines over most of the height: at least one image
	// height of red pixels.
	if blue < b.Dx()*b.Dy()/50 || red < b.Dy() {
		t.Errorf("plot has %d blue and %d red pixels of %d", blue, red, b.Dx()*b.Dy())
	}
	// The export has no float weights to plot.
	code, _, errOut := qatc(t, "inspect", exportModel(t, m, path), "--tensor", "emb.weight", "--plot", out)
	if code != 1 || !strings.Contains(errOut, "run inspect --plot on the QAT model") {
		t.Errorf("plot of an export: exit %d: %s", code, errOut)
	}
}

func TestInspectTensorErrors(t *testing.T) {
	m, path := insertModel(t, quantize.DefaultParams())
	xpath := exportModel(t, m, path)
	plotPath := filepath.Join(t.TempDir(), "x.png")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"unknown tensor", []string{path, "--tensor", "onnx::MatMul_105"}, 1,
			[]string{"has no tensor \"onnx::MatMul_105\"", "close names: onnx::MatMul_1051"}},
		{"unknown in export", []string{xpath, "--tensor", "emb.weights"}, 1,
			[]string{"has no tensor \"emb.weights\"", "close names: emb.weight"}},
		{"not quantized", []string{path, "--tensor", "tf.encoder.layers.0.linear1.bias"}, 1,
			[]string{"does not quantize the initializer \"tf.encoder.layers.0.linear1.bias\"", "tf.encoder.layers.0.self_attn.out_proj.weight"}},
		{"activation", []string{path, "--tensor", "/tf/encoder/layers.0/Relu_output_0"}, 1,
			[]string{"activation quantizer (relu, 8 bits)"}},
		{"activation in export", []string{xpath, "--tensor", "/tf/encoder/layers.0/Relu_output_0"}, 1,
			[]string{"activation quantizer (relu, 8 bits)"}},
		{"fp32 model", []string{fp32Model(t), "--tensor", "emb.weight"}, 1,
			[]string{"has no quantizers"}},
		{"plot of a missing tensor", []string{path, "--tensor", "pe", "--plot", plotPath}, 1,
			[]string{"does not quantize the initializer \"pe\""}},
		{"plot without tensor", []string{path, "--plot", plotPath}, 2,
			[]string{"--tensor NAME"}},
		{"plot format", []string{path, "--tensor", "emb.weight", "--plot", plotPath + ".xyz"}, 1,
			[]string{"x.png.xyz", ".png"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := qatc(t, append([]string{"inspect"}, tc.args...)...)
			if code != tc.code || out != "" {
				t.Errorf("exit %d, want %d; stdout %q", code, tc.code, out)
			}
			if strings.Count(strings.TrimRight(errOut, "\n"), "\n") != 0 || !strings.HasPrefix(errOut, "qatc: ") {
				t.Errorf("stderr is not one qatc line: %q", errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr %q does not mention %q", errOut, w)
				}
			}
		})
	}
	if _, err := os.Stat(plotPath); !os.IsNotExist(err) {
		t.Errorf("a failed --plot left %s behind", plotPath)
	}
}

// Every export format keeps the weights' integers and scales where inspect
// finds them: behind DequantizeLinear (qdq), as the B input of
// MatMulIntegerToFloat (qoperator) or MatMulInteger (dynamic, the scale
// applied after), or packed for MatMulNBits.
func TestInspectExportFormats(t *testing.T) {
	m, path := insertModel(t, quantize.DefaultParams())
	var qat inspect.Summary
	inspectJSON(t, &qat, path)
	var want inspect.Tensor
	inspectJSON(t, &want, path, "--tensor", "onnx::MatMul_1051")
	for _, format := range export.Formats {
		t.Run(format, func(t *testing.T) {
			x := exportFormat(t, m, path, format)
			var s inspect.Summary
			inspectJSON(t, &s, x)
			if len(s.Quantizers) != len(qat.Quantizers) {
				t.Fatalf("%d quantizers, want %d", len(s.Quantizers), len(qat.Quantizers))
			}
			for i, r := range s.Quantizers {
				// MatMulNBits repeats a tensor's scale over its blocks.
				if q := qat.Quantizers[i]; r.Kind == "weight" && (r.Scale == nil || r.Scale.Min != q.Scale.Min || r.Scale.Max != q.Scale.Max) {
					t.Errorf("%s: scale %v, QAT model %v", r.Tensor, r.Scale, q.Scale)
				}
			}
			var v inspect.Tensor
			inspectJSON(t, &v, x, "--tensor", "onnx::MatMul_1051")
			if v.Source != "export" || !equalInts(v.Ints.Histogram, want.Ints.Histogram) || !equalInts(v.Shape, want.Shape) || v.Scale.Max != want.Scale.Max {
				t.Errorf("--tensor: %+v\nQAT model: %+v", v, want)
			}
		})
	}
}

// An int8 model that qatc did not write (no metadata) is inspected from
// its graph alone.
func TestInspectForeignInt8(t *testing.T) {
	m, path := insertModel(t, quantize.DefaultParams())
	x, _, err := export.Export(m, "qdq", nil)
	if err != nil {
		t.Fatal(err)
	}
	x.Proto.MetadataProps = nil
	foreign := filepath.Join(t.TempDir(), "foreign.onnx")
	if err := x.Save(foreign); err != nil {
		t.Fatal(err)
	}
	var s inspect.Summary
	inspectJSON(t, &s, foreign)
	if len(s.Quantizers) != 22 {
		t.Fatalf("%d quantizers, want the 22 stored weights", len(s.Quantizers))
	}
	for _, r := range s.Quantizers {
		if r.Kind != "weight" || r.Bits != 8 || r.Scale == nil || r.Scale.Max != float64(float32(1)/127) || !strings.HasSuffix(r.Tensor, "_quantized") {
			t.Errorf("row %+v", r)
		}
	}
	var a, b inspect.Tensor
	inspectJSON(t, &a, path, "--tensor", "onnx::MatMul_1051")
	inspectJSON(t, &b, foreign, "--tensor", "onnx::MatMul_1051_quantized")
	if b.Tensor != "onnx::MatMul_1051_quantized" || b.DType != "int8" || !equalInts(a.Ints.Histogram, b.Ints.Histogram) || math.Abs(a.OutputMin-b.OutputMin) > 1e-6 {
		t.Errorf("foreign view %+v\nQAT view %+v", b, a)
	}
}

// TestInspectFusedWeight inspects a weight that the qoperator export
// stores side by side with the others read by the same activation (the
// functional export's separate q, k and v projections, fold.FusedKey):
// inspect finds its columns and prints the integers the QAT model folds.
func TestInspectFusedWeight(t *testing.T) {
	dir := t.TempDir()
	qat := filepath.Join(dir, "qat.onnx")
	if code, out, errOut := qatc(t, "insert", fixture.Torch(t, fixture.PostNormFn), "-o", qat); code != 0 {
		t.Fatalf("insert: exit %d\n%s%s", code, out, errOut)
	}
	x := filepath.Join(dir, "x.onnx")
	if code, out, errOut := qatc(t, "export", qat, "-o", x, "--format", "qoperator", "--src", fixture.Torch(t, "postnorm.src")); code != 0 {
		t.Fatalf("export: exit %d\n%s%s", code, out, errOut)
	}
	m, err := graph.Load(x)
	if err != nil {
		t.Fatal(err)
	}
	fused, err := fold.FusedWeights(m)
	if err != nil || len(fused) == 0 {
		t.Fatalf("the export records no fused weights: %v", err)
	}
	var weight string
	for _, parts := range fused {
		weight = strings.TrimSuffix(parts[1].Weight, "_quantized") // a middle part, not at column 0
		break
	}
	_, ta, errA := qatc(t, "inspect", qat, "--tensor", weight)
	code, tb, errB := qatc(t, "inspect", x, "--tensor", weight)
	if code != 0 || !strings.Contains(tb, "columns") {
		t.Fatalf("inspect --tensor %s on the export: exit %d\n%s%s%s", weight, code, tb, errA, errB)
	}
	if ma, mb := ta[strings.Index(ta, "\n["):], tb[strings.Index(tb, "\n["):]; ma != mb {
		t.Errorf("%s: the export's integers differ from the QAT model's:\n%s\n%s", weight, ma, mb)
	}
	t.Logf("%s", tb)
}

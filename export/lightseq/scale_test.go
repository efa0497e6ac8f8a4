package lightseq_test

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/qatc/qatc/export/lightseq"
	"github.com/qatc/qatc/export/lightseq/lspb"
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/internal/fixture"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/passes/transformer"
	"github.com/qatc/qatc/testmodels"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// TestScalingsFolded exports the tiny model and testmodels.Rescale's
// equivalent of it (q and k scaled by Pow(head size, −¼) from their
// shapes, V, the context and the hidden activation by compensated
// literals): the recogniser sees through every scaling and the writer
// folds them, so both files hold the same integer weights, biases,
// LayerNorms and clips (to float rounding); the rescaled file passes
// Verify.
func TestScalingsFolded(t *testing.T) {
	cfg := testmodels.Tiny()
	cfg.Heads = 2 // head size 16: Pow(16, −¼) = ½, so every factor is exact
	b := batchOf(cfg, 8, 12, 10, 7)
	var files []*lspb.QuantTransformer
	for _, rescale := range []bool{false, true} {
		m, err := testmodels.Build(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if rescale {
			if err := testmodels.Rescale(m); err != nil {
				t.Fatal(err)
			}
		}
		m = calibratedQAT(t, m, b, maxParams())
		qt, rep, err := lightseq.Export(m, lightseq.Options{BosID: testmodels.BOS, EosID: testmodels.EOS, Calib: b})
		if err != nil {
			t.Fatal(err)
		}
		if rescale {
			notes := 0
			for _, n := range rep.Notes {
				if len(n) > 0 && (contains(n, "folded into V") || contains(n, "folded into the output projection") || contains(n, "folded into dense2")) {
					notes++
				}
			}
			// 2+2 layers: 6 attentions (V and context each) and 4 FFNs.
			if notes != 6*2+4 {
				t.Errorf("%d notes on folded scalings, want 16: %q", notes, rep.Notes)
			}
			r, err := lightseq.Verify(m, rep.Model, qt, batchOf(cfg, 16, 12, 12, 99))
			if err != nil {
				t.Fatal(err)
			}
			t.Log(r)
		}
		files = append(files, qt)
	}
	bytesFields, floats := 0, 0
	compareFiles(t, "", files[0].ProtoReflect(), files[1].ProtoReflect(), &bytesFields, &floats)
	// 2 encoder layers × 4 kernels, 2 decoder layers × 6, two tables and
	// the encoder-decoder K/V kernel.
	if bytesFields != 2*4+2*6+3 || floats == 0 {
		t.Errorf("compared %d byte fields", bytesFields)
	}
}

// calibratedQAT inserts quantizers with p and sets every activation clip
// to the largest |x| the fp32 model computes on batch, as qatc insert
// --calib-src does (the fp32 model, so that equivalent graphs get
// equivalent clips).
func calibratedQAT(t *testing.T, m *graph.Model, batch map[string]*ort.Tensor, p quantize.Params) *graph.Model {
	t.Helper()
	plan, err := quantize.Plan(m, p)
	if err != nil {
		t.Fatal(err)
	}
	out := runActs(t, m, plan.Quantizers, batch)
	rec, err := quantize.Insert(m, p)
	if err != nil {
		t.Fatal(err)
	}
	setMaxClips(t, m, rec, out)
	return m
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// compareFiles requires every bytes field (the int8 weights) of x and y
// to be equal and every float within 1e-5 relative, field by field.
func compareFiles(t *testing.T, path string, x, y protoreflect.Message, bytesFields, floats *int) {
	t.Helper()
	x.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		w := y.Get(fd)
		name := path + "." + string(fd.Name())
		near := func(a, b float64) bool { return math.Abs(a-b) <= 1e-5*math.Max(1, math.Abs(b)) }
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				compareFiles(t, fmt.Sprintf("%s[%d]", name, i), v.List().Get(i).Message(), w.List().Get(i).Message(), bytesFields, floats)
			}
		case fd.Message() != nil:
			compareFiles(t, name, v.Message(), w.Message(), bytesFields, floats)
		case fd.Kind() == protoreflect.BytesKind:
			*bytesFields++
			p, q := v.Bytes(), w.Bytes()
			diff := len(p) != len(q)
			for i := range p {
				diff = diff || p[i] != q[i]
			}
			if diff {
				t.Errorf("%s: the int8 weights differ", name)
			}
		case fd.IsList() && (fd.Kind() == protoreflect.FloatKind || fd.Kind() == protoreflect.DoubleKind):
			if v.List().Len() != w.List().Len() {
				t.Errorf("%s: %d and %d values", name, v.List().Len(), w.List().Len())
				return true
			}
			for i := 0; i < v.List().Len(); i++ {
				*floats++
				if a, b := v.List().Get(i).Float(), w.List().Get(i).Float(); !near(a, b) {
					t.Errorf("%s[%d]: %g and %g", name, i, a, b)
					return true
				}
			}
		case fd.Kind() == protoreflect.FloatKind || fd.Kind() == protoreflect.DoubleKind:
			*floats++
			if a, b := v.Float(), w.Float(); !near(a, b) {
				t.Errorf("%s: %g and %g", name, a, b)
			}
		default:
			if v.Interface() != w.Interface() {
				t.Errorf("%s: %v and %v", name, v.Interface(), w.Interface())
			}
		}
		return true
	})
}

// TestTorchRefusals: PyTorch exports LightSeq cannot hold are refused for
// that reason alone, after the recogniser has read them: the post-norm
// pair (nn.Transformer and the functional path with Pow-scaled q and k)
// has an output projection other than the target table, which LightSeq
// also uses as the logits kernel; d256 (nn.Transformer's defaults) ends
// its post-norm stacks on a second, final LayerNorm.
func TestTorchRefusals(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{fixture.PostNormNN, "is not the target token table tgt_emb.weight"},
		{fixture.PostNormFn, "is not the target token table tgt_emb.weight"},
		{fixture.D256, "post-norm layers followed by a final LayerNorm"},
	} {
		m, err := graph.Load(fixture.Torch(t, tc.file))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := quantize.Insert(m, maxParams()); err != nil {
			t.Fatal(err)
		}
		_, _, err = lightseq.Export(m, lightseq.Options{BosID: 2, EosID: 3})
		if !errors.Is(err, lightseq.ErrUnsupported) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want it refused: %q", tc.file, err, tc.want)
		}
	}
}

// TestTorchExportPaths: the post-norm pair with its output projection tied
// to the target table in both graphs alike (the same edit to the same
// weight; the trunk is the trained model as PyTorch exported it, fused
// in_proj on one side, Pow-scaled q and k on the other) passes the
// LightSeq export both ways, and the two files hold the same int8
// weights and the same floats (biases, LayerNorms, positions, clips).
func TestTorchExportPaths(t *testing.T) {
	batch := pairBatch(t, 16)
	var files []*lspb.QuantTransformer
	for _, f := range []string{fixture.PostNormNN, fixture.PostNormFn} {
		m, err := graph.Load(fixture.Torch(t, f))
		if err != nil {
			t.Fatal(err)
		}
		tieOutput(t, m)
		// Weight clips at one value: nn.Transformer's paths quantize
		// in_proj as one tensor, the functional one q, k and v apart, so
		// clips from each weight's own range would differ by design.
		m = calibratedQAT(t, m, batch, quantize.DefaultParams())
		qt, rep, err := lightseq.Export(m, lightseq.Options{BosID: 2, EosID: 3, Calib: batch})
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		r, err := lightseq.Verify(m, rep.Model, qt, batch)
		t.Logf("%s: %v", f, r)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		files = append(files, qt)
	}
	var nb, nf int
	compareFiles(t, "", files[0].ProtoReflect(), files[1].ProtoReflect(), &nb, &nf)
	if nb != 2*4+2*6+3 || nf == 0 {
		t.Errorf("compared %d int8 weight fields and %d floats", nb, nf)
	}
}

// tieOutput overwrites the output projection's weight with the target
// table, laid out as the projection reads it.
func tieOutput(t *testing.T, m *graph.Model) {
	t.Helper()
	tm, err := transformer.Recognize(m, transformer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	table, err := graph.Floats(m.Initializer(tm.Tgt.Table))
	if err != nil {
		t.Fatal(err)
	}
	w := m.Initializer(tm.Logits.Weight)
	v, h := tm.Vocab, tm.Hidden
	out := make([]float32, v*h)
	for i := range v {
		for j := range h {
			if tm.Logits.Transposed { // stored [vocab, hidden]
				out[i*h+j] = table[i*h+j]
			} else { // stored [hidden, vocab]
				out[j*v+i] = table[i*h+j]
			}
		}
	}
	if err := graph.SetFloats(w, out); err != nil {
		t.Fatal(err)
	}
}

// pairBatch reads the first n sentence pairs of the post-norm task
// (postnorm.src, postnorm.tgt: token ids) as a batch: sources with EOS,
// targets with BOS in front (teacher forcing), both padded with 0.
func pairBatch(t *testing.T, n int) map[string]*ort.Tensor {
	t.Helper()
	read := func(name string, bos bool) ([][]int64, int) {
		var rows [][]int64
		width := 0
		for _, line := range strings.Split(strings.TrimSpace(string(fixture.Read(t, fixture.TorchDir+"/"+name))), "\n")[:n] {
			var row []int64
			if bos {
				row = append(row, 2)
			}
			for _, f := range strings.Fields(line) {
				id, err := strconv.ParseInt(f, 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				row = append(row, id)
			}
			if !bos {
				row = append(row, 3)
			}
			rows, width = append(rows, row), max(width, len(row))
		}
		return rows, width
	}
	tensor := func(rows [][]int64, width int) *ort.Tensor {
		ids := make([]int64, len(rows)*width)
		for i, r := range rows {
			copy(ids[i*width:], r)
		}
		return ort.Int64([]int64{int64(len(rows)), int64(width)}, ids)
	}
	src, sw := read("postnorm.src", false)
	tgt, tw := read("postnorm.tgt", true)
	return map[string]*ort.Tensor{"src_ids": tensor(src, sw), "tgt_ids": tensor(tgt, tw)}
}

package incremental

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/seq2seq"
	"github.com/qatc/qatc/testmodels"
)

// steps runs the three graphs teacher-forced on src [rows, S] and tgt
// [rows, T]: the encoder, the first decoder step on tgt[:, 0], then one
// step with the cache per further token. It returns the logits
// [rows, T, vocab] in the full model's layout.
func steps(t *testing.T, s *Set, src, tgt []int64, rows int, opt ort.GraphOptimization) []float32 {
	t.Helper()
	open := func(m *graph.Model) *ort.Session {
		sess, err := ort.Open(m, &ort.Options{Threads: 1, Optimization: opt})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sess.Close() })
		return sess
	}
	enc, dec, past := open(s.Encoder), open(s.Decoder), open(s.DecoderWithPast)
	S, T := len(src)/rows, len(tgt)/rows
	mask := make([]int64, len(src))
	for i, id := range src {
		if id != s.Config.PadID {
			mask[i] = 1
		}
	}
	shape := []int64{int64(rows), int64(S)}
	out, err := enc.Run(map[string]*ort.Tensor{seq2seq.InputIDs: ort.Int64(shape, src), seq2seq.AttentionMask: ort.Int64(shape, mask)})
	if err != nil {
		t.Fatal(err)
	}
	column := func(j int) *ort.Tensor {
		c := make([]int64, rows)
		for r := range rows {
			c[r] = tgt[r*T+j]
		}
		return ort.Int64([]int64{int64(rows), 1}, c)
	}
	v := s.Config.Vocab
	logits := make([]float32, rows*T*v)
	keep := func(j int, l *ort.Tensor) {
		f := l.Float32s()
		for r := range rows {
			copy(logits[(r*T+j)*v:(r*T+j+1)*v], f[r*v:(r+1)*v])
		}
	}
	res, err := dec.Run(map[string]*ort.Tensor{seq2seq.InputIDs: column(0), seq2seq.EncoderAttentionMask: ort.Int64(shape, mask), seq2seq.EncoderHiddenStates: out[seq2seq.LastHiddenState]})
	if err != nil {
		t.Fatal(err)
	}
	keep(0, res[seq2seq.Logits])
	cache := map[string]*ort.Tensor{}
	for i := range s.Config.DecoderLayers {
		for _, st := range []string{"decoder", "encoder"} {
			for _, k := range []string{"key", "value"} {
				cache[seq2seq.Past(i, st, k)] = res[seq2seq.Present(i, st, k)]
			}
		}
	}
	for j := 1; j < T; j++ {
		in := map[string]*ort.Tensor{seq2seq.InputIDs: column(j), seq2seq.EncoderAttentionMask: ort.Int64(shape, mask)}
		for k, x := range cache {
			in[k] = x
		}
		res, err := past.Run(in)
		if err != nil {
			t.Fatal(err)
		}
		keep(j, res[seq2seq.Logits])
		for i := range s.Config.DecoderLayers {
			for _, k := range []string{"key", "value"} {
				cache[seq2seq.Past(i, "decoder", k)] = res[seq2seq.Present(i, "decoder", k)]
			}
		}
	}
	return logits
}

// computePositions replaces the testmodel's position slices by a Gather
// of the rows a Range computes from the sequence length, positions the
// recogniser cannot name as a table: the builder copies their
// computation.
func computePositions(t *testing.T, m *graph.Model) {
	t.Helper()
	m.AddInitializer(graph.Int64Tensor("range_start", nil, []int64{0}))
	m.AddInitializer(graph.Int64Tensor("range_delta", nil, []int64{1}))
	m.AddInitializer(graph.Int64Tensor("squeeze_axes", []int64{1}, []int64{0}))
	for _, stack := range []string{"encoder", "decoder"} {
		slice := m.Producer(stack + "/positions")
		if slice == nil || slice.OpType != "Slice" {
			t.Fatalf("no Slice %s/positions", stack)
		}
		m.RemoveNodes(slice)
		m.Op("Squeeze", "", []string{stack + "/length", "squeeze_axes"}, []string{stack + "/length_scalar"})
		m.Op("Range", "", []string{"range_start", stack + "/length_scalar", "range_delta"}, []string{stack + "/position_ids"})
		m.Op("Gather", "", []string{testmodels.PositionTable, stack + "/position_ids"}, []string{stack + "/positions"}, graph.AttrInt("axis", 0))
	}
	if err := m.TopoSort(); err != nil {
		t.Fatal(err)
	}
}

// TestParity checks that the incremental graphs, run step by step with
// the cache, compute the full-sequence model's logits, fp32 and QAT, for
// each flavour of model the testmodels builder makes.
func TestParity(t *testing.T) {
	tiny := testmodels.Tiny()
	post := tiny
	post.PreNorm, post.SharedEmbeddings, post.Seed = false, false, 2
	fused := tiny
	fused.FusedQKV, fused.Activation, fused.Seed = true, "gelu", 3
	old := post
	old.Opset, old.FusedQKV, old.Seed = 14, true, 4
	for _, tc := range []struct {
		name     string
		cfg      testmodels.Config
		computed bool // positions gathered by a computed Range
		rescale  bool // the scalings of testmodels.Rescale
	}{{"pre-norm tied", tiny, false, false}, {"post-norm separate", post, false, false}, {"fused gelu", fused, false, false},
		{"opset 14", old, false, false}, {"computed positions", tiny, true, false}, {"rescaled", post, false, true}} {
		for _, qat := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s qat=%v", tc.name, qat), func(t *testing.T) {
				m, err := testmodels.Build(tc.cfg)
				if err != nil {
					t.Fatal(err)
				}
				if tc.computed {
					computePositions(t, m)
				}
				if tc.rescale {
					if err := testmodels.Rescale(m); err != nil {
						t.Fatal(err)
					}
				}
				if qat {
					if _, err := quantize.Insert(m, quantize.DefaultParams()); err != nil {
						t.Fatal(err)
					}
				}
				s, err := Build(m, Options{Pad: tc.cfg.PadID, BOS: testmodels.BOS, EOS: testmodels.EOS})
				if err != nil {
					t.Fatal(err)
				}
				if tc.computed != (s.Model.Tgt.PositionTable == "") {
					t.Fatalf("position table %q", s.Model.Tgt.PositionTable)
				}
				const rows, S, T = 3, 7, 6
				src, tgt := testmodels.RandomBatch(tc.cfg, rows, S, T, 5)
				full, err := ort.Open(m, &ort.Options{Threads: 1})
				if err != nil {
					t.Fatal(err)
				}
				defer full.Close()
				res, err := full.Run(map[string]*ort.Tensor{
					testmodels.SrcInput: ort.Int64([]int64{rows, S}, src),
					testmodels.TgtInput: ort.Int64([]int64{rows, T}, tgt),
				})
				if err != nil {
					t.Fatal(err)
				}
				want := res[testmodels.LogitsOutput].Float32s()
				got := steps(t, s, src, tgt, rows, ort.OptimizeDefault)
				// Per position: the largest difference over the vocabulary.
				v := s.Config.Vocab
				worst, exact := 0.0, 0
				for p := range rows * T {
					w := 0.0
					for k := range v {
						w = math.Max(w, math.Abs(float64(want[p*v+k]-got[p*v+k])))
					}
					worst = math.Max(worst, w)
					if w <= 1e-5 {
						exact++
					}
				}
				t.Logf("max |logit difference| %.3g, %d of %d positions within 1e-5", worst, exact, rows*T)
				// fp32 agrees to float rounding. With quantizers, a sum
				// taken in another order (a softmax over the cache rather
				// than a masked square) can move an activation across a
				// rounding boundary of its grid: one step (clip/127) of
				// difference at a few positions, exact elsewhere.
				if !qat && worst > 1e-4 || qat && (worst > 0.5 || exact < rows*T*2/3) {
					t.Errorf("max |logit difference| %.3g, %d of %d positions within 1e-5", worst, exact, rows*T)
				}
			})
		}
	}
}

// TestLayout checks the files' inputs and outputs against Optimum's
// seq2seq layout, the config, and each file's quantization record.
func TestLayout(t *testing.T) {
	cfg := testmodels.Tiny()
	m, err := testmodels.Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := quantize.Insert(m, quantize.DefaultParams()); err != nil {
		t.Fatal(err)
	}
	s, err := Build(m, Options{Pad: 0, BOS: 2, EOS: 3})
	if err != nil {
		t.Fatal(err)
	}
	io := func(vs []*onnx.ValueInfoProto) []string {
		var out []string
		for _, v := range vs {
			var dims []string
			for _, d := range v.GetType().GetTensorType().GetShape().GetDim() {
				if d.GetDimParam() != "" {
					dims = append(dims, d.GetDimParam())
				} else {
					dims = append(dims, fmt.Sprint(d.GetDimValue()))
				}
			}
			out = append(out, fmt.Sprintf("%s[%s]", v.Name, strings.Join(dims, ",")))
		}
		return out
	}
	cache := func(prefix, dim string, stacks ...string) []string {
		var out []string
		for i := range cfg.DecoderLayers {
			for _, st := range stacks {
				for _, kv := range []string{"key", "value"} {
					d := dim
					if st == "encoder" {
						d = "encoder_sequence_length_out"
					}
					out = append(out, fmt.Sprintf("%s.%d.%s.%s[batch_size,4,%s,8]", prefix, i, st, kv, d))
				}
			}
		}
		return out
	}
	for _, tc := range []struct {
		m       *graph.Model
		in, out []string
	}{
		{s.Encoder, []string{"input_ids[batch_size,encoder_sequence_length]", "attention_mask[batch_size,encoder_sequence_length]"},
			[]string{"last_hidden_state[batch_size,encoder_sequence_length,32]"}},
		{s.Decoder, []string{"input_ids[batch_size,decoder_sequence_length]", "encoder_attention_mask[batch_size,encoder_sequence_length]", "encoder_hidden_states[batch_size,encoder_sequence_length,32]"},
			append([]string{"logits[batch_size,decoder_sequence_length,64]"}, cache("present", "decoder_sequence_length", "decoder", "encoder")...)},
		{s.DecoderWithPast, append([]string{"input_ids[batch_size,1]", "encoder_attention_mask[batch_size,encoder_sequence_length]"}, cache("past_key_values", "past_decoder_sequence_length", "decoder", "encoder")...),
			append([]string{"logits[batch_size,1,64]"}, cache("present", "past_decoder_sequence_length + 1", "decoder")...)},
	} {
		name := tc.m.Graph().Name
		if got := io(tc.m.Graph().Input); !slices.Equal(got, tc.in) {
			t.Errorf("%s inputs\n%v\nwant\n%v", name, got, tc.in)
		}
		if got := io(tc.m.Graph().Output); !slices.Equal(got, tc.out) {
			t.Errorf("%s outputs\n%v\nwant\n%v", name, got, tc.out)
		}
		// The record lists exactly the file's quantizers.
		qs, err := quantize.Find(tc.m)
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if len(qs) == 0 {
			t.Errorf("%s has no quantizers", name)
		}
		part, _ := tc.m.Metadata(seq2seq.MetadataKey)
		if !strings.Contains(part, s.Config.Qatc.ID) {
			t.Errorf("%s: part %s lacks the export id %s", name, part, s.Config.Qatc.ID)
		}
	}
	c := s.Config
	if c.Hidden != 32 || c.DecoderHeads != 4 || c.EncoderLayers != 2 || c.DecoderLayers != 2 || c.Vocab != 64 || c.DecoderFFN != 64 ||
		!c.PreNorm || !c.Tied || c.MaxPositions != cfg.MaxLen || c.Qatc.Format != "qat" || len(c.Qatc.Quantization) == 0 || c.BOSID != 2 {
		t.Errorf("config %+v", c)
	}
}

// TestRefuses checks that models the builder cannot map fail with the
// recogniser's named error, and exported models with ErrFormat.
func TestRefuses(t *testing.T) {
	// A seq2seq graph without attention.
	m := graph.New("bigram", 17)
	m.AddInput("src_ids", graph.Int64, []int64{-1, -1})
	m.AddInput("tgt_ids", graph.Int64, []int64{-1, -1})
	m.AddInitializer(graph.FloatTensor("next", []int64{8, 8}, make([]float32, 64)))
	m.Op("Gather", "", []string{"next", "tgt_ids"}, []string{"logits"}, graph.AttrInt("axis", 0))
	m.AddOutput("logits", graph.Float, []int64{-1, -1, 8})
	if _, err := Build(m, Options{}); err == nil || !strings.Contains(err.Error(), "recognise transformer") {
		t.Errorf("bigram model: %v", err)
	}
	tiny, err := testmodels.Build(testmodels.Tiny())
	if err != nil {
		t.Fatal(err)
	}
	tiny.SetMetadata("qatc.format", "qoperator")
	if _, err := Build(tiny, Options{}); !errors.Is(err, ErrFormat) {
		t.Errorf("exported model: %v", err)
	}
}

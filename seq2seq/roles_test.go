package seq2seq

import (
	"strings"
	"testing"

	"github.com/qatc/qatc/graph"
)

func ioInfo(name string, dt graph.DataType, dims ...any) graph.IOInfo {
	info := graph.IOInfo{Name: name, Elem: dt, Dims: []int64{}, DimParams: []string{}}
	for _, d := range dims {
		switch d := d.(type) {
		case int:
			info.Dims = append(info.Dims, int64(d))
			info.DimParams = append(info.DimParams, "")
		case string:
			info.Dims = append(info.Dims, -1)
			info.DimParams = append(info.DimParams, d)
		}
	}
	return info
}

func TestFindRoles(t *testing.T) {
	i64, f32 := graph.Int64, graph.Float
	logits := ioInfo("logits", f32, "batch", "tgt_len", 1000)
	for _, tc := range []struct {
		name    string
		in, out []graph.IOInfo
		given   Roles
		want    Roles
	}{
		{"by shape, in order",
			[]graph.IOInfo{ioInfo("src_ids", i64, "batch", "src_len"), ioInfo("tgt_ids", i64, "batch", "tgt_len")},
			[]graph.IOInfo{logits}, Roles{}, Roles{"src_ids", "tgt_ids", "logits"}},
		{"target listed first, told by the shared tgt_len dim",
			[]graph.IOInfo{ioInfo("x", i64, "batch", "tgt_len"), ioInfo("y", i64, "batch", "src_len")},
			[]graph.IOInfo{logits}, Roles{}, Roles{"y", "x", "logits"}},
		{"target listed first, told by its name",
			[]graph.IOInfo{ioInfo("decoder_input_ids", i64, "b", "n"), ioInfo("input_ids", i64, "b", "m")},
			[]graph.IOInfo{ioInfo("out", f32, "b", "k", 64)}, Roles{}, Roles{"input_ids", "decoder_input_ids", "out"}},
		{"no hint: inputs in order",
			[]graph.IOInfo{ioInfo("a", i64, -1, -1), ioInfo("b", i64, -1, -1)},
			[]graph.IOInfo{ioInfo("c", f32, -1, -1, 8)}, Roles{}, Roles{"a", "b", "c"}},
		{"logits among several outputs, by name",
			[]graph.IOInfo{ioInfo("src", i64, "b", "s"), ioInfo("tgt", i64, "b", "t")},
			[]graph.IOInfo{ioInfo("enc_out", f32, "b", "s", 64), ioInfo("lm_logits", f32, "b", "t", 9)}, Roles{}, Roles{"src", "tgt", "lm_logits"}},
		{"named target, source inferred",
			[]graph.IOInfo{ioInfo("a", i64, "b", "s"), ioInfo("b", i64, "b", "t")},
			[]graph.IOInfo{logits}, Roles{Tgt: "a"}, Roles{"b", "a", "logits"}},
		{"all named",
			[]graph.IOInfo{ioInfo("p", i64, "b", "s"), ioInfo("q", i64, "b", "t"), ioInfo("r", i64, "b", "t")},
			[]graph.IOInfo{ioInfo("o1", f32, "b", "t", 5), ioInfo("o2", f32, "b", "t", 5)}, Roles{"r", "p", "o2"}, Roles{"r", "p", "o2"}},
	} {
		got, err := FindRoles("m.onnx", tc.in, tc.out, tc.given)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestFindRolesErrors(t *testing.T) {
	i64, f32 := graph.Int64, graph.Float
	ids := []graph.IOInfo{ioInfo("src_ids", i64, "batch", "src_len"), ioInfo("tgt_ids", i64, "batch", "tgt_len")}
	logits := []graph.IOInfo{ioInfo("logits", f32, "batch", "tgt_len", 1000)}
	for _, tc := range []struct {
		name    string
		in, out []graph.IOInfo
		given   Roles
		want    []string
	}{
		{"classifier",
			[]graph.IOInfo{ioInfo("pixels", f32, "batch", 784)}, []graph.IOInfo{ioInfo("probs", f32, "batch", 10)}, Roles{},
			[]string{"m.onnx is not a seq2seq model", "pixels float32[batch,784]", "probs float32[batch,10]", "--src-input"}},
		{"one id input",
			ids[:1], logits, Roles{},
			[]string{"is not a seq2seq model", "src_ids int64[batch,src_len]"}},
		{"three id inputs",
			append(ids, ioInfo("lang", i64, "batch", 1)), logits, Roles{},
			[]string{"3 int64 [batch, len] inputs", "--src-input and --tgt-input"}},
		{"two float outputs",
			ids, []graph.IOInfo{ioInfo("a", f32, "b", "t", 5), ioInfo("b", f32, "b", "t", 5)}, Roles{},
			[]string{"2 float outputs of rank 3", "--logits-output"}},
		{"unknown name",
			ids, logits, Roles{Src: "source"},
			[]string{`no input "source"`, "src_ids int64[batch,src_len], tgt_ids", "--src-input"}},
		{"unknown output",
			ids, logits, Roles{Logits: "scores"},
			[]string{`no output "scores"`, "--logits-output"}},
		{"named input of the wrong type",
			append(ids, ioInfo("mask", f32, "batch", "src_len")), logits, Roles{Src: "mask"},
			[]string{"mask float32[batch,src_len] is not an int64 [batch, len] tensor", "--src-input"}},
		{"same input twice",
			ids, logits, Roles{Src: "src_ids", Tgt: "src_ids"},
			[]string{"both the source and the target"}},
	} {
		_, err := FindRoles("m.onnx", tc.in, tc.out, tc.given)
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", tc.name, err, w)
			}
		}
	}
}

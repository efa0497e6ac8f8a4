package quantize_test

import (
	"strings"
	"testing"

	"github.com/qatc/qatc/passes/quantize"
)

func TestParseNeurST(t *testing.T) {
	tests := []struct {
		in      string
		wb, ab  int
		wc, ac  float32
		wantErr string
	}{
		{in: "{'quant_strategy':'min/max','quant_bits':8,'quant_weight_clip_max':1.0,'quant_act_clip_max':16.0}", wb: 8, ab: 8, wc: 1, ac: 16},
		{in: "{'quant_bits': 4, 'quant_act_clip_max': 8}", wb: 4, ab: 4, wc: 1, ac: 8},
		{in: "{quant_strategy: min/max, quant_weight_clip_max: 0.5}", wb: 8, ab: 8, wc: 0.5, ac: 16},
		{in: "{'quant_strategy':'kl'}", wantErr: "unknown quant_strategy kl: NeurST has only 'min/max'"},
		{in: "{'quant_bits':8,'quant_mode':'x'}", wantErr: `unknown key "quant_mode"`},
		{in: "{'quant_bits':9}", wantErr: "weight bits 9 out of range: use 2 to 8"},
		{in: "{'quant_bits':1}", wantErr: "weight bits 1 out of range"},
		{in: "{'quant_weight_clip_max':0.0}", wantErr: "weight clip max 0 must be a positive finite number"},
		{in: "{'quant_act_clip_max':-2}", wantErr: "activation clip max -2 must be a positive"},
		{in: "{'quant_bits':'eight'}", wantErr: "quant_bits eight is not an integer"},
		{in: "{'quant_bits':8", wantErr: "not a YAML mapping"},
	}
	for _, tt := range tests {
		p, err := quantize.ParseNeurST(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "\n") {
				t.Errorf("ParseNeurST(%s) error %v, want one line containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseNeurST(%s): %v", tt.in, err)
			continue
		}
		if p.Strategy != "min/max" || p.WeightBits != tt.wb || p.ActBits != tt.ab || p.WeightClipMax != tt.wc || p.ActClipMax != tt.ac {
			t.Errorf("ParseNeurST(%s) = %+v", tt.in, p)
		}
	}
}

func TestParseRecipe(t *testing.T) {
	good := `
rules:
  - match: 'linear1'
    bits: 4
    granularity: block
    block_size: 32
  - match: 'Softmax'
    kind: skip
  - match: 'Relu'
    kind: act
    clip: 8
`
	r, err := quantize.ParseRecipe([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Rules) != 3 || r.Rules[0].Bits != 4 || r.Rules[0].BlockSize != 32 || r.Rules[1].Kind != "skip" || r.Rules[2].Clip != 8 {
		t.Errorf("recipe %+v", r)
	}
	bad := []struct{ in, want string }{
		{"rules:\n  - match: x\n    kind: bogus\n", `recipe rule 1 (match "x"): unknown kind "bogus": want weight, act, relu, softmax or skip`},
		{"rules:\n  - match: x\n    bitz: 4\n", "field bitz not found"},
		{"rules:\n  - match: x\n    bits: 12\n", "bits 12 out of range"},
		{"rules:\n  - match: x\n    clip: -1\n", "clip -1 must be a positive"},
		{"rules:\n  - match: '(x'\n", "bad regular expression"},
		{"rules:\n  - kind: act\n", "recipe rule 1 has no match expression"},
		{"rules:\n  - match: x\n    granularity: block\n", "block granularity needs a block size"},
		{"rules: []\n", "recipe has no rules"},
	}
	for _, tt := range bad {
		_, err := quantize.ParseRecipe([]byte(tt.in))
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseRecipe(%q) error %v, want one line containing %q", tt.in, err, tt.want)
		}
	}
}

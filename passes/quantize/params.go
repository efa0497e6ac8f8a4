package quantize

import (
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Quantizer kinds.
const (
	KindWeight  = "weight"  // signed symmetric, on an initializer
	KindAct     = "act"     // signed symmetric activation
	KindReLU    = "relu"    // unsigned [0, clip]
	KindSoftmax = "softmax" // unsigned, fixed scale 1/2^bits, no clip
)

// Weight granularities.
const (
	Tensor  = "tensor"  // one clip per tensor
	Channel = "channel" // one clip per output channel
	Block   = "block"   // one clip per output channel and block of the input axis
)

// Weight clip initialisations (Params.WeightInit).
const (
	InitValue      = "value"      // Params.WeightClipMax (NeurST)
	InitMax        = "max"        // max |w| per tensor, channel or block
	InitPercentile = "percentile" // the Params.Percentile-th percentile of |w|
	InitMSE        = "mse"        // the clip minimising the weight's quantization error
)

// Params are the quantization parameters of one insert. Start from
// DefaultParams: Insert checks every field and rejects zero bits or clips.
type Params struct {
	// Strategy is NeurST's quant_strategy; only "min/max" exists.
	Strategy string `json:"strategy"`
	// WeightBits and ActBits are the grid sizes (2..8).
	WeightBits int `json:"weight_bits"`
	ActBits    int `json:"act_bits"`
	// WeightClipMax and ActClipMax are NeurST's initial clip values.
	WeightClipMax float32 `json:"weight_clip_max"`
	ActClipMax    float32 `json:"act_clip_max"`
	// PerChannel is shorthand for Granularity "channel".
	PerChannel bool `json:"per_channel,omitempty"`
	// Granularity of weight clips: tensor, channel or block; BlockSize is the
	// block length along the weight's input axis for block.
	Granularity string `json:"granularity"`
	BlockSize   int    `json:"block_size,omitempty"`
	// WeightInit says how weight clips start: value (WeightClipMax, the
	// default), max, percentile (Percentile, default 99.99) or mse.
	WeightInit string  `json:"weight_init,omitempty"`
	Percentile float64 `json:"percentile,omitempty"`
	// Include and Exclude are regular expressions over tensor and node
	// names; with Include, only matching candidates are quantized.
	Include []string `json:"include,omitempty"`
	Exclude []string `json:"exclude,omitempty"`
	// Recipe overrides kind, bits, clip and granularity per tensor.
	Recipe *Recipe `json:"recipe,omitempty"`
}

// DefaultParams returns NeurST's defaults: min/max, 8 bits, weight clip 1.0,
// activation clip 16.0, one clip per tensor.
func DefaultParams() Params {
	return Params{Strategy: "min/max", WeightBits: 8, ActBits: 8, WeightClipMax: 1, ActClipMax: 16, Granularity: Tensor}
}

// neurstKeys are the keys NeurST's quant_params accepts.
var neurstKeys = []string{"quant_strategy", "quant_bits", "quant_weight_clip_max", "quant_act_clip_max"}

// ParseNeurST reads NeurST's --quant_params YAML flow string verbatim, e.g.
// "{'quant_strategy':'min/max','quant_bits':8,'quant_weight_clip_max':1.0,'quant_act_clip_max':16.0}".
// Keys it leaves out keep DefaultParams' values; quant_bits sets both the
// weight and the activation bits.
func ParseNeurST(s string) (Params, error) {
	p := DefaultParams()
	var kv map[string]any
	if err := yaml.Unmarshal([]byte(s), &kv); err != nil {
		return p, fmt.Errorf("quant params %q: not a YAML mapping: %v", s, oneLine(err))
	}
	for _, k := range slices.Sorted(maps.Keys(kv)) {
		v := kv[k]
		switch k {
		case "quant_strategy":
			str, ok := v.(string)
			if !ok || str != "min/max" {
				return p, fmt.Errorf("quant params: unknown quant_strategy %v: NeurST has only 'min/max'", v)
			}
			p.Strategy = str
		case "quant_bits":
			b, ok := v.(int)
			if !ok {
				return p, fmt.Errorf("quant params: quant_bits %v is not an integer", v)
			}
			p.WeightBits, p.ActBits = b, b
		case "quant_weight_clip_max", "quant_act_clip_max":
			f, ok := toFloat(v)
			if !ok {
				return p, fmt.Errorf("quant params: %s %v is not a number", k, v)
			}
			if k == "quant_weight_clip_max" {
				p.WeightClipMax = float32(f)
			} else {
				p.ActClipMax = float32(f)
			}
		default:
			return p, fmt.Errorf("quant params: unknown key %q (NeurST's keys: %s)", k, strings.Join(neurstKeys, ", "))
		}
	}
	return p, p.check()
}

func toFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case int:
		return float64(x), true
	case float64:
		return x, true
	}
	return 0, false
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

// granularity returns the weight granularity PerChannel and Granularity
// select together.
func (p *Params) granularity() (string, error) {
	g := p.Granularity
	if g == "" {
		g = Tensor
	}
	if p.PerChannel {
		if g == Block {
			return "", fmt.Errorf("per-channel and block granularity both given: choose one")
		}
		g = Channel
	}
	return g, nil
}

// check validates the parameters.
func (p *Params) check() error {
	if p.Strategy != "min/max" {
		return fmt.Errorf("unknown quantization strategy %q: only min/max exists", p.Strategy)
	}
	if err := checkBits("weight", p.WeightBits); err != nil {
		return err
	}
	if err := checkBits("activation", p.ActBits); err != nil {
		return err
	}
	if err := checkClip("weight clip max", p.WeightClipMax); err != nil {
		return err
	}
	if err := checkClip("activation clip max", p.ActClipMax); err != nil {
		return err
	}
	g, err := p.granularity()
	if err != nil {
		return err
	}
	if err := checkGranularity(g, p.BlockSize); err != nil {
		return err
	}
	switch p.WeightInit {
	case "", InitValue, InitMax, InitMSE:
	case InitPercentile:
		if p.Percentile != 0 && (p.Percentile <= 0 || p.Percentile > 100) {
			return fmt.Errorf("percentile %g out of range (0, 100]", p.Percentile)
		}
	default:
		return fmt.Errorf("unknown weight clip init %q: want value, max, percentile or mse", p.WeightInit)
	}
	for _, re := range append(append([]string(nil), p.Include...), p.Exclude...) {
		if _, err := regexp.Compile(re); err != nil {
			return fmt.Errorf("bad regular expression %q: %v", re, err)
		}
	}
	return nil
}

func checkBits(what string, b int) error {
	if b < 2 || b > 8 {
		return fmt.Errorf("%s bits %d out of range: use 2 to 8", what, b)
	}
	return nil
}

func checkClip(what string, c float32) error {
	if !(c > 0) || math.IsInf(float64(c), 0) {
		return fmt.Errorf("%s %g must be a positive finite number", what, c)
	}
	return nil
}

func checkGranularity(g string, block int) error {
	switch g {
	case Tensor, Channel:
		if block != 0 {
			return fmt.Errorf("block size %d given with %s granularity: use granularity block", block, g)
		}
	case Block:
		if block < 2 {
			return fmt.Errorf("block granularity needs a block size (e.g. 32, 64, 128), got %d", block)
		}
	default:
		return fmt.Errorf("unknown weight granularity %q: want tensor, channel or block", g)
	}
	return nil
}

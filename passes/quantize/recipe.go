package quantize

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"

	"go.yaml.in/yaml/v3"
)

// KindSkip in a recipe rule leaves the matching tensors unquantized.
const KindSkip = "skip"

// A Recipe overrides the default placement rule by rule: for each
// candidate tensor the first rule whose Match matches the tensor's name or
// the name of a node that produces or reads it applies.
//
//	rules:
//	  - match: 'linear[12]'    # regular expression
//	    bits: 4
//	    granularity: block
//	    block_size: 32
//	  - match: '/Softmax'
//	    kind: skip
type Recipe struct {
	Rules []Rule `yaml:"rules" json:"rules"`
}

// A Rule sets what it names; zero fields keep the parameters' values.
// Granularity settings apply to the weights a rule matches; activations
// always have one clip per tensor.
type Rule struct {
	Match string `yaml:"match" json:"match"`
	// Kind is weight, act, relu, softmax or skip; "" keeps the kind the
	// structure gives. Weight kinds apply to weights only and the others to
	// activations only.
	Kind        string  `yaml:"kind,omitempty" json:"kind,omitempty"`
	Bits        int     `yaml:"bits,omitempty" json:"bits,omitempty"`
	Clip        float32 `yaml:"clip,omitempty" json:"clip,omitempty"`
	PerChannel  bool    `yaml:"per_channel,omitempty" json:"per_channel,omitempty"`
	Granularity string  `yaml:"granularity,omitempty" json:"granularity,omitempty"`
	BlockSize   int     `yaml:"block_size,omitempty" json:"block_size,omitempty"`

	re *regexp.Regexp
}

// ParseRecipe reads a YAML recipe; unknown keys and kinds, bad regular
// expressions, bits outside 2..8 and clips ≤ 0 are errors naming the rule.
func ParseRecipe(data []byte) (*Recipe, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	r := &Recipe{}
	if err := dec.Decode(r); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("recipe: %s", oneLine(err))
	}
	if len(r.Rules) == 0 {
		return nil, fmt.Errorf("recipe has no rules (want a top-level 'rules:' list)")
	}
	if err := r.compile(); err != nil {
		return nil, err
	}
	return r, nil
}

// compile checks every rule and compiles its regular expression.
func (r *Recipe) compile() error {
	for i := range r.Rules {
		ru := &r.Rules[i]
		where := fmt.Sprintf("recipe rule %d (match %q)", i+1, ru.Match)
		if ru.Match == "" {
			return fmt.Errorf("recipe rule %d has no match expression", i+1)
		}
		re, err := regexp.Compile(ru.Match)
		if err != nil {
			return fmt.Errorf("%s: bad regular expression: %v", where, err)
		}
		ru.re = re
		switch ru.Kind {
		case "", KindWeight, KindAct, KindReLU, KindSoftmax, KindSkip:
		default:
			return fmt.Errorf("%s: unknown kind %q: want weight, act, relu, softmax or skip", where, ru.Kind)
		}
		if ru.Bits != 0 {
			if err := checkBits(where, ru.Bits); err != nil {
				return err
			}
		}
		if ru.Clip != 0 {
			if err := checkClip(where+": clip", ru.Clip); err != nil {
				return err
			}
		}
		g := ru.Granularity
		if ru.PerChannel {
			if g == Block {
				return fmt.Errorf("%s: per_channel and granularity block both given: choose one", where)
			}
			g = Channel
		}
		if g != "" || ru.BlockSize != 0 {
			if g == "" {
				g = Block
			}
			if err := checkGranularity(g, ru.BlockSize); err != nil {
				return fmt.Errorf("%s: %v", where, err)
			}
		}
	}
	return nil
}

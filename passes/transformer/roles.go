package transformer

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/safeio"
	"go.yaml.in/yaml/v3"
)

// role is one nameable tensor of the model: a pointer to the field that
// holds its name, and for weights the projection whose layout follows.
type role struct {
	name *string
	proj *Projection
	bias bool
}

// roles returns the model's roles by name, e.g.
// "decoder.layer.1.ffn.dense2.weight" or "encoder.layer.0.self_attn.norm.scale".
func (tm *Model) roles() map[string]role {
	rs := map[string]role{
		"src.table": {name: &tm.Src.Table}, "tgt.table": {name: &tm.Tgt.Table},
		"src.positions": {name: &tm.Src.PositionTable}, "tgt.positions": {name: &tm.Tgt.PositionTable},
		"logits.weight": {name: &tm.Logits.Weight, proj: &tm.Logits},
		"logits.bias":   {name: &tm.Logits.Bias, proj: &tm.Logits, bias: true},
	}
	norm := func(prefix string, ln *LayerNorm) {
		if ln != nil {
			rs[prefix+".norm.scale"] = role{name: &ln.Scale}
			rs[prefix+".norm.bias"] = role{name: &ln.Bias}
		}
	}
	proj := func(prefix string, p *Projection) {
		rs[prefix+".weight"] = role{name: &p.Weight, proj: p}
		rs[prefix+".bias"] = role{name: &p.Bias, proj: p, bias: true}
	}
	attn := func(prefix string, a *Attention) {
		norm(prefix, a.Norm)
		proj(prefix+".q", &a.Q)
		proj(prefix+".k", &a.K)
		proj(prefix+".v", &a.V)
		proj(prefix+".out", &a.Out)
	}
	ffn := func(prefix string, f *FFN) {
		norm(prefix, f.Norm)
		proj(prefix+".dense1", &f.Dense1)
		proj(prefix+".dense2", &f.Dense2)
	}
	norm("encoder", tm.EncoderNorm)
	norm("decoder", tm.DecoderNorm)
	for i := range tm.Encoder {
		l := &tm.Encoder[i]
		p := fmt.Sprintf("encoder.layer.%d.", i)
		attn(p+"self_attn", &l.SelfAttn)
		ffn(p+"ffn", &l.FFN)
	}
	for i := range tm.Decoder {
		l := &tm.Decoder[i]
		p := fmt.Sprintf("decoder.layer.%d.", i)
		attn(p+"self_attn", &l.SelfAttn)
		attn(p+"cross_attn", &l.CrossAttn)
		ffn(p+"ffn", &l.FFN)
	}
	return rs
}

// Roles returns the names of the roles Options.Map may set for this
// model, sorted.
func (tm *Model) Roles() []string {
	var names []string
	for n := range tm.roles() {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// apply sets the roles named in mp. A weight given by name is taken whole,
// stored [in, out] unless its shape says [out, in].
func (tm *Model) apply(m *graph.Model, mp map[string]string) error {
	rs := tm.roles()
	for _, k := range slices.Sorted(maps.Keys(mp)) {
		v := mp[k]
		r, ok := rs[k]
		if !ok {
			return fmt.Errorf("--map: unknown role %q (roles look like decoder.layer.1.ffn.dense2.weight; this model has %d roles)", k, len(rs))
		}
		t := m.Initializer(v)
		if t == nil {
			return fmt.Errorf("--map: role %s names %q, which is not an initializer of the model", k, v)
		}
		*r.name = v
		if r.proj == nil {
			continue
		}
		p := r.proj
		width := p.Out.Len()
		if r.bias {
			if len(t.Dims) != 1 || int(t.Dims[0]) != width {
				return fmt.Errorf("--map: role %s: %s is %v, want [%d]", k, v, t.Dims, width)
			}
			p.BiasOut = Range{0, width}
			continue
		}
		if len(t.Dims) != 2 {
			return fmt.Errorf("--map: role %s: %s is %v, not a matrix", k, v, t.Dims)
		}
		switch {
		case int(t.Dims[1]) == width && int(t.Dims[0]) != width:
			p.Transposed = false
		case int(t.Dims[0]) == width && int(t.Dims[1]) != width:
			p.Transposed = true
		case int(t.Dims[0]) != width || int(t.Dims[1]) != width:
			return fmt.Errorf("--map: role %s: %s is %v; the layer has %d outputs", k, v, t.Dims, width)
		}
		p.Out = Range{0, width}
	}
	return nil
}

// ReadMap reads a --map file: a YAML or JSON object from role to tensor
// name.
func ReadMap(path string) (map[string]string, error) {
	data, err := safeio.ReadFile(path, 64<<20)
	if err != nil {
		return nil, fmt.Errorf("--map: %v", err)
	}
	mp := map[string]string{}
	if err := yaml.Unmarshal(data, &mp); err != nil {
		return nil, fmt.Errorf("--map %s: not a YAML/JSON object of role: tensor name: %v", path, err)
	}
	return mp, nil
}

// describe turns a weight role into words for messages:
// "decoder.layer.1.cross_attn.k.weight" → "decoder layer 1 cross-attention:
// K projection".
func describe(role string) string {
	parts := strings.Split(strings.TrimSuffix(role, ".weight"), ".")
	if len(parts) != 5 || parts[1] != "layer" {
		return "the " + strings.Join(parts, " ") + " layer"
	}
	sub := map[string]string{"self_attn": "self-attention", "cross_attn": "cross-attention", "ffn": "feed-forward block"}[parts[3]]
	part := map[string]string{"q": "Q projection", "k": "K projection", "v": "V projection", "out": "output projection", "dense1": "dense1", "dense2": "dense2"}[parts[4]]
	return fmt.Sprintf("%s layer %s %s: %s", parts[0], parts[2], sub, part)
}

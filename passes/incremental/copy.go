package incremental

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/seq2seq"
	"google.golang.org/protobuf/proto"
)

// builder writes one graph of the set.
type builder struct {
	*source
	file string
	opts Options
	m    *graph.Model
	// copied maps a source value (initializer, constant) already copied
	// into m to its name there.
	copied map[string]string
	// quantized maps a quantizer's tensor to its dequantized value in m.
	quantized map[string]string
	used      []*quantize.Quantizer
	// consts are m's own scalar and vector constants by value.
	consts map[string]string
	// oneStep is set for the decoder with past, whose queries are one
	// position long.
	oneStep bool
}

func (s *source) newBuilder(file string, opts Options) *builder {
	opset := max(int64(17), s.m.Opset(""))
	m := graph.New(file[:len(file)-len(".onnx")], opset)
	m.Proto.IrVersion = max(int64(8), s.m.Proto.IrVersion)
	m.Proto.ProducerName = "qatc"
	return &builder{source: s, file: file, opts: opts, m: m,
		copied: map[string]string{}, quantized: map[string]string{}, consts: map[string]string{}}
}

// name returns a new value or node name based on base, used by neither
// the source (whose names the copies keep) nor m.
func (b *builder) name(base string) string {
	name := base
	for i := 1; b.src().HasName(name) || b.m.HasName(name); i++ {
		name = base + "_" + strconv.Itoa(i)
	}
	return b.m.UniqueName(name)
}

func (b *builder) src() *graph.Model { return b.source.m }

// op adds opType(inputs) with one output named after base and returns the
// output.
func (b *builder) op(opType, base string, inputs []string, attrs ...*onnx.AttributeProto) string {
	out := b.name(base)
	b.m.Op(opType, b.name(base+"/"+opType), inputs, []string{out}, attrs...)
	return out
}

// msOp is op in onnxruntime's contrib domain.
func (b *builder) msOp(opType, base string, inputs []string, attrs ...*onnx.AttributeProto) string {
	out := b.name(base)
	n := b.m.Op(opType, b.name(base+"/"+opType), inputs, []string{out}, attrs...)
	n.Domain = "com.microsoft"
	b.m.SetOpset("com.microsoft", 1)
	return out
}

// constant returns the initializer that key stands for, adding the one
// mk makes (named from base) the first time.
func (b *builder) constant(key, base string, mk func(name string) *onnx.TensorProto) string {
	if n, ok := b.consts[key]; ok {
		return n
	}
	n := b.m.AddInitializer(mk(b.name(base)))
	b.consts[key] = n
	return n
}

// ints returns an int64 constant initializer.
func (b *builder) ints(v ...int64) string {
	return b.constant(fmt.Sprint("i", v), "const_ints", func(name string) *onnx.TensorProto {
		return graph.Int64Tensor(name, []int64{int64(len(v))}, v)
	})
}

// scalarInt returns an int64 scalar constant.
func (b *builder) scalarInt(v int64) string {
	return b.constant(fmt.Sprint("s", v), "const_int", func(name string) *onnx.TensorProto {
		return graph.Int64Tensor(name, nil, []int64{v})
	})
}

// float returns a float32 scalar constant.
func (b *builder) float(v float32) string {
	return b.constant(fmt.Sprint("f", v), "const_float", func(name string) *onnx.TensorProto {
		return graph.FloatTensor(name, nil, []float32{v})
	})
}

// rename gives the fresh value v (made by a node of m, read by none yet)
// the name want, or copies it there with an Identity (which onnxruntime
// removes) when v cannot change its name.
func (b *builder) rename(v, want string) (string, error) {
	if v == want {
		return v, nil
	}
	if b.m.HasName(want) {
		return "", fmt.Errorf("internal error: %s is already a value of the graph", want)
	}
	p := b.m.Producer(v)
	if p == nil || len(b.m.Consumers(v)) > 0 || b.m.IsGraphOutput(v) {
		b.m.Op("Identity", b.name(want+"/Identity"), []string{v}, []string{b.m.UniqueName(want)})
		return want, nil
	}
	for i, o := range p.Output {
		if o == v {
			p.Output[i] = want
		}
	}
	b.m.Reindex()
	return want, nil
}

// copyConst copies source value v, computed from initializers and
// Constant nodes only, into m under its own names, once.
func (b *builder) copyConst(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	if n, ok := b.copied[v]; ok {
		return n, nil
	}
	src := b.src()
	if t := src.Initializer(v); t != nil {
		b.m.AddInitializer(proto.Clone(t).(*onnx.TensorProto))
		b.copied[v] = v
		return v, nil
	}
	p := src.Producer(v)
	if p == nil {
		return "", fmt.Errorf("%s is not a constant: it is a graph input of the source", v)
	}
	for _, in := range p.Input {
		if _, err := b.copyConst(in); err != nil {
			return "", err
		}
	}
	n := proto.Clone(p).(*onnx.NodeProto)
	b.m.AddNode(n)
	for _, o := range p.Output {
		b.copied[o] = o
	}
	return v, nil
}

// quantizer returns the quantizer whose dequantized output is v, or nil.
func (b *builder) quantizer(v string) *quantize.Quantizer { return b.quant[v] }

// quantize applies q to x, a value of m computing q's tensor, and returns
// the dequantized value. The quantizer's nodes and clip keep the source's
// names, and x is renamed to q's tensor, so that the graph carries the
// source's record entry unchanged; a quantizer is applied once per graph.
func (b *builder) quantize(x string, q *quantize.Quantizer) (string, error) {
	if q == nil {
		return x, nil
	}
	if b.dropQuant {
		if q.Kind == quantize.KindWeight {
			return b.copyConst(q.Tensor)
		}
		return x, nil
	}
	if out, ok := b.quantized[q.Tensor]; ok {
		return out, nil
	}
	src := b.src()
	qn, dq := nodeNamed(src, q.Quantize), nodeNamed(src, q.Dequantize)
	if qn == nil || dq == nil {
		return "", fmt.Errorf("quantizer on %s: nodes %s/%s not found in the source", q.Tensor, q.Quantize, q.Dequantize)
	}
	var err error
	if q.Kind == quantize.KindWeight {
		if x, err = b.copyConst(q.Tensor); err != nil {
			return "", err
		}
	} else {
		// The caller may still read x: the quantizer's tensor is an
		// alias (onnxruntime drops the Identity).
		if b.m.HasName(q.Tensor) {
			return "", fmt.Errorf("internal error: %s is already a value of the graph", q.Tensor)
		}
		b.m.Op("Identity", b.name(q.Tensor+"/Identity"), []string{x}, []string{b.m.UniqueName(q.Tensor)})
	}
	chain := []*onnx.NodeProto{qn}
	if p := src.Producer(dq.Input[0]); p != nil && p.OpType == "Clip" {
		chain = append(chain, p)
	}
	chain = append(chain, dq)
	if v := quantize.FindBlockView(src, qn, dq); v != nil {
		// A blocked weight's view: the Reshapes around the pair.
		chain = append(append([]*onnx.NodeProto{v.In}, chain...), v.Out)
	}
	for _, n := range chain {
		for i, in := range n.Input {
			if i == 0 {
				continue
			}
			if _, err := b.copyConst(in); err != nil {
				return "", fmt.Errorf("quantizer on %s: %v", q.Tensor, err)
			}
		}
		c := proto.Clone(n).(*onnx.NodeProto)
		b.m.AddNode(c)
	}
	b.quantized[q.Tensor] = q.Output
	b.used = append(b.used, q)
	return q.Output, nil
}

// nodeNamed finds a node by name.
func nodeNamed(m *graph.Model, name string) *onnx.NodeProto {
	for _, n := range m.Graph().Node {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// step is one operation on the way from a value the builder computes to
// the operand a source node reads: a quantizer, or a multiplication or
// division by a scalar constant.
type step struct {
	q    *quantize.Quantizer
	node *onnx.NodeProto // Mul or Div
	data int             // the operand index of the data in node
}

// views only rearrange elements; the builder lays tensors out itself.
var views = map[string]bool{
	"Reshape": true, "Transpose": true, "Squeeze": true, "Unsqueeze": true,
	"Identity": true, "Flatten": true, "Dropout": true,
}

// walk follows the source value v back through views, quantizers and
// scalings by scalar constants until it reaches stop (or, with stop "",
// a stream value or a value none of those computes). It returns that
// value and the steps from it to v, in the order they apply.
func (b *builder) walk(v, stop string) (string, []step, error) {
	return b.walkUntil(v, stop, func(v string) bool { return v == stop || stop == "" && b.streams[v] })
}

// walkUntil is walk, stopping where done says.
func (b *builder) walkUntil(v, stop string, done func(string) bool) (string, []step, error) {
	src := b.src()
	var rev []step
	for range 64 {
		if done(v) {
			break
		}
		if q := b.quant[v]; q != nil {
			rev = append(rev, step{q: q})
			v = q.Tensor
			continue
		}
		p := src.Producer(v)
		if p == nil {
			break
		}
		if views[p.OpType] && len(p.Input) > 0 {
			v = p.Input[0]
			continue
		}
		if p.OpType == "Mul" || p.OpType == "Div" {
			if i, ok := b.scaling(p); ok {
				rev = append(rev, step{node: p, data: i})
				v = p.Input[i]
				continue
			}
		}
		break
	}
	if stop != "" && v != stop {
		return "", nil, fmt.Errorf("the way from %s back to %s holds an operation other than views, quantizers and scalar scalings (%s)", v, stop, describe(src, v))
	}
	steps := make([]step, len(rev))
	for i, s := range rev {
		steps[len(rev)-1-i] = s
	}
	return v, steps, nil
}

// describe names the node computing v, for messages.
func describe(m *graph.Model, v string) string {
	if p := m.Producer(v); p != nil {
		return p.OpType + " " + graph.NodeName(p)
	}
	return v + " is an input or initializer"
}

// scaling reports whether Mul or Div node p scales a data operand by a
// number computed from constants alone (as the recogniser reads
// scalings: literals, Sqrt or Pow of a dimension read off a shape), and
// which operand is the data.
func (b *builder) scaling(p *onnx.NodeProto) (int, bool) {
	for i := range 2 {
		if p.OpType == "Div" && i == 1 {
			break // data / constant only
		}
		if _, ok := b.tm.Scalar(p.Input[1-i]); ok {
			return i, true
		}
	}
	return 0, false
}

// isConst reports whether source value v is computed from constants only.
func (b *builder) isConst(v string) bool {
	src := b.src()
	if src.Initializer(v) != nil {
		return true
	}
	p := src.Producer(v)
	if p == nil {
		return false
	}
	for _, in := range p.Input {
		if in != "" && !b.isConst(in) {
			return false
		}
	}
	return true
}

// apply performs steps on x.
func (b *builder) apply(x string, steps []step) (string, error) {
	for _, s := range steps {
		if s.q != nil {
			var err error
			if x, err = b.quantize(x, s.q); err != nil {
				return "", err
			}
			continue
		}
		// The factor as the recogniser evaluates it, one float32 constant.
		k, _ := b.tm.Scalar(s.node.Input[1-s.data])
		c := b.float(float32(k))
		ins := []string{x, c}
		if s.data == 1 {
			ins = []string{c, x}
		}
		x = b.op(s.node.OpType, "scaled", ins)
	}
	return x, nil
}

// finish checks the graph and writes its metadata: the part and the
// source's quantization record narrowed to the quantizers used here.
func (b *builder) finish(id string) error {
	m := b.m
	part, err := json.Marshal(seq2seq.Part{ID: id, File: b.file})
	if err != nil {
		return err
	}
	m.SetMetadata(seq2seq.MetadataKey, string(part))
	if b.rec != nil && len(b.used) > 0 {
		r := &quantize.Record{Params: b.rec.Params, Calibration: b.rec.Calibration}
		for _, q := range b.used {
			e := b.rec.Lookup(q.Tensor)
			if e == nil {
				return fmt.Errorf("quantizer on %s is missing from the source's %s record", q.Tensor, quantize.MetadataKey)
			}
			c := *e
			c.Consumers = nil
			for _, n := range m.Consumers(c.Output) {
				c.Consumers = append(c.Consumers, graph.NodeName(n))
			}
			r.Quantizers = append(r.Quantizers, c)
		}
		if err := quantize.WriteRecord(m, r); err != nil {
			return err
		}
	}
	m.RemoveDead()
	if err := m.TopoSort(); err != nil {
		return err
	}
	return m.Validate()
}

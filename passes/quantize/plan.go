package quantize

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
)

// A use is one input slot that a quantizer's output will feed.
type use struct {
	node *onnx.NodeProto
	idx  int
}

// cand is a tensor the placement rule found, with the settings resolved
// for it.
type cand struct {
	tensor  string
	weight  bool
	kind    string
	outAxis int // output-channel axis of a weight; -1 none, -2 unknown
	inAxis  int
	axisBy  string // the node that fixed outAxis, for error messages
	uses    []use
	names   map[string]bool // tensor and node names a pattern may match

	tied       *cand
	transposed bool

	bits  int
	gran  string
	block int
	clip  float32 // activation or value-init clip
	skip  bool
}

// planner finds candidates in one model.
type planner struct {
	m      *graph.Model
	p      Params
	cands  []*cand
	by     map[string]*cand
	depMem map[string]bool
	// unreached lists the constant operands left in float, and why.
	unreached []Unquantized
}

// Plan returns the record Insert would write for m with p, without
// changing m: the quantizers in graph order (their node and clip names
// left empty) and the operands left in float.
func Plan(m *graph.Model, p Params) (*Record, error) {
	pl, err := plan(m, p)
	if err != nil {
		return nil, err
	}
	rec := &Record{Params: p, Unquantized: pl.unreached}
	for _, c := range pl.cands {
		if !c.skip {
			rec.Quantizers = append(rec.Quantizers, c.quantizer())
		}
	}
	return rec, nil
}

// unplaced are matrix products the placement does not quantize: their
// operands stay float, and Plan says so.
var unplaced = map[string]bool{
	"Einsum": true, "Conv": true, "ConvTranspose": true, "FusedMatMul": true,
	"MatMulInteger": true, "QLinearMatMul": true, "Attention": true, "MultiHeadAttention": true,
}

func plan(m *graph.Model, p Params) (*planner, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	if p.Recipe != nil {
		if err := p.Recipe.compile(); err != nil {
			return nil, err
		}
	}
	if n := countQuantizers(m); n > 0 {
		return nil, fmt.Errorf("model already has %d quantizers; run insert on the fp32 model", n)
	}
	pl := &planner{m: m, p: p, by: map[string]*cand{}, depMem: map[string]bool{}}
	if err := pl.discover(); err != nil {
		return nil, err
	}
	if err := pl.tie(); err != nil {
		return nil, err
	}
	if err := pl.filter(); err != nil {
		return nil, err
	}
	if err := pl.resolve(); err != nil {
		return nil, err
	}
	if err := pl.checkOpset(); err != nil {
		return nil, err
	}
	return pl, nil
}

// discover walks the graph in order and collects candidates.
func (pl *planner) discover() error {
	for _, n := range pl.m.Graph().Node {
		switch n.OpType {
		case "MatMul":
			if len(n.Input) < 2 {
				continue
			}
			// A [.., M, K] x B [.., K, N]: B's output axis is its last,
			// A's (as a weight) the one before its last.
			pl.operand(n, 0, func(r int) (int, int) { return r - 2, r - 1 })
			pl.operand(n, 1, func(r int) (int, int) {
				if r == 1 {
					return -1, 0
				}
				return r - 1, r - 2
			})
		case "Gemm":
			if len(n.Input) < 2 {
				continue
			}
			ta, tb := graph.IntAttr(n, "transA", 0) != 0, graph.IntAttr(n, "transB", 0) != 0
			pl.operand(n, 0, func(int) (int, int) { return pick(ta, 1, 0), pick(ta, 0, 1) })
			pl.operand(n, 1, func(int) (int, int) { return pick(tb, 0, 1), pick(tb, 1, 0) })
		case "Gather":
			if len(n.Input) < 2 || !pl.dataDependent(n.Input[1]) {
				continue
			}
			init, chain, why := pl.traceWeight(n.Input[0])
			if why != "" {
				// A lookup in a constant table of integers is not an
				// embedding; one of other floats is, left in float.
				if !pl.dataDependent(n.Input[0]) && !pl.integerTable(n.Input[0]) {
					pl.unreach(n, 0, why)
				}
				continue
			}
			axis := int(graph.IntAttr(n, "axis", 0))
			pl.addWeight(n, init, chain, func(r int) (int, int) {
				if axis < 0 {
					axis += r
				}
				return axis, pick(r == 2, 1-axis, -1)
			})
		default:
			if unplaced[n.OpType] {
				pl.unreached = append(pl.unreached, Unquantized{Node: nodeName(n), Input: -1,
					Reason: n.OpType + " is not an operator qatc quantizes (it quantizes MatMul, Gemm and embedding Gather operands); export it as MatMul"})
			}
		}
	}
	for _, c := range pl.cands {
		if c.weight {
			for _, n := range pl.m.Consumers(c.tensor) {
				if n.OpType == "Shape" || n.OpType == "Size" {
					continue // reads no values
				}
				for i, in := range n.Input {
					if in == c.tensor {
						c.uses = append(c.uses, use{n, i})
						c.names[nodeName(n)] = true
					}
				}
			}
		}
	}
	return nil
}

func pick(cond bool, a, b int) int {
	if cond {
		return a
	}
	return b
}

func nodeName(n *onnx.NodeProto) string { return graph.NodeName(n) }

// operand handles input i of a MatMul or Gemm; axes gives the output and
// input axes of a weight of the given rank in the operand's layout.
func (pl *planner) operand(n *onnx.NodeProto, i int, axes func(rank int) (int, int)) {
	v := n.Input[i]
	init, chain, why := pl.traceWeight(v)
	if why == "" {
		pl.addWeight(n, init, chain, axes)
		return
	}
	if !pl.dataDependent(v) {
		pl.unreach(n, i, why) // constant, but not a weight the placement can reach
		return
	}
	c := pl.get(v, false)
	c.uses = append(c.uses, use{n, i})
	c.names[nodeName(n)] = true
	if p := pl.m.Producer(v); p != nil {
		c.names[nodeName(p)] = true
	}
}

func (pl *planner) get(tensor string, weight bool) *cand {
	if c := pl.by[tensor]; c != nil {
		return c
	}
	c := &cand{tensor: tensor, weight: weight, kind: KindWeight, outAxis: -1, inAxis: -1, names: map[string]bool{tensor: true}}
	if !weight {
		c.kind = pl.actKind(tensor)
	}
	pl.by[tensor] = c
	pl.cands = append(pl.cands, c)
	return c
}

// addWeight records that node n reads initializer init through chain.
func (pl *planner) addWeight(n *onnx.NodeProto, init string, chain []*onnx.NodeProto, axes func(int) (int, int)) {
	c := pl.get(init, true)
	c.names[nodeName(n)] = true
	rank := len(pl.m.Initializer(init).Dims)
	out, in := axes(rank)
	out, in = pl.mapAxis(chain, out, rank), pl.mapAxis(chain, in, rank)
	switch {
	case c.axisBy == "":
		c.outAxis, c.inAxis, c.axisBy = out, in, nodeName(n)
	case c.outAxis != out || c.inAxis != in:
		if c.outAxis != -2 {
			c.axisBy += " and " + nodeName(n)
		}
		c.outAxis, c.inAxis = -2, -2
	}
}

// unreach records that input i of n stays float, and why.
func (pl *planner) unreach(n *onnx.NodeProto, i int, why string) {
	pl.unreached = append(pl.unreached, Unquantized{Node: nodeName(n), Input: i, Tensor: n.Input[i], Reason: why})
}

// integerTable reports whether v is an integer or boolean initializer,
// seen through the ops traceWeight follows.
func (pl *planner) integerTable(v string) bool {
	for {
		if t := pl.m.Initializer(v); t != nil {
			switch graph.TensorType(t) {
			case graph.Float, graph.Double, graph.Float16, graph.BFloat16:
				return false
			}
			return true
		}
		p := pl.m.Producer(v)
		if p == nil || len(p.Input) == 0 || !Moves(p.OpType, Traced) {
			return false
		}
		v = p.Input[0]
	}
}

// traceWeight follows v back through data movement (Traced) to a
// float32 initializer; else it says why v is not such a weight.
func (pl *planner) traceWeight(v string) (string, []*onnx.NodeProto, string) {
	var chain []*onnx.NodeProto
	for {
		if t := pl.m.Initializer(v); t != nil {
			switch {
			case graph.TensorType(t) != graph.Float:
				return "", nil, fmt.Sprintf("initializer %s is %s; only float32 weights are quantized (convert the model to float32)", v, graph.TensorType(t))
			case len(t.Dims) == 0:
				return "", nil, fmt.Sprintf("initializer %s is a scalar, not a weight matrix", v)
			}
			return v, chain, ""
		}
		p := pl.m.Producer(v)
		if p == nil || len(p.Input) == 0 {
			what := "a graph input"
			if p != nil {
				what = fmt.Sprintf("made by %s %s from no inputs", p.OpType, nodeName(p))
			}
			return "", nil, fmt.Sprintf("%s is %s, not an initializer", v, what)
		}
		if !Moves(p.OpType, Traced) {
			return "", nil, fmt.Sprintf("%s is made by %s %s, which the placement does not follow to a weight (it follows %s)", v, p.OpType, nodeName(p), strings.Join(MovementOps(Traced), ", "))
		}
		for _, in := range p.Input[1:] {
			// Bounds and shapes may follow activations' shapes
			// (as PyTorch slices in_proj by the embedding size),
			// never their values.
			if in != "" && pl.dataDependent(in) {
				return "", nil, fmt.Sprintf("%s %s takes %s from the data", p.OpType, nodeName(p), in)
			}
		}
		chain = append(chain, p)
		v = p.Input[0]
	}
}

// mapAxis maps an axis of the value at the top of chain (chain[0] is
// nearest the reader) to the initializer's axis; -2 when a reshaping op
// makes it unknown.
func (pl *planner) mapAxis(chain []*onnx.NodeProto, ax, rank int) int {
	if ax < 0 {
		return ax
	}
	for _, n := range chain {
		switch n.OpType {
		case "Transpose":
			perm := graph.IntsAttr(n, "perm")
			if perm == nil {
				ax = rank - 1 - ax
			} else if ax < len(perm) {
				ax = int(perm[ax])
			} else {
				return -2
			}
		case "Reshape", "Squeeze", "Unsqueeze", "Flatten":
			return -2
		}
	}
	return ax
}

// dataDependent reports whether v's values depend on a graph input (other
// than through its shape), so that a Gather with such indices is a lookup.
func (pl *planner) dataDependent(v string) bool {
	if d, ok := pl.depMem[v]; ok {
		return d
	}
	pl.depMem[v] = false
	d := false
	if pl.m.Initializer(v) == nil {
		if p := pl.m.Producer(v); p == nil {
			d = pl.m.Input(v) != nil
		} else if p.OpType != "Shape" && p.OpType != "Size" {
			for _, in := range p.Input {
				if in != "" && pl.dataDependent(in) {
					d = true
					break
				}
			}
		}
	}
	pl.depMem[v] = d
	return d
}

// actKind follows an activation back through layout-only ops to the op
// that computed it; also through multiplications or divisions by a
// positive constant, which keep a ReLU's output non-negative (but not a
// softmax's within its fixed [0, 1] grid).
func (pl *planner) actKind(v string) string {
	scaled := false
	for {
		p := pl.m.Producer(v)
		if p == nil || len(p.Input) == 0 {
			return KindAct
		}
		switch p.OpType {
		case "Relu":
			return KindReLU
		case "Softmax":
			if scaled {
				return KindAct
			}
			return KindSoftmax
		case "Mul", "Div":
			x, ok := pl.positiveScaling(p)
			if !ok {
				return KindAct
			}
			v, scaled = x, true
		default:
			if !Moves(p.OpType, Views) {
				return KindAct
			}
			v = p.Input[0]
		}
	}
}

// positiveScaling reads a Mul or Div node by a positive one-element float
// constant (an initializer or Constant) and returns the other operand.
func (pl *planner) positiveScaling(p *onnx.NodeProto) (string, bool) {
	positive := func(v string) bool {
		f, ok := pl.m.ConstFloats(v)
		return ok && len(f) == 1 && f[0] > 0
	}
	if len(p.Input) != 2 {
		return "", false
	}
	if positive(p.Input[1]) {
		return p.Input[0], true
	}
	if p.OpType == "Mul" && positive(p.Input[0]) {
		return p.Input[1], true
	}
	return "", false
}

// tie finds weights that are byte-equal or transposed-equal copies of an
// earlier one (PyTorch writes a tied embedding table twice: the lookup
// table and a transposed copy for the output projection). It compares the
// stored bytes in place, so it allocates nothing per weight.
func (pl *planner) tie() error {
	var weights []*cand
	views := map[*cand]floatView{}
	view := func(c *cand) (floatView, error) {
		if v, ok := views[c]; ok {
			return v, nil
		}
		v, err := newFloatView(pl.m.Initializer(c.tensor))
		views[c] = v
		return v, err
	}
	for _, c := range pl.cands {
		if !c.weight {
			continue
		}
		t := pl.m.Initializer(c.tensor)
		for _, a := range weights {
			if a.tied != nil {
				continue
			}
			at := pl.m.Initializer(a.tensor)
			same := slices.Equal(at.Dims, t.Dims)
			trans := len(t.Dims) == 2 && len(at.Dims) == 2 && at.Dims[0] == t.Dims[1] && at.Dims[1] == t.Dims[0]
			if !same && !trans {
				continue
			}
			av, err := view(a)
			if err != nil {
				return err
			}
			cv, err := view(c)
			if err != nil {
				return err
			}
			// The first and last elements sit in the same place in both
			// layouts: a cheap test that rejects almost every pair.
			if n := av.len(); n == 0 || av.bits(0) != cv.bits(0) || av.bits(n-1) != cv.bits(n-1) {
				continue
			}
			if same && av.equal(cv) {
				c.tied = a
				break
			}
			if trans && av.transposedEqual(cv, int(at.Dims[0]), int(at.Dims[1])) {
				c.tied, c.transposed = a, true
				break
			}
		}
		weights = append(weights, c)
	}
	return nil
}

// floatView reads a float32 initializer's elements where they are stored.
type floatView struct {
	raw []byte
	fd  []float32
}

func newFloatView(t *onnx.TensorProto) (floatView, error) {
	if graph.HasExternalData(t) {
		return floatView{}, fmt.Errorf("weight %s: external data not loaded", t.Name)
	}
	n := graph.NumElements(t.Dims)
	if len(t.RawData) > 0 || len(t.FloatData) == 0 {
		if int64(len(t.RawData)) != 4*n {
			return floatView{}, fmt.Errorf("weight %s: %d raw bytes for %d float32 elements", t.Name, len(t.RawData), n)
		}
		return floatView{raw: t.RawData}, nil
	}
	if int64(len(t.FloatData)) != n {
		return floatView{}, fmt.Errorf("weight %s: %d float_data values for %d elements", t.Name, len(t.FloatData), n)
	}
	return floatView{fd: t.FloatData}, nil
}

func (v floatView) len() int {
	if v.raw != nil {
		return len(v.raw) / 4
	}
	return len(v.fd)
}

// bits returns element i's bit pattern: equal bits are equal bytes.
func (v floatView) bits(i int) uint32 {
	if v.raw != nil {
		return binary.LittleEndian.Uint32(v.raw[4*i:])
	}
	return math.Float32bits(v.fd[i])
}

func (v floatView) equal(w floatView) bool {
	if v.raw != nil && w.raw != nil {
		return bytes.Equal(v.raw, w.raw)
	}
	for i := 0; i < v.len(); i++ {
		if v.bits(i) != w.bits(i) {
			return false
		}
	}
	return true
}

// transposedEqual reports whether w [c, r] is the transpose of v [r, c].
func (v floatView) transposedEqual(w floatView, r, c int) bool {
	for i := 0; i < r; i++ {
		for j := 0; j < c; j++ {
			if v.bits(i*c+j) != w.bits(j*r+i) {
				return false
			}
		}
	}
	return true
}

// filter applies Include and Exclude.
func (pl *planner) filter() error {
	inc, err := pl.compileAll("include", pl.p.Include)
	if err != nil {
		return err
	}
	exc, err := pl.compileAll("exclude", pl.p.Exclude)
	if err != nil {
		return err
	}
	for _, c := range pl.cands {
		if len(inc) > 0 && !anyMatch(inc, c.names) {
			c.skip = true
		}
		if anyMatch(exc, c.names) {
			c.skip = true
		}
	}
	return nil
}

// compileAll compiles patterns and checks each matches some candidate.
func (pl *planner) compileAll(what string, pats []string) ([]*regexp.Regexp, error) {
	var res []*regexp.Regexp
	for _, s := range pats {
		re, err := regexp.Compile(s)
		if err != nil {
			return nil, fmt.Errorf("--%s %q: bad regular expression: %v", what, s, err)
		}
		if err := pl.mustMatch(fmt.Sprintf("--%s %q", what, s), re); err != nil {
			return nil, err
		}
		res = append(res, re)
	}
	return res, nil
}

func (pl *planner) mustMatch(what string, re *regexp.Regexp) error {
	for _, c := range pl.cands {
		if anyMatch([]*regexp.Regexp{re}, c.names) {
			return nil
		}
	}
	return fmt.Errorf("%s matches no quantizable tensor or node; close candidates: %s", what, strings.Join(CloseNames(re.String(), pl.allNames(), 5), ", "))
}

func (pl *planner) allNames() []string {
	set := map[string]bool{}
	for _, c := range pl.cands {
		for n := range c.names {
			set[n] = true
		}
	}
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func anyMatch(res []*regexp.Regexp, names map[string]bool) bool {
	for _, re := range res {
		for n := range names {
			if re.MatchString(n) {
				return true
			}
		}
	}
	return false
}

// resolve applies the recipe and the parameters to every candidate.
func (pl *planner) resolve() error {
	p := pl.p
	gran, _ := p.granularity()
	var rules []Rule
	if p.Recipe != nil {
		rules = p.Recipe.Rules
		for i := range rules {
			if err := pl.mustMatch(fmt.Sprintf("recipe rule %d (match %q)", i+1, rules[i].Match), rules[i].re); err != nil {
				return err
			}
		}
	}
	for _, c := range pl.cands {
		if c.weight {
			c.bits, c.gran, c.block, c.clip = p.WeightBits, gran, p.BlockSize, p.WeightClipMax
		} else {
			c.bits, c.gran, c.clip = p.ActBits, Tensor, p.ActClipMax
		}
		for i := range rules {
			r := &rules[i]
			if !anyMatch([]*regexp.Regexp{r.re}, c.names) {
				continue
			}
			if err := c.apply(r, i+1); err != nil {
				return err
			}
			break
		}
	}
	for _, c := range pl.cands {
		if c.skip {
			continue
		}
		if a := c.tied; a != nil {
			if a.skip {
				c.tied, c.transposed = nil, false
			} else if a.bits != c.bits || a.gran != c.gran || a.block != c.block || a.clip != c.clip {
				return fmt.Errorf("weight %s is a copy of %s (tied) but the parameters give them different bits, granularity or clip: give both the same", c.tensor, a.tensor)
			}
		}
		if err := pl.checkWeight(c); err != nil {
			return err
		}
	}
	return nil
}

// apply sets what rule r (number i) says.
func (c *cand) apply(r *Rule, i int) error {
	where := fmt.Sprintf("recipe rule %d (match %q)", i, r.Match)
	switch r.Kind {
	case "":
	case KindSkip:
		c.skip = true
		return nil
	case KindWeight:
		if !c.weight {
			return fmt.Errorf("%s: kind weight for activation %s: weight kinds apply to initializers only", where, c.tensor)
		}
	default:
		if c.weight {
			return fmt.Errorf("%s: kind %s for weight %s: use kind weight (or skip)", where, r.Kind, c.tensor)
		}
		c.kind = r.Kind
	}
	if r.Bits != 0 {
		c.bits = r.Bits
	}
	if r.Clip != 0 {
		c.clip = r.Clip
	}
	g := r.Granularity
	if r.PerChannel {
		g = Channel
	}
	if g == "" && r.BlockSize != 0 {
		g = Block
	}
	if g != "" && c.weight { // activations keep one clip per tensor
		c.gran, c.block = g, r.BlockSize
	}
	return nil
}

// checkWeight checks that c's granularity fits its shape and uses.
func (pl *planner) checkWeight(c *cand) error {
	if !c.weight || c.gran == Tensor {
		return nil
	}
	dims := pl.m.Initializer(c.tensor).Dims
	switch {
	case c.outAxis == -2:
		return fmt.Errorf("weight %s: its output-channel axis is not known (read through a reshape, or with different layouts by %s): use tensor granularity or exclude it", c.tensor, c.axisBy)
	case c.outAxis < 0:
		return fmt.Errorf("weight %s %v has no output-channel axis (read by %s): use tensor granularity or exclude it", c.tensor, dims, c.axisBy)
	}
	if c.gran == Block {
		if len(dims) != 2 || c.inAxis < 0 {
			return fmt.Errorf("weight %s %v: block granularity needs a 2-D weight with a known input axis: use channel granularity or exclude it", c.tensor, dims)
		}
		if k := dims[c.inAxis]; k%int64(c.block) != 0 {
			return fmt.Errorf("weight %s %v: block size %d does not divide its input dimension %d: choose a divisor", c.tensor, dims, c.block, k)
		}
	}
	if a := c.tied; a != nil {
		want := a.outAxis
		if c.transposed {
			want = 1 - a.outAxis
		}
		if c.outAxis != want {
			return fmt.Errorf("weight %s is a copy of %s but uses a different output-channel axis: use tensor granularity or exclude one", c.tensor, a.tensor)
		}
	}
	return nil
}

// quantizer returns c's planned quantizer (without node names).
func (c *cand) quantizer() Quantizer {
	q := Quantizer{Tensor: c.tensor, Kind: c.kind, Bits: c.bits}
	switch c.gran {
	case Channel:
		ax := c.outAxis
		q.Axis = &ax
	case Block:
		ax := c.inAxis
		q.Axis, q.BlockSize = &ax, c.block
	}
	if c.tied != nil {
		q.TiedTo, q.Transposed = c.tied.tensor, c.transposed
	}
	seen := map[string]bool{}
	for _, u := range c.uses {
		if n := nodeName(u.node); !seen[n] {
			seen[n] = true
			q.Consumers = append(q.Consumers, n)
		}
	}
	return q
}

package train

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/qatc/qatc/safeio"
)

// Group is a set of parameters that share a learning rate and weight
// decay, such as the clip ranges and the weights.
type Group struct {
	Name string
	// LR is the group's base learning rate; the schedule scales it.
	LR float64
	// WeightDecay is L2 (Adam) or decoupled (AdamW) weight decay.
	WeightDecay float64
}

// Param is one trainable tensor. Data is the buffer the session reads as
// an input tensor, updated in place by Step; Grad is the gradient of the
// current step.
type Param struct {
	Name  string
	Dims  []int64
	Data  []float32
	Grad  []float32
	Group *Group
	// inModel is set when Data is the model initializer's own memory,
	// so that WriteBack has nothing to copy.
	inModel bool
}

// OptimizerConfig chooses the update rule.
type OptimizerConfig struct {
	// AdamW decouples weight decay from the gradient (Loshchilov and
	// Hutter); otherwise weight decay is added to the gradient, as
	// PyTorch's Adam does.
	AdamW bool
	Beta1 float64
	Beta2 float64
	Eps   float64
	// ClipNorm scales the gradients down so that their global L2 norm is
	// at most ClipNorm (0: no clipping), as torch.nn.utils.clip_grad_norm_.
	ClipNorm float64
}

// DefaultOptimizer returns Adam with β1 0.9, β2 0.98, ε 1e-9 (the
// Transformer paper's and NeurST's values) and no gradient clipping.
func DefaultOptimizer() OptimizerConfig {
	return OptimizerConfig{Beta1: 0.9, Beta2: 0.98, Eps: 1e-9}
}

// Optimizer is Adam or AdamW over float32 parameter buffers, with the
// moments kept in float32 and each update computed in float64.
type Optimizer struct {
	Config OptimizerConfig
	Params []*Param
	// Steps is the number of updates done, t in the bias corrections.
	Steps int64
	m, v  [][]float32
}

// NewOptimizer returns an optimizer with zero moments over params.
func NewOptimizer(cfg OptimizerConfig, params []*Param) (*Optimizer, error) {
	if cfg.Beta1 < 0 || cfg.Beta1 >= 1 || cfg.Beta2 < 0 || cfg.Beta2 >= 1 {
		return nil, fmt.Errorf("optimizer: β1 %g and β2 %g must be in [0, 1)", cfg.Beta1, cfg.Beta2)
	}
	if cfg.Eps <= 0 || cfg.ClipNorm < 0 {
		return nil, fmt.Errorf("optimizer: ε %g must be positive and the clip norm %g not negative", cfg.Eps, cfg.ClipNorm)
	}
	o := &Optimizer{Config: cfg, Params: append([]*Param(nil), params...)}
	for _, p := range params {
		if p.Group == nil {
			return nil, fmt.Errorf("optimizer: parameter %q has no group", p.Name)
		}
		if len(p.Grad) != len(p.Data) {
			return nil, fmt.Errorf("optimizer: parameter %q has %d values but a gradient of %d", p.Name, len(p.Data), len(p.Grad))
		}
		o.m = append(o.m, make([]float32, len(p.Data)))
		o.v = append(o.v, make([]float32, len(p.Data)))
	}
	return o, nil
}

// GradNorm returns the global L2 norm of the gradients.
func (o *Optimizer) GradNorm() float64 {
	chunks := o.chunks()
	sums := make([]float64, len(chunks))
	parallel(len(chunks), func(c int) {
		var s float64
		for _, g := range chunks[c].grad() {
			s += float64(g) * float64(g)
		}
		sums[c] = s
	})
	// Summed in chunk order, so that the norm does not depend on how the
	// chunks were shared out.
	var s float64
	for _, v := range sums {
		s += v
	}
	return math.Sqrt(s)
}

// chunk is a range of one parameter's elements, the unit of the
// optimizer's parallel loops.
type chunk struct {
	k, lo, hi int // o.Params[k].Data[lo:hi]
	p         *Param
}

func (c chunk) grad() []float32 { return c.p.Grad[c.lo:c.hi] }

// chunkSize is the elements per chunk: large enough that scheduling costs
// nothing, small enough that two workers share a transformer's few large
// matrices evenly.
const chunkSize = 1 << 16

// chunks splits the parameters into chunks, in a fixed order.
func (o *Optimizer) chunks() []chunk {
	var cs []chunk
	for k, p := range o.Params {
		for lo := 0; lo < len(p.Grad); lo += chunkSize {
			cs = append(cs, chunk{k: k, lo: lo, hi: min(lo+chunkSize, len(p.Grad)), p: p})
		}
	}
	return cs
}

// parallel runs f(0) … f(n-1) on GOMAXPROCS goroutines: the optimizer runs
// between the session's runs, when the cores onnxruntime uses are idle.
func parallel(n int, f func(i int)) {
	workers := min(runtime.GOMAXPROCS(0), n)
	if workers <= 1 {
		for i := range n {
			f(i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}

// Step applies one update with each group's learning rate multiplied by
// factor (the schedule's value). It returns the gradient norm before
// clipping; a non-finite norm leaves every parameter untouched.
func (o *Optimizer) Step(factor float64) (float64, error) {
	norm := o.GradNorm()
	if math.IsNaN(norm) || math.IsInf(norm, 0) {
		return norm, fmt.Errorf("the gradient norm is %g", norm)
	}
	scale := 1.0
	if c := o.Config.ClipNorm; c > 0 {
		// PyTorch's clip_grad_norm_: max_norm / (norm + 1e-6), at most 1.
		scale = math.Min(1, c/(norm+1e-6))
	}
	o.Steps++
	b1, b2, eps := o.Config.Beta1, o.Config.Beta2, o.Config.Eps
	bc1 := 1 - math.Pow(b1, float64(o.Steps))
	bc2 := 1 - math.Pow(b2, float64(o.Steps))
	// PyTorch's form: p −= (lr/bc1)·m / (√v/√bc2 + ε), one division and
	// one square root per element.
	rsqrtBc2 := 1 / math.Sqrt(bc2)
	adamW := o.Config.AdamW
	chunks := o.chunks()
	parallel(len(chunks), func(c int) {
		ch := chunks[c]
		p := ch.p
		lr := p.Group.LR * factor
		wd := p.Group.WeightDecay
		stepSize := lr / bc1
		data, grad := p.Data[ch.lo:ch.hi], p.Grad[ch.lo:ch.hi]
		m, v := o.m[ch.k][ch.lo:ch.hi], o.v[ch.k][ch.lo:ch.hi]
		for i, g32 := range grad {
			w := float64(data[i])
			g := float64(g32) * scale
			if adamW {
				w -= lr * wd * w
			} else {
				g += wd * w
			}
			mi := b1*float64(m[i]) + (1-b1)*g
			vi := b2*float64(v[i]) + (1-b2)*g*g
			m[i], v[i] = float32(mi), float32(vi)
			w -= stepSize * mi / (math.Sqrt(vi)*rsqrtBc2 + eps)
			data[i] = float32(w)
		}
	})
	return norm, nil
}

// Optimizer state file: magic, version, then the step count and, per
// parameter, its name, length and both moments; a CRC-32C of everything
// before it closes the file.
const (
	stateMagic   = "QATCOPT\x00"
	stateVersion = 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// MarshalState encodes the optimizer's moments and step count.
func (o *Optimizer) MarshalState() []byte {
	var b bytes.Buffer
	o.writeState(&b) // a bytes.Buffer does not fail
	return b.Bytes()
}

// writeState writes the state file's bytes to w, encoding the moments a
// chunk at a time: the state of a large model (two moments of the
// model's size) is never held encoded in memory.
func (o *Optimizer) writeState(w io.Writer) error {
	crc := crc32.New(castagnoli)
	bw := bufio.NewWriterSize(io.MultiWriter(w, crc), 1<<20)
	le := binary.LittleEndian
	var head [8]byte
	bw.WriteString(stateMagic)
	bw.Write(le.AppendUint32(head[:0], stateVersion))
	bw.Write(le.AppendUint64(head[:0], uint64(o.Steps)))
	bw.Write(le.AppendUint32(head[:0], uint32(len(o.Params))))
	buf := make([]byte, 0, 4*chunkSize)
	floats := func(v []float32) {
		for lo := 0; lo < len(v); lo += chunkSize {
			buf = buf[:0]
			for _, x := range v[lo:min(lo+chunkSize, len(v))] {
				buf = le.AppendUint32(buf, math.Float32bits(x))
			}
			bw.Write(buf)
		}
	}
	for k, p := range o.Params {
		bw.Write(le.AppendUint32(head[:0], uint32(len(p.Name))))
		bw.WriteString(p.Name)
		bw.Write(le.AppendUint64(head[:0], uint64(len(p.Data))))
		floats(o.m[k])
		floats(o.v[k])
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	_, err := w.Write(le.AppendUint32(head[:0], crc.Sum32()))
	return err
}

// UnmarshalState restores state written by MarshalState. The parameters
// must be the same names with the same sizes, in any order.
func (o *Optimizer) UnmarshalState(data []byte) error {
	if len(data) < len(stateMagic)+4+8+4+4 || string(data[:len(stateMagic)]) != stateMagic {
		return fmt.Errorf("not a qatc optimizer state file")
	}
	body, sum := data[:len(data)-4], binary.LittleEndian.Uint32(data[len(data)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return fmt.Errorf("optimizer state is corrupt (checksum mismatch)")
	}
	return o.readState(bytes.NewReader(body), int64(len(body)))
}

// readState parses a state file's body (n bytes, the checksum already
// verified) into new moments, which replace the optimizer's only when the
// whole body is good.
func (o *Optimizer) readState(r io.Reader, n int64) error {
	lr := &io.LimitedReader{R: r, N: n}
	br := bufio.NewReaderSize(lr, 1<<20)
	le := binary.LittleEndian
	var head [8]byte
	read := func(b []byte) bool {
		_, err := io.ReadFull(br, b)
		return err == nil
	}
	truncated := fmt.Errorf("optimizer state is truncated")
	if !read(head[:len(stateMagic)]) || string(head[:len(stateMagic)]) != stateMagic {
		return fmt.Errorf("not a qatc optimizer state file")
	}
	if !read(head[:4]) {
		return truncated
	}
	if version := le.Uint32(head[:4]); version != stateVersion {
		return fmt.Errorf("optimizer state version %d; this qatc reads version %d", version, stateVersion)
	}
	if !read(head[:8]) {
		return truncated
	}
	steps := int64(le.Uint64(head[:8]))
	if !read(head[:4]) {
		return truncated
	}
	if count := le.Uint32(head[:4]); int(count) != len(o.Params) {
		return fmt.Errorf("optimizer state has %d parameters, the model trains %d", count, len(o.Params))
	}
	index := make(map[string]int, len(o.Params))
	for k, p := range o.Params {
		index[p.Name] = k
	}
	m := make([][]float32, len(o.Params))
	v := make([][]float32, len(o.Params))
	buf := make([]byte, 4*chunkSize)
	floats := func(dst []float32) bool {
		for lo := 0; lo < len(dst); lo += chunkSize {
			c := dst[lo:min(lo+chunkSize, len(dst))]
			if !read(buf[:4*len(c)]) {
				return false
			}
			for i := range c {
				c[i] = math.Float32frombits(le.Uint32(buf[4*i:]))
			}
		}
		return true
	}
	for range o.Params {
		if !read(head[:4]) {
			return truncated
		}
		nameLen := int64(le.Uint32(head[:4]))
		if nameLen > lr.N+int64(br.Buffered()) {
			return truncated
		}
		name := make([]byte, nameLen)
		if !read(name) {
			return truncated
		}
		k, ok := index[string(name)]
		if !ok {
			return fmt.Errorf("optimizer state has parameter %q, which the model does not train", name)
		}
		if m[k] != nil {
			return fmt.Errorf("optimizer state lists parameter %q twice", name)
		}
		if !read(head[:8]) {
			return truncated
		}
		size := le.Uint64(head[:8])
		if size != uint64(len(o.Params[k].Data)) {
			return fmt.Errorf("optimizer state has %d values for parameter %q, the model %d", size, name, len(o.Params[k].Data))
		}
		if 8*size > uint64(lr.N)+uint64(br.Buffered()) {
			return truncated
		}
		m[k] = make([]float32, size)
		v[k] = make([]float32, size)
		if !floats(m[k]) || !floats(v[k]) {
			return truncated
		}
	}
	if rest := lr.N + int64(br.Buffered()); rest != 0 {
		return fmt.Errorf("optimizer state has %d bytes of trailing data", rest)
	}
	o.Steps, o.m, o.v = steps, m, v
	return nil
}

// SaveState writes the optimizer state to path atomically, streamed into
// its temporary file.
func (o *Optimizer) SaveState(path string) error {
	var b safeio.Batch
	defer b.Abort()
	f, err := b.Create(path)
	if err != nil {
		return err
	}
	if err := o.writeState(f); err != nil {
		return fmt.Errorf("write optimizer state %s: %w", path, err)
	}
	return b.Commit()
}

// LoadState reads the optimizer state from path: one pass over the file
// checks its checksum, a second decodes it, so that the encoded state is
// never held in memory beside the moments.
func (o *Optimizer) LoadState(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read optimizer state: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("read optimizer state: %w", err)
	}
	size := st.Size()
	fail := func(err error) error { return fmt.Errorf("%s: %v", path, err) }
	var head [len(stateMagic)]byte
	if size < int64(len(stateMagic))+4+8+4+4 {
		return fail(fmt.Errorf("not a qatc optimizer state file"))
	}
	if _, err := io.ReadFull(f, head[:]); err != nil || string(head[:]) != stateMagic {
		return fail(fmt.Errorf("not a qatc optimizer state file"))
	}
	crc := crc32.New(castagnoli)
	crc.Write(head[:])
	if _, err := io.CopyN(crc, f, size-4-int64(len(head))); err != nil {
		return fail(err)
	}
	var sum [4]byte
	if _, err := io.ReadFull(f, sum[:]); err != nil {
		return fail(err)
	}
	if crc.Sum32() != binary.LittleEndian.Uint32(sum[:]) {
		return fail(fmt.Errorf("optimizer state is corrupt (checksum mismatch)"))
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fail(err)
	}
	if err := o.readState(f, size-4); err != nil {
		return fail(err)
	}
	return nil
}

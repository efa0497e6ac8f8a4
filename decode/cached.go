package decode

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/seq2seq"
)

// Incremental is a translation model as an encoder and a decoder with a
// key/value cache, in Hugging Face Optimum's seq2seq layout (see
// passes/incremental): the encoder runs once per batch, the first decoder
// step also returns every layer's cross-attention keys and values, and
// each further step feeds one token per row with the cache, which grows
// by one position. Start may be called from several goroutines at once.
type Incremental struct {
	// Name is the model in messages (its directory).
	Name   string
	Config seq2seq.Config

	enc, first, next *ort.Session
	// files are the files the sessions were opened from (the merged
	// decoder twice); merged: first and next are its one session, whose
	// use_cache_branch input picks the step.
	files  [3]string
	merged bool
	// nextReadsEncoder: the step with past reads encoder_hidden_states too
	// (T5's does, for its length), so the encoder's output stays.
	nextReadsEncoder bool
	layers, heads    int
	headSize, vocab  int
	hidden           int
	// cacheType is the element type of each cache tensor, by its
	// present.* name: float, or the integers of an integer cache.
	cacheType map[string]graph.DataType
	// pool keeps the cache's buffers between batches.
	pool bufPool
}

// bufPool is a free list of the cache's float buffers: a batch's cache
// grows by a position each step, and the next batch reuses what the last
// one freed instead of allocating it again. The buffers it makes live
// outside the Go heap (anonymous memory maps), so that the garbage
// collector, which lets the heap grow to twice what is live before it
// collects, never doubles the cache, by far the largest thing decoding
// holds; Close unmaps them.
type bufPool struct {
	mu    sync.Mutex
	free  [][]float32
	owned map[*float32][]byte // the maps behind the buffers it made
}

// poolSize bounds the free list; past it, the smallest buffer is dropped.
const poolSize = 64

// get returns a buffer of n floats: the smallest free one that fits, else
// a new one of capacity max(n, c).
func (p *bufPool) get(n, c int) []float32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	best := -1
	for i, b := range p.free {
		if cap(b) >= n && (best < 0 || cap(b) < cap(p.free[best])) {
			best = i
		}
	}
	if best >= 0 {
		b := p.free[best]
		p.free[best] = p.free[len(p.free)-1]
		p.free = p.free[:len(p.free)-1]
		return b[:n]
	}
	c = max(n, c, 1)
	mem, err := syscall.Mmap(-1, 0, 4*c, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return make([]float32, n, c) // the Go heap, then
	}
	b := unsafe.Slice((*float32)(unsafe.Pointer(&mem[0])), c)
	if p.owned == nil {
		p.owned = map[*float32][]byte{}
	}
	p.owned[&b[0]] = mem
	return b[:n]
}

// tensor returns a tensor of element type dt (float32, int8 or uint8)
// and the given shape over a buffer from the pool with room for c
// elements (at least the shape's).
func (p *bufPool) tensor(dt graph.DataType, shape []int64, c int) *ort.Tensor {
	n := int(graph.NumElements(shape))
	size := elemSize(dt)
	b := p.get((n*size+3)/4, (max(n, c)*size+3)/4)
	switch dt {
	case graph.Int8:
		return ort.Int8(shape, unsafe.Slice((*int8)(unsafe.Pointer(unsafe.SliceData(b))), cap(b)*4)[:n])
	case graph.Uint8:
		return ort.Uint8(shape, unsafe.Slice((*uint8)(unsafe.Pointer(unsafe.SliceData(b))), cap(b)*4)[:n])
	}
	return ort.Float32(shape, b)
}

// elemSize is the bytes of one cache element of type dt.
func elemSize(dt graph.DataType) int {
	if dt == graph.Int8 || dt == graph.Uint8 {
		return 1
	}
	return 4
}

// floats returns the float buffer under a cache tensor's elements (its
// whole capacity), nil when it has none: integer caches live in the
// pool's float buffers.
func floats(t *ort.Tensor) []float32 {
	var p unsafe.Pointer
	var bytes int
	switch d := t.Data.(type) {
	case []float32:
		return d
	case []int8:
		p, bytes = unsafe.Pointer(unsafe.SliceData(d)), cap(d)
	case []uint8:
		p, bytes = unsafe.Pointer(unsafe.SliceData(d)), cap(d)
	}
	if bytes < 4 || bytes%4 != 0 || uintptr(p)%4 != 0 {
		return nil
	}
	return unsafe.Slice((*float32)(p), bytes/4)[:0]
}

// cacheBytes returns the bytes of a cache tensor's elements.
func cacheBytes(t *ort.Tensor) []byte {
	n := t.Len() * elemSize(t.DType())
	if n == 0 {
		return nil
	}
	switch d := t.Data.(type) {
	case []float32:
		return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(d))), n)
	case []int8:
		return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(d))), n)
	case []uint8:
		return d[:n]
	}
	return nil
}

// put returns t's buffer to the pool.
func (p *bufPool) put(t *ort.Tensor) {
	if t == nil {
		return
	}
	b := floats(t)
	if cap(b) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.free = append(p.free, b[:0])
	if len(p.free) > poolSize {
		small := 0
		for i, f := range p.free {
			if cap(f) < cap(p.free[small]) {
				small = i
			}
		}
		p.release(p.free[small])
		p.free[small] = p.free[len(p.free)-1]
		p.free = p.free[:len(p.free)-1]
	}
}

// release unmaps b when the pool made it (the Go heap's are collected).
func (p *bufPool) release(b []float32) {
	b = b[:cap(b)]
	if mem, ok := p.owned[&b[0]]; ok {
		delete(p.owned, &b[0])
		syscall.Munmap(mem)
	}
}

// close unmaps every free buffer; buffers still in a state are the
// state's to give back first.
func (p *bufPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.free {
		p.release(b)
	}
	p.free = nil
}

// IsIncrementalDir reports whether path is a directory (an incremental
// export, or meant to be one).
func IsIncrementalDir(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.IsDir()
}

// OpenIncremental opens the models of directory dir (see seq2seq.Stat:
// the encoder and the two decoders, or the merged decoder, whose one
// session then serves both steps) with opts (nil: onnxruntime's defaults)
// and checks that they and dir's config.json belong together.
func OpenIncremental(dir string, opts *ort.Options) (*Incremental, error) {
	lay, err := seq2seq.Stat(dir)
	if err != nil {
		return nil, err
	}
	cfg, err := seq2seq.ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	if cfg.Qatc.ID == "" {
		// Files qatc did not write carry no export id to tell them apart:
		// check that they are one model (seq2seq.ReadDir pairs the
		// decoders' tensors) before decoding with them.
		if _, err := seq2seq.ReadDir(dir); err != nil {
			return nil, err
		}
	}
	m := &Incremental{Name: dir, Config: *cfg}
	first, next := lay.DecoderFiles()
	m.files = [3]string{seq2seq.EncoderFile, first, next}
	m.merged = !lay.Separate
	sessions := []**ort.Session{&m.enc, &m.first, &m.next}
	for i, f := range m.files {
		if i == 2 && m.merged {
			m.next = m.first
			break
		}
		s, err := ort.OpenFile(filepath.Join(dir, f), m.fileOptions(opts, i))
		if err != nil {
			m.Close()
			return nil, err
		}
		*sessions[i] = s
	}
	if err := m.check(); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// NewIncremental opens sessions over the graphs of d, a directory's models
// in memory (the decoders separate); name labels the model in messages.
func NewIncremental(name string, d *seq2seq.Dir, opts *ort.Options) (*Incremental, error) {
	m := &Incremental{Name: name, Config: *d.Config, files: [3]string{seq2seq.EncoderFile, seq2seq.DecoderFile, seq2seq.DecoderWithPastFile}}
	sessions := []**ort.Session{&m.enc, &m.first, &m.next}
	for i, g := range []*graph.Model{d.Encoder, d.Decoder, d.DecoderWithPast} {
		sess, err := ort.Open(g, m.fileOptions(opts, i))
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("%s: %s: %w", name, m.files[i], err)
		}
		*sessions[i] = sess
	}
	if err := m.check(); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// fileOptions returns opts for file i: a profile of its own.
func (m *Incremental) fileOptions(opts *ort.Options, i int) *ort.Options {
	if opts == nil || opts.ProfilePrefix == "" {
		return opts
	}
	c := *opts
	c.ProfilePrefix += "_" + strings.TrimSuffix(m.files[i], ".onnx")
	return &c
}

// Close releases the sessions and the cache's buffers; the model's states
// must be done.
func (m *Incremental) Close() error {
	m.pool.close()
	var errs []error
	for _, s := range m.sessions() {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

// sessions lists the open sessions, each once (a merged decoder's serves
// both steps).
func (m *Incremental) sessions() []*ort.Session {
	var out []*ort.Session
	for _, s := range []*ort.Session{m.enc, m.first, m.next} {
		if s != nil && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// EndProfiling closes the sessions of a model opened with
// Options.ProfilePrefix and returns each file's profile.
func (m *Incremental) EndProfiling() (map[string]string, error) {
	out := map[string]string{}
	for i, s := range []*ort.Session{m.enc, m.first, m.next} {
		if _, done := out[m.files[i]]; done {
			continue
		}
		p, err := s.EndProfiling()
		if err != nil {
			return nil, err
		}
		out[m.files[i]] = p
	}
	return out, nil
}

// TeacherForced runs the model on sources and targets of equal count
// (BOS first), feeding the target tokens one step at a time through the
// cache, and returns every position's logits, [rows][T × vocab], T the
// longest target; rows past their target's end read padding.
func (m *Incremental) TeacherForced(srcs, tgts [][]int64) ([][]float32, error) {
	if len(srcs) != len(tgts) {
		return nil, fmt.Errorf("%d sources, %d targets", len(srcs), len(tgts))
	}
	T := 0
	for _, t := range tgts {
		T = max(T, len(t))
	}
	st, err := m.Start(srcs)
	if err != nil {
		return nil, err
	}
	out := make([][]float32, len(srcs))
	tokens := make([]int64, len(srcs))
	for j := range T {
		for r, t := range tgts {
			tokens[r] = m.Config.PadID
			if j < len(t) {
				tokens[r] = t[j]
			}
		}
		logits, v, err := st.Step(tokens)
		if err != nil {
			return nil, err
		}
		for r := range out {
			out[r] = append(out[r], logits[r*v:(r+1)*v]...)
		}
	}
	return out, nil
}

// MaxPositions is the most target positions the model has (its position
// table's rows; 0 when the positions are computed for any length).
func (m *Incremental) MaxPositions() int { return m.Config.MaxPositions }

// Vocab returns the target vocabulary size.
func (m *Incremental) Vocab() int { return m.vocab }

// check reads the sizes from the three models and makes sure they agree
// with each other and with the config: a directory mixing files of
// different exports is refused, naming the file.
func (m *Incremental) check() error {
	cfg := &m.Config
	file := func(i int) string { return filepath.Join(m.Name, m.files[i]) }
	// The export's id, where the files carry one.
	if cfg.Qatc.ID != "" {
		for i, s := range []*ort.Session{m.enc, m.first, m.next} {
			v, ok, err := s.Metadata(seq2seq.MetadataKey)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			var p seq2seq.Part
			if json.Unmarshal([]byte(v), &p) != nil || p.ID != cfg.Qatc.ID {
				return fmt.Errorf("%s comes from another export than %s (export id %q, config %q): the directory mixes files of different models; export it again", file(i), filepath.Join(m.Name, seq2seq.ConfigFile), p.ID, cfg.Qatc.ID)
			}
		}
	}
	find := func(list []graph.IOInfo, name string) (graph.IOInfo, bool) {
		for _, io := range list {
			if io.Name == name {
				return io, true
			}
		}
		return graph.IOInfo{}, false
	}
	need := func(i int, list []graph.IOInfo, kind, name string, elem graph.DataType, rank int) (graph.IOInfo, error) {
		io, ok := find(list, name)
		if !ok {
			return io, fmt.Errorf("%s has no %s %s: not a seq2seq model in Optimum's layout", file(i), kind, name)
		}
		if io.Elem != elem || io.Dims != nil && len(io.Dims) != rank {
			return io, fmt.Errorf("%s: %s %s is %s, want %s of rank %d", file(i), kind, name, io, elem, rank)
		}
		return io, nil
	}
	// dim checks a static dim against the size the model must have.
	dim := func(i int, io graph.IOInfo, axis int, want int, what string) error {
		if io.Dims == nil || axis >= len(io.Dims) || io.Dims[axis] < 0 || want <= 0 {
			return nil
		}
		if int(io.Dims[axis]) != want {
			return fmt.Errorf("%s: %s has %s %d where %s says %d: the files come from different models; export the directory again", file(i), io, what, io.Dims[axis], filepath.Join(m.Name, seq2seq.ConfigFile), want)
		}
		return nil
	}
	if m.merged {
		if _, err := need(1, m.first.Inputs(), "input", seq2seq.UseCacheBranch, graph.Bool, 1); err != nil {
			return fmt.Errorf("%w (a merged decoder switches between its two branches on the bool input %s; give decoder_model.onnx and decoder_with_past_model.onnx instead)", err, seq2seq.UseCacheBranch)
		}
	}
	_, m.nextReadsEncoder = find(m.next.Inputs(), seq2seq.EncoderHiddenStates)
	m.cacheType = map[string]graph.DataType{}
	m.hidden, m.vocab, m.heads, m.layers = cfg.Hidden, cfg.Vocab, cfg.DecoderHeads, cfg.DecoderLayers
	m.headSize = cfg.HeadSize()
	enc, first, next := m.enc, m.first, m.next
	if _, err := need(0, enc.Inputs(), "input", seq2seq.InputIDs, graph.Int64, 2); err != nil {
		return err
	}
	if _, err := need(0, enc.Inputs(), "input", seq2seq.AttentionMask, graph.Int64, 2); err != nil {
		return err
	}
	h, err := need(0, enc.Outputs(), "output", seq2seq.LastHiddenState, graph.Float, 3)
	if err != nil {
		return err
	}
	if err := dim(0, h, 2, m.hidden, "width"); err != nil {
		return err
	}
	for i, s := range []*ort.Session{first, next} {
		i++
		if _, err := need(i, s.Inputs(), "input", seq2seq.InputIDs, graph.Int64, 2); err != nil {
			return err
		}
		if _, err := need(i, s.Inputs(), "input", seq2seq.EncoderAttentionMask, graph.Int64, 2); err != nil {
			return err
		}
		l, err := need(i, s.Outputs(), "output", seq2seq.Logits, graph.Float, 3)
		if err != nil {
			return err
		}
		if err := dim(i, l, 2, m.vocab, "a vocabulary of"); err != nil {
			return err
		}
		for layer := range m.layers {
			for _, st := range []string{"decoder", "encoder"} {
				for _, kv := range []string{"key", "value"} {
					// The cache holds floats, or integers (an
					// integer cache) of one type in both files.
					present := seq2seq.Present(layer, st, kv)
					list, kind, name := s.Inputs(), "input", seq2seq.Past(layer, st, kv)
					if i == 1 {
						list, kind, name = s.Outputs(), "output", present
					}
					elem := graph.Float
					if io, ok := find(list, name); ok && (io.Elem == graph.Int8 || io.Elem == graph.Uint8) {
						elem = io.Elem
					}
					if t, ok := m.cacheType[present]; ok {
						elem = t
					}
					m.cacheType[present] = elem
					io, err := need(i, list, kind, name, elem, 4)
					if err != nil {
						return err
					}
					if err := dim(i, io, 1, m.heads, "heads"); err != nil {
						return err
					}
					if err := dim(i, io, 3, m.headSize, "a head size of"); err != nil {
						return err
					}
				}
			}
		}
		for _, io := range s.Inputs() {
			if strings.HasPrefix(io.Name, "past_key_values.") {
				var layer int
				if _, err := fmt.Sscanf(io.Name, "past_key_values.%d.", &layer); err == nil && layer >= m.layers {
					return fmt.Errorf("%s has a cache input for layer %d; %s says %d decoder layers: the files come from different models", file(i), layer, filepath.Join(m.Name, seq2seq.ConfigFile), m.layers)
				}
			}
		}
		if i == 1 {
			e, err := need(i, s.Inputs(), "input", seq2seq.EncoderHiddenStates, graph.Float, 3)
			if err != nil {
				return err
			}
			if err := dim(i, e, 2, m.hidden, "width"); err != nil {
				return err
			}
		}
	}
	return nil
}

// incState is a batch decoded with the cache.
type incState struct {
	m      *Incremental
	rows   int
	srcLen int
	// mask is the source attention mask, one row per state row.
	mask []int64
	// enc holds the encoder output until the first step.
	enc *ort.Tensor
	// self holds each layer's self-attention keys and values (2 per
	// layer), spare their second buffers for the next step's output.
	self, spare []*ort.Tensor
	// cross holds the cross-attention keys and values; crossOf names the
	// sentence each of its rows belongs to, sentence that of each state
	// row. They differ after a Reorder until the next Step gathers cross.
	cross             []*ort.Tensor
	crossOf, sentence []int
	logits            []float32
	steps             int
	// reserve is the most positions the batch decodes (0: unknown).
	reserve int
}

// Start runs the encoder on a batch of sources, padded to the longest.
func (m *Incremental) Start(srcs [][]int64) (State, error) {
	rows := len(srcs)
	s := 1
	for _, x := range srcs {
		s = max(s, len(x))
	}
	if max := m.Config.MaxPositions; max > 0 && s > max {
		return nil, fmt.Errorf("%s: a source of %d tokens is longer than the model's %d positions", m.Name, s, max)
	}
	ids := make([]int64, rows*s)
	mask := make([]int64, rows*s)
	for r, x := range srcs {
		row := ids[r*s : (r+1)*s]
		copy(row, x)
		for i := range row {
			if i >= len(x) {
				row[i] = m.Config.PadID
			} else {
				mask[r*s+i] = 1
			}
		}
	}
	shape := []int64{int64(rows), int64(s)}
	// The encoder writes into a pooled buffer, as every step below does:
	// nothing large is copied out of onnxruntime or left to the collector.
	hs := []int64{int64(rows), int64(s), int64(m.hidden)}
	into := map[string]*ort.Tensor{seq2seq.LastHiddenState: ort.Float32(hs, m.pool.get(int(graph.NumElements(hs)), 0))}
	out, err := m.enc.RunInto(map[string]*ort.Tensor{seq2seq.InputIDs: ort.Int64(shape, ids), seq2seq.AttentionMask: ort.Int64(shape, mask)}, into, seq2seq.LastHiddenState)
	if err != nil {
		m.pool.put(into[seq2seq.LastHiddenState])
		return nil, err
	}
	st := &incState{m: m, rows: rows, srcLen: s, mask: mask, enc: out[seq2seq.LastHiddenState]}
	st.sentence = make([]int, rows)
	for i := range st.sentence {
		st.sentence[i] = i
	}
	return st, nil
}

// Step runs the first decoder step, or a step with the cache.
func (s *incState) Step(tokens []int64) ([]float32, int, error) {
	m := s.m
	if len(tokens) != s.rows {
		return nil, 0, fmt.Errorf("decoding: %d tokens for %d rows", len(tokens), s.rows)
	}
	ids := ort.Int64([]int64{int64(s.rows), 1}, tokens)
	mask := ort.Int64([]int64{int64(s.rows), int64(s.srcLen)}, s.mask)
	v := m.vocab
	if cap(s.logits) < s.rows*v {
		s.logits = make([]float32, s.rows*v)
	}
	logits := ort.Float32([]int64{int64(s.rows), 1, int64(v)}, s.logits[:s.rows*v])
	into := map[string]*ort.Tensor{seq2seq.Logits: logits}
	if s.steps == 0 {
		// Tokens one position long: the self-attention cache has one
		// position, the cross-attention one the source's.
		for l := range m.layers {
			for _, kv := range []string{"key", "value"} {
				self := []int64{int64(s.rows), int64(m.heads), 1, int64(m.headSize)}
				name := seq2seq.Present(l, "decoder", kv)
				into[name] = s.buffer(nil, m.cacheType[name], self)
				cross := []int64{int64(s.rows), int64(m.heads), int64(s.srcLen), int64(m.headSize)}
				name = seq2seq.Present(l, "encoder", kv)
				into[name] = m.pool.tensor(m.cacheType[name], cross, 0)
			}
		}
		in := map[string]*ort.Tensor{
			seq2seq.InputIDs: ids, seq2seq.EncoderAttentionMask: mask, seq2seq.EncoderHiddenStates: s.enc,
		}
		if m.merged {
			// The branch without past reads no cache: empty ones.
			in[seq2seq.UseCacheBranch] = ort.Bool([]int64{1}, []bool{false})
			shape := []int64{int64(s.rows), int64(m.heads), 0, int64(m.headSize)}
			empty := map[graph.DataType]*ort.Tensor{
				graph.Float: ort.Float32(shape, []float32{}), graph.Int8: ort.Int8(shape, []int8{}), graph.Uint8: ort.Uint8(shape, []uint8{}),
			}
			for l := range m.layers {
				for _, st := range []string{"decoder", "encoder"} {
					for _, kv := range []string{"key", "value"} {
						in[seq2seq.Past(l, st, kv)] = empty[m.cacheType[seq2seq.Present(l, st, kv)]]
					}
				}
			}
		}
		out, err := m.first.RunInto(in, into)
		if err != nil {
			return nil, 0, err
		}
		if !m.nextReadsEncoder {
			m.pool.put(s.enc)
			s.enc = nil
		}
		for l := range m.layers {
			for _, kv := range []string{"key", "value"} {
				s.self = append(s.self, out[seq2seq.Present(l, "decoder", kv)])
				s.cross = append(s.cross, out[seq2seq.Present(l, "encoder", kv)])
			}
		}
		s.spare = make([]*ort.Tensor, len(s.self))
		s.crossOf = append([]int(nil), s.sentence...)
	} else {
		if err := s.gatherCross(); err != nil {
			return nil, 0, err
		}
		in := map[string]*ort.Tensor{seq2seq.InputIDs: ids, seq2seq.EncoderAttentionMask: mask}
		if m.nextReadsEncoder {
			in[seq2seq.EncoderHiddenStates] = s.enc
		}
		if m.merged {
			in[seq2seq.UseCacheBranch] = ort.Bool([]int64{1}, []bool{true})
		}
		t := s.self[0].Shape[2]
		for l := range m.layers {
			for j, kv := range []string{"key", "value"} {
				i := 2*l + j
				in[seq2seq.Past(l, "decoder", kv)] = s.self[i]
				in[seq2seq.Past(l, "encoder", kv)] = s.cross[i]
				s.spare[i] = s.buffer(s.spare[i], s.self[i].DType(), []int64{int64(s.rows), int64(m.heads), t + 1, int64(m.headSize)})
				into[seq2seq.Present(l, "decoder", kv)] = s.spare[i]
			}
		}
		// Only these: a merged decoder's step with past also outputs empty
		// stand-ins for the cross-attention cache.
		if _, err := m.next.RunInto(in, into, slices.Collect(maps.Keys(into))...); err != nil {
			return nil, 0, err
		}
		s.self, s.spare = s.spare, s.self
	}
	s.steps++
	return s.logits[:s.rows*v], v, nil
}

// buffer returns a cache tensor of element type dt and shape [rows,
// heads, positions, head] over t's memory when it is large enough, else
// over a pooled buffer with room for the reserved positions (t's goes to
// the pool).
func (s *incState) buffer(t *ort.Tensor, dt graph.DataType, shape []int64) *ort.Tensor {
	n := int(graph.NumElements(shape))
	if t != nil {
		switch data := t.Data.(type) {
		case []float32:
			if dt == graph.Float && cap(data) >= n {
				return ort.Float32(shape, data[:n])
			}
		case []int8:
			if dt == graph.Int8 && cap(data) >= n {
				return ort.Int8(shape, data[:n])
			}
		case []uint8:
			if dt == graph.Uint8 && cap(data) >= n {
				return ort.Uint8(shape, data[:n])
			}
		}
		s.m.pool.put(t)
	}
	c := n + n/2
	if s.reserve > int(shape[2]) {
		c = n / int(shape[2]) * s.reserve
	}
	return s.m.pool.tensor(dt, shape, c)
}

// Reserve says the batch decodes at most steps positions, so that the
// cache's buffers are made that large once.
func (s *incState) Reserve(steps int) { s.reserve = steps }

// Close returns the state's buffers to the model's pool.
func (s *incState) Close() error {
	for _, ts := range [][]*ort.Tensor{s.self, s.spare, s.cross} {
		for _, t := range ts {
			s.m.pool.put(t)
		}
	}
	s.m.pool.put(s.enc)
	s.self, s.spare, s.cross, s.enc = nil, nil, nil, nil
	return nil
}

// Reorder gathers the rows of the self-attention cache and the mask; the
// cross-attention values follow at the next Step, and only when a row
// now reads another sentence's (beams of one sentence share them).
func (s *incState) Reorder(rows []int) error {
	for _, r := range rows {
		if r < 0 || r >= s.rows {
			return fmt.Errorf("decoding: reorder to row %d of %d", r, s.rows)
		}
	}
	for i, t := range s.self {
		shape := append([]int64{int64(len(rows))}, t.Shape[1:]...)
		s.spare[i] = s.buffer(s.spare[i], t.DType(), shape)
		gatherRows(cacheBytes(s.spare[i]), cacheBytes(t), rows)
	}
	s.self, s.spare = s.spare, s.self
	mask := make([]int64, len(rows)*s.srcLen)
	sentence := make([]int, len(rows))
	for i, r := range rows {
		copy(mask[i*s.srcLen:(i+1)*s.srcLen], s.mask[r*s.srcLen:(r+1)*s.srcLen])
		sentence[i] = s.sentence[r]
	}
	s.mask, s.sentence, s.rows = mask, sentence, len(rows)
	return nil
}

// gatherCross makes row i of the cross-attention values sentence i's.
func (s *incState) gatherCross() error {
	if len(s.crossOf) == len(s.sentence) {
		same := true
		for i := range s.sentence {
			if s.crossOf[i] != s.sentence[i] {
				same = false
				break
			}
		}
		if same {
			return nil
		}
	}
	at := map[int]int{}
	for r, sent := range s.crossOf {
		if _, ok := at[sent]; !ok {
			at[sent] = r
		}
	}
	rows := make([]int, len(s.sentence))
	for i, sent := range s.sentence {
		r, ok := at[sent]
		if !ok {
			return fmt.Errorf("internal error: sentence %d has no cross-attention values", sent)
		}
		rows[i] = r
	}
	gather := func(t *ort.Tensor) *ort.Tensor {
		shape := append([]int64{int64(len(rows))}, t.Shape[1:]...)
		g := s.m.pool.tensor(t.DType(), shape, 0)
		gatherRows(cacheBytes(g), cacheBytes(t), rows)
		s.m.pool.put(t)
		return g
	}
	for i, t := range s.cross {
		s.cross[i] = gather(t)
	}
	if s.enc != nil {
		// Kept for a step with past that reads it (nextReadsEncoder).
		s.enc = gather(s.enc)
	}
	s.crossOf = append(s.crossOf[:0], s.sentence...)
	return nil
}

// gatherRows copies rows of src (equal-sized, len(src)/n... each) into dst
// in the order rows gives.
func gatherRows[T any](dst, src []T, rows []int) {
	if len(rows) == 0 {
		return
	}
	size := len(dst) / len(rows)
	for i, r := range rows {
		copy(dst[i*size:(i+1)*size], src[r*size:(r+1)*size])
	}
}

// Inputs returns the inputs of the full-sequence model the directory
// composes to (seq2seq.Dir.Compose): source ids and target ids, so that
// the directory runs where such a model does (qatc compare).
func (m *Incremental) Inputs() []graph.IOInfo {
	return []graph.IOInfo{
		{Name: seq2seq.SourceIDs, Elem: graph.Int64, Dims: []int64{-1, -1}},
		{Name: seq2seq.TargetIDs, Elem: graph.Int64, Dims: []int64{-1, -1}},
	}
}

// Outputs returns the logits output of the composed model.
func (m *Incremental) Outputs() []graph.IOInfo {
	return []graph.IOInfo{{Name: seq2seq.Logits, Elem: graph.Float, Dims: []int64{-1, -1, int64(m.vocab)}}}
}

// Run computes the composed model's logits for a batch ([rows, S] source
// ids padded at the end, [rows, T] targets with the start id first),
// teacher-forced through the cache one position at a time.
func (m *Incremental) Run(in map[string]*ort.Tensor, _ ...string) (map[string]*ort.Tensor, error) {
	src, tgt := in[seq2seq.SourceIDs], in[seq2seq.TargetIDs]
	if src == nil || tgt == nil || len(src.Shape) != 2 || len(tgt.Shape) != 2 || src.Shape[0] != tgt.Shape[0] {
		return nil, fmt.Errorf("%s: give %s and %s, int64 [rows, len] with one row count", m.Name, seq2seq.SourceIDs, seq2seq.TargetIDs)
	}
	rows, sl, tl := int(src.Shape[0]), int(src.Shape[1]), int(tgt.Shape[1])
	srcs, tgts := make([][]int64, rows), make([][]int64, rows)
	for r := range rows {
		s := src.Int64s()[r*sl : (r+1)*sl]
		for len(s) > 1 && s[len(s)-1] == m.Config.PadID {
			s = s[:len(s)-1]
		}
		if slices.Contains(s, m.Config.PadID) {
			return nil, fmt.Errorf("%s: source row %d holds the padding id %d inside the sentence; the cache's mask covers trailing padding only", m.Name, r, m.Config.PadID)
		}
		srcs[r], tgts[r] = s, tgt.Int64s()[r*tl:(r+1)*tl]
	}
	out, err := m.TeacherForced(srcs, tgts)
	if err != nil {
		return nil, err
	}
	logits := make([]float32, 0, rows*tl*m.vocab)
	for _, o := range out {
		logits = append(logits, o...)
	}
	return map[string]*ort.Tensor{seq2seq.Logits: ort.Float32([]int64{int64(rows), int64(tl), int64(m.vocab)}, logits)}, nil
}

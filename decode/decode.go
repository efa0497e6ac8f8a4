package decode

import (
	"fmt"
	"github.com/qatc/qatc/seq2seq"
	"math"
	"sort"
	"sync"

	"github.com/qatc/qatc/ort"
)

// DefaultLengthPenalty is LightSeq's and NeurST's default length_penalty α.
const DefaultLengthPenalty = 0.6

// DefaultMaxExtra is how many tokens longer than its source a translation
// may grow by default.
const DefaultMaxExtra = 50

// Options configure Decode. The zero value decodes greedily with the
// default special ids, up to source length + 50 tokens, 32 sentences a batch.
type Options struct {
	// Special are the pad, bos and eos ids; the zero value means
	// DefaultSpecial.
	Special seq2seq.Special
	// Beam is the beam size; 0 and 1 decode greedily.
	Beam int
	// LengthPenalty is LightSeq's length_penalty α (≥ 0): a finished
	// hypothesis of L tokens (EOS counted) with log-probability logP
	// scores logP·((5+L)/6)^-α, the GNMT normalisation that LightSeq's
	// length_norm and NeurST's beam search compute; 0 ranks by logP.
	LengthPenalty float64
	// A translation has at most len(source)+MaxExtra tokens (EOS counted),
	// and at most MaxLen when MaxLen > 0. With both 0, MaxExtra is 50;
	// with only MaxLen set, MaxLen alone limits.
	MaxExtra, MaxLen int
	// BatchSize is the number of sentences run together (0 means 32);
	// sentences are sorted by source length first, so a batch pads little.
	BatchSize int
	// Workers is the number of batches decoded at once (0 means 1); the
	// model's Start and its states' Steps then run concurrently.
	Workers int
	// Progress, when set, is called after each batch with the number of
	// sentences done and the total (never concurrently).
	Progress func(done, total int)
}

// Model is what decoding needs of a model: the decoding state of a batch
// of sources. Decode may call Start from several goroutines at once.
type Model interface {
	// Start encodes the sources (token ids as the model reads them) and
	// returns the batch's state, one row per source, before any target
	// token.
	Start(srcs [][]int64) (State, error)
}

// State is a batch being decoded, one row per hypothesis. A State that
// holds resources also has a Close method, which decoding calls when the
// batch is done.
type State interface {
	// Step feeds each row's next target token (BOS first) and returns the
	// logits of the token after it, [rows × vocab] row-major, and the
	// vocabulary size.
	Step(tokens []int64) ([]float32, int, error)
	// Reorder makes row i what row rows[i] was: rows may leave rows out
	// (finished sentences) and repeat them (beams of one parent).
	Reorder(rows []int) error
}

// StartFunc is a Model made of its Start function, for decoders whose
// state has a type of its own (lightseq's Reference).
type StartFunc func(srcs [][]int64) (State, error)

// Start calls f.
func (f StartFunc) Start(srcs [][]int64) (State, error) { return f(srcs) }

// Stepper is a model that scores a whole target prefix at once: the
// logits of the next token after each row's prefix. Seq2Seq implements it
// with onnxruntime; Rerun turns one into a Model that re-runs it over the
// growing prefixes.
type Stepper interface {
	// NextLogits returns for src [rows, S] and tgt [rows, T] the logits at
	// position T-1, [rows × vocab] row-major, and the vocabulary size.
	NextLogits(src, tgt *ort.Tensor) ([]float32, int, error)
}

// Rerun decodes with a Stepper: every step runs it on the sources and the
// whole target prefixes, so a step costs the full forward pass (no cache).
func Rerun(m Stepper, sp seq2seq.Special) Model { return rerun{m, sp} }

type rerun struct {
	m  Stepper
	sp seq2seq.Special
}

func (r rerun) Start(srcs [][]int64) (State, error) {
	return &rerunState{m: r.m, sp: r.sp, srcs: srcs, fed: make([][]int64, len(srcs))}, nil
}

// rerunState holds each row's source and the target tokens fed so far.
type rerunState struct {
	m    Stepper
	sp   seq2seq.Special
	srcs [][]int64
	fed  [][]int64
}

func (s *rerunState) Step(tokens []int64) ([]float32, int, error) {
	if len(tokens) != len(s.srcs) {
		return nil, 0, fmt.Errorf("decoding: %d tokens for %d rows", len(tokens), len(s.srcs))
	}
	for i, t := range tokens {
		s.fed[i] = append(s.fed[i], t)
	}
	src, tgt := rows(s.srcs, s.fed, s.sp)
	return s.m.NextLogits(src, tgt)
}

func (s *rerunState) Reorder(rows []int) error {
	srcs := make([][]int64, len(rows))
	fed := make([][]int64, len(rows))
	for i, r := range rows {
		srcs[i] = s.srcs[r]
		fed[i] = append([]int64(nil), s.fed[r]...)
	}
	s.srcs, s.fed = srcs, fed
	return nil
}

// Hypothesis is one decoded translation.
type Hypothesis struct {
	// IDs are the generated tokens without BOS and EOS.
	IDs []int64 `json:"ids"`
	// LogProb is the sum of the tokens' log-probabilities (EOS included
	// when the hypothesis ended with it).
	LogProb float64 `json:"log_prob"`
	// Score is LogProb with the length penalty applied.
	Score float64 `json:"score"`
	// Finished is false when the hypothesis hit the length limit before EOS.
	Finished bool `json:"finished"`
}

// Decode translates each source (token ids as the model reads them, EOS
// included where the model was trained so) with m, greedily or by beam
// search, and returns the hypotheses in the sources' order. Sources are
// sorted by length and decoded in batches of similar length, Workers
// batches at a time.
func Decode(m Model, srcs [][]int64, opts Options) ([]Hypothesis, error) {
	o, err := opts.WithDefaults()
	if err != nil {
		return nil, err
	}
	// A model with a table of positions decodes at most that many tokens.
	if p, ok := m.(interface{ MaxPositions() int }); ok && p.MaxPositions() > 0 && (o.MaxLen == 0 || o.MaxLen > p.MaxPositions()) {
		o.MaxLen = p.MaxPositions()
	}
	order := make([]int, len(srcs))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return len(srcs[order[a]]) > len(srcs[order[b]]) })
	// Fewer sentences than workers × batch: smaller batches, so that every
	// worker has one.
	size := o.BatchSize
	if o.Workers > 1 {
		size = max(1, min(size, (len(srcs)+o.Workers-1)/o.Workers))
	}
	var batches [][]int
	for start := 0; start < len(order); start += size {
		batches = append(batches, order[start:min(start+size, len(order))])
	}
	out := make([]Hypothesis, len(srcs))
	var (
		mu    sync.Mutex
		done  int
		first error
	)
	work := make(chan []int)
	var wg sync.WaitGroup
	for range min(o.Workers, len(batches)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for idx := range work {
				batch := make([][]int64, len(idx))
				for i, j := range idx {
					batch[i] = srcs[j]
				}
				var hyps []Hypothesis
				var err error
				if o.Beam <= 1 {
					hyps, err = greedy(m, batch, o)
				} else {
					hyps, err = beamSearch(m, batch, o)
				}
				mu.Lock()
				if err != nil {
					if first == nil {
						first = err
					}
					mu.Unlock()
					continue
				}
				for i, j := range idx {
					out[j] = hyps[i]
				}
				done += len(idx)
				if o.Progress != nil {
					o.Progress(done, len(srcs))
				}
				mu.Unlock()
			}
		}()
	}
	for _, idx := range batches {
		mu.Lock()
		failed := first != nil
		mu.Unlock()
		if failed {
			break
		}
		work <- idx
	}
	close(work)
	wg.Wait()
	if first != nil {
		return nil, first
	}
	return out, nil
}

// WithDefaults checks the options and returns them with the defaults
// Decode uses filled in (special ids, maximum length, batch size, one
// worker), so that callers can validate before they load a model.
func (o Options) WithDefaults() (Options, error) {
	if o.Special == (seq2seq.Special{}) {
		o.Special = seq2seq.DefaultSpecial()
	}
	sp := o.Special
	if sp.BOS == sp.EOS || sp.Pad == sp.EOS {
		return o, fmt.Errorf("special ids pad %d, bos %d, eos %d: eos must differ from pad and bos; check --pad-id, --bos-id, --eos-id", sp.Pad, sp.BOS, sp.EOS)
	}
	switch {
	case o.Beam < 0:
		return o, fmt.Errorf("beam size %d: use 1 (greedy) or more", o.Beam)
	case o.LengthPenalty < 0 || math.IsNaN(o.LengthPenalty):
		return o, fmt.Errorf("length penalty %v: use a value ≥ 0 (0 ranks by log-probability, LightSeq's default is 0.6)", o.LengthPenalty)
	case o.MaxExtra < 0 || o.MaxLen < 0:
		return o, fmt.Errorf("maximum length: extra %d, cap %d: neither may be negative", o.MaxExtra, o.MaxLen)
	case o.BatchSize < 0:
		return o, fmt.Errorf("batch size %d: use 1 or more", o.BatchSize)
	case o.Workers < 0:
		return o, fmt.Errorf("%d workers: use 1 or more", o.Workers)
	}
	o.Workers = max(o.Workers, 1)
	if o.MaxExtra == 0 && o.MaxLen == 0 {
		o.MaxExtra = DefaultMaxExtra
	}
	if o.BatchSize == 0 {
		o.BatchSize = 32
	}
	return o, nil
}

// limit is the most tokens (EOS counted) a translation of a source of n
// tokens may have.
func (o Options) limit(n int) int {
	l := math.MaxInt
	if o.MaxExtra > 0 {
		l = n + o.MaxExtra
	}
	if o.MaxLen > 0 {
		l = min(l, o.MaxLen)
	}
	return max(l, 1)
}

// lengthNorm is the factor a log-probability of a hypothesis of n tokens is
// multiplied by: LightSeq's length_norm, ((5+n)/6)^-α.
func (o Options) lengthNorm(n int) float64 {
	if o.LengthPenalty == 0 {
		return 1
	}
	return math.Pow((5+float64(n))/6, -o.LengthPenalty)
}

// rows builds a full-sequence model's inputs for the given sources and
// target tokens fed so far (BOS first, all of one length): sources padded
// to the longest.
func rows(srcs [][]int64, fed [][]int64, sp seq2seq.Special) (src, tgt *ort.Tensor) {
	s := 1
	for _, x := range srcs {
		s = max(s, len(x))
	}
	t := len(fed[0])
	sd := make([]int64, len(srcs)*s)
	td := make([]int64, len(srcs)*t)
	for r := range srcs {
		row := sd[r*s : (r+1)*s]
		n := copy(row, srcs[r])
		for i := n; i < s; i++ {
			row[i] = sp.Pad
		}
		copy(td[r*t:(r+1)*t], fed[r])
	}
	return ort.Int64([]int64{int64(len(srcs)), int64(s)}, sd),
		ort.Int64([]int64{int64(len(srcs)), int64(t)}, td)
}

// top feeds tokens to st and returns each row's k best next tokens
// (k is capped at the vocabulary) and their log-probabilities, row-major,
// with the k used.
func top(st State, tokens []int64, k int, sp seq2seq.Special) ([]int64, []float32, int, error) {
	logits, v, err := st.Step(tokens)
	if err != nil {
		return nil, nil, 0, err
	}
	if v <= 0 || len(logits) != len(tokens)*v {
		return nil, nil, 0, fmt.Errorf("decoding: the model returned %d logits for %d rows (vocabulary %d)", len(logits), len(tokens), v)
	}
	for _, id := range []int64{sp.EOS, sp.BOS, sp.Pad} {
		if id < 0 || id >= int64(v) {
			return nil, nil, 0, fmt.Errorf("special id %d is outside the model's vocabulary of %d; check --pad-id, --bos-id, --eos-id", id, v)
		}
	}
	k = min(k, v)
	ids, lps, err := topK(logits, len(tokens), v, k)
	return ids, lps, k, err
}

// reserve tells a state that has a Reserve method the most steps the
// batch of srcs can take, so that it sizes its buffers once.
func reserve(st State, srcs [][]int64, o Options) {
	r, ok := st.(interface{ Reserve(steps int) })
	if !ok {
		return
	}
	n := 0
	for _, s := range srcs {
		n = max(n, o.limit(len(s)))
	}
	if n < math.MaxInt {
		r.Reserve(n)
	}
}

// closeState releases a state's resources when it has a Close method.
func closeState(st State) {
	if c, ok := st.(interface{ Close() error }); ok {
		c.Close()
	}
}

// greedy decodes a batch by taking the most likely token at each step;
// sentences that finish leave the batch.
func greedy(m Model, srcs [][]int64, o Options) ([]Hypothesis, error) {
	st, err := m.Start(srcs)
	if err != nil {
		return nil, err
	}
	defer closeState(st)
	reserve(st, srcs, o)
	out := make([]Hypothesis, len(srcs))
	active := make([]int, len(srcs))
	prefix := make([][]int64, len(srcs))
	tokens := make([]int64, len(srcs))
	for i := range active {
		active[i] = i
		prefix[i] = []int64{}
		tokens[i] = o.Special.BOS
	}
	for len(active) > 0 {
		ids, lps, _, err := top(st, tokens, 1, o.Special)
		if err != nil {
			return nil, err
		}
		next, keep, nextTokens := active[:0:0], []int(nil), tokens[:0:0]
		for r, i := range active {
			best := ids[r]
			h := &out[i]
			h.LogProb += float64(lps[r])
			n := len(prefix[i]) + 1
			switch {
			case best == o.Special.EOS:
				h.IDs, h.Finished = prefix[i], true
			case n >= o.limit(len(srcs[i])):
				h.IDs = append(prefix[i], best)
			default:
				prefix[i] = append(prefix[i], best)
				next = append(next, i)
				keep = append(keep, r)
				nextTokens = append(nextTokens, best)
				continue
			}
			h.Score = h.LogProb * o.lengthNorm(n)
		}
		if len(next) > 0 && len(next) < len(active) {
			if err := st.Reorder(keep); err != nil {
				return nil, err
			}
		}
		active, tokens = next, nextTokens
	}
	return out, nil
}

// beam is a live hypothesis of the beam search.
type beam struct {
	ids     []int64
	logProb float64
}

// candidate is a beam extended by one token.
type candidate struct {
	beam    int
	token   int64
	logProb float64
}

// beamState is the search of one sentence.
type beamState struct {
	alive    []beam
	finished []Hypothesis
	done     bool
}

// beamSearch decodes a batch with beams of o.Beam hypotheses. Each step
// extends every live beam by its 2·Beam most likely tokens; extensions by
// EOS become finished hypotheses (scored with the length penalty), the
// best Beam others stay live. A sentence is done when its Beam best
// finished hypotheses cannot be beaten: the best live log-probability,
// which only falls, scaled by the smallest length factor still possible
// (at the length limit), is no better than the Beam-th finished score.
// At the length limit the live beams finish without EOS.
func beamSearch(m Model, srcs [][]int64, o Options) ([]Hypothesis, error) {
	k := o.Beam
	st, err := m.Start(srcs)
	if err != nil {
		return nil, err
	}
	defer closeState(st)
	reserve(st, srcs, o)
	states := make([]beamState, len(srcs))
	tokens := make([]int64, len(srcs))
	for i := range states {
		states[i].alive = []beam{{ids: []int64{}}}
		tokens[i] = o.Special.BOS
	}
	for {
		ids, lps, kk, err := top(st, tokens, 2*k, o.Special)
		if err != nil {
			return nil, err
		}
		// The rows of the next step: each live beam's parent row.
		var parents []int
		tokens = tokens[:0:0]
		r := 0
		for i := range states {
			s := &states[i]
			if s.done {
				continue
			}
			first := r
			var cands []candidate
			for bi, b := range s.alive {
				for j := r * kk; j < (r+1)*kk; j++ {
					cands = append(cands, candidate{bi, ids[j], b.logProb + float64(lps[j])})
				}
				r++
			}
			sort.SliceStable(cands, func(a, b int) bool { return cands[a].logProb > cands[b].logProb })
			n := len(s.alive[0].ids) + 1 // tokens after this step, EOS counted
			limit := o.limit(len(srcs[i]))
			var alive []beam
			var from []int
			for _, c := range cands {
				prev := s.alive[c.beam].ids
				if c.token == o.Special.EOS {
					s.finished = append(s.finished, Hypothesis{IDs: prev, LogProb: c.logProb, Score: c.logProb * o.lengthNorm(n), Finished: true})
					continue
				}
				if len(alive) < k {
					ids := make([]int64, len(prev)+1)
					copy(ids, prev)
					ids[len(prev)] = c.token
					alive = append(alive, beam{ids, c.logProb})
					from = append(from, first+c.beam)
				}
			}
			if n >= limit {
				for _, b := range alive {
					s.finished = append(s.finished, Hypothesis{IDs: b.ids, LogProb: b.logProb, Score: b.logProb * o.lengthNorm(n)})
				}
				alive = nil
			}
			sort.SliceStable(s.finished, func(a, b int) bool { return s.finished[a].Score > s.finished[b].Score })
			if len(s.finished) > k {
				s.finished = s.finished[:k]
			}
			s.alive = alive
			switch {
			case len(alive) == 0:
				s.done = true
			case len(s.finished) == k:
				bound := alive[0].logProb * o.lengthNorm(limit)
				s.done = bound <= s.finished[k-1].Score
			}
			if !s.done {
				parents = append(parents, from...)
				for _, b := range alive {
					tokens = append(tokens, b.ids[len(b.ids)-1])
				}
			}
		}
		if len(parents) == 0 {
			break
		}
		if err := st.Reorder(parents); err != nil {
			return nil, err
		}
	}
	out := make([]Hypothesis, len(srcs))
	for i, s := range states {
		out[i] = s.finished[0]
	}
	return out, nil
}

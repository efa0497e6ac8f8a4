package eval

import (
	"fmt"
	"math"
	"sort"

	"github.com/qatc/qatc/ort"
)

// Special are the pad, bos and eos ids.
type Special struct {
	Pad int64 `json:"pad"`
	BOS int64 `json:"bos"`
	EOS int64 `json:"eos"`
}

// DefaultSpecial returns the ids NeurST, fairseq and the project's models
// use: pad 0, bos 2, eos 3.
func DefaultSpecial() Special { return Special{Pad: 0, BOS: 2, EOS: 3} }

// DefaultLengthPenalty is LightSeq's and NeurST's default length_penalty α.
const DefaultLengthPenalty = 0.6

// DefaultMaxExtra is how many tokens longer than its source a translation
// may grow by default.
const DefaultMaxExtra = 50

// DecodeOptions configure Decode. The zero value decodes greedily with the
// default special ids, up to source length + 50 tokens, 32 sentences a batch.
type DecodeOptions struct {
	// Special are the pad, bos and eos ids; the zero value means
	// DefaultSpecial.
	Special Special
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
	// Progress, when set, is called after each batch with the number of
	// sentences done and the total.
	Progress func(done, total int)
}

// Stepper is what decoding needs of a model: the logits of the next token
// after each row's target prefix. Seq2Seq implements it with onnxruntime.
type Stepper interface {
	// NextLogits returns for src [rows, S] and tgt [rows, T] the logits at
	// position T-1, [rows × vocab] row-major, and the vocabulary size.
	NextLogits(src, tgt *ort.Tensor) ([]float32, int, error)
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
// search, and returns the hypotheses in the sources' order.
func Decode(m Stepper, srcs [][]int64, opts DecodeOptions) ([]Hypothesis, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	order := make([]int, len(srcs))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return len(srcs[order[a]]) > len(srcs[order[b]]) })
	out := make([]Hypothesis, len(srcs))
	for start := 0; start < len(order); start += o.BatchSize {
		idx := order[start:min(start+o.BatchSize, len(order))]
		batch := make([][]int64, len(idx))
		for i, j := range idx {
			batch[i] = srcs[j]
		}
		var hyps []Hypothesis
		if o.Beam <= 1 {
			hyps, err = greedy(m, batch, o)
		} else {
			hyps, err = beamSearch(m, batch, o)
		}
		if err != nil {
			return nil, err
		}
		for i, j := range idx {
			out[j] = hyps[i]
		}
		if o.Progress != nil {
			o.Progress(start+len(idx), len(srcs))
		}
	}
	return out, nil
}

func (o DecodeOptions) withDefaults() (DecodeOptions, error) {
	if o.Special == (Special{}) {
		o.Special = DefaultSpecial()
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
	}
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
func (o DecodeOptions) limit(n int) int {
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
func (o DecodeOptions) lengthNorm(n int) float64 {
	if o.LengthPenalty == 0 {
		return 1
	}
	return math.Pow((5+float64(n))/6, -o.LengthPenalty)
}

// rows builds the model's inputs for the given sources and target prefixes
// (all of one length): sources padded to the longest, each prefix after BOS.
func rows(srcs [][]int64, prefixes [][]int64, sp Special) (src, tgt *ort.Tensor) {
	s := 1
	for _, x := range srcs {
		s = max(s, len(x))
	}
	t := 1 + len(prefixes[0])
	sd := make([]int64, len(srcs)*s)
	td := make([]int64, len(srcs)*t)
	for r := range srcs {
		row := sd[r*s : (r+1)*s]
		n := copy(row, srcs[r])
		for i := n; i < s; i++ {
			row[i] = sp.Pad
		}
		td[r*t] = sp.BOS
		copy(td[r*t+1:(r+1)*t], prefixes[r])
	}
	return ort.Int64([]int64{int64(len(srcs)), int64(s)}, sd),
		ort.Int64([]int64{int64(len(srcs)), int64(t)}, td)
}

// step runs m on the rows and checks the logits' size.
func step(m Stepper, srcs, prefixes [][]int64, sp Special) ([]float32, int, error) {
	src, tgt := rows(srcs, prefixes, sp)
	logits, v, err := m.NextLogits(src, tgt)
	if err != nil {
		return nil, 0, err
	}
	if v <= 0 || len(logits) != len(srcs)*v {
		return nil, 0, fmt.Errorf("decoding: the model returned %d logits for %d rows (vocabulary %d)", len(logits), len(srcs), v)
	}
	for _, id := range []int64{sp.EOS, sp.BOS, sp.Pad} {
		if id < 0 || id >= int64(v) {
			return nil, 0, fmt.Errorf("special id %d is outside the model's vocabulary of %d; check --pad-id, --bos-id, --eos-id", id, v)
		}
	}
	return logits, v, nil
}

// logSumExp returns log Σ exp(row), in float64.
func logSumExp(row []float32) float64 {
	mx := math.Inf(-1)
	for _, x := range row {
		mx = math.Max(mx, float64(x))
	}
	if math.IsInf(mx, 0) || math.IsNaN(mx) {
		return mx
	}
	s := 0.0
	for _, x := range row {
		s += math.Exp(float64(x) - mx)
	}
	return mx + math.Log(s)
}

// greedy decodes a batch by taking the most likely token at each step;
// sentences that finish leave the batch.
func greedy(m Stepper, srcs [][]int64, o DecodeOptions) ([]Hypothesis, error) {
	out := make([]Hypothesis, len(srcs))
	active := make([]int, len(srcs))
	prefix := make([][]int64, len(srcs))
	for i := range active {
		active[i] = i
		prefix[i] = []int64{}
	}
	for len(active) > 0 {
		as := make([][]int64, len(active))
		ap := make([][]int64, len(active))
		for r, i := range active {
			as[r], ap[r] = srcs[i], prefix[i]
		}
		logits, v, err := step(m, as, ap, o.Special)
		if err != nil {
			return nil, err
		}
		next := active[:0:0]
		for r, i := range active {
			row := logits[r*v : (r+1)*v]
			best := 0
			for k, x := range row {
				if x > row[best] {
					best = k
				}
			}
			h := &out[i]
			h.LogProb += float64(row[best]) - logSumExp(row)
			n := len(prefix[i]) + 1
			switch {
			case int64(best) == o.Special.EOS:
				h.IDs, h.Finished = prefix[i], true
			case n >= o.limit(len(srcs[i])):
				h.IDs = append(prefix[i], int64(best))
			default:
				prefix[i] = append(prefix[i], int64(best))
				next = append(next, i)
				continue
			}
			h.Score = h.LogProb * o.lengthNorm(n)
		}
		active = next
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
func beamSearch(m Stepper, srcs [][]int64, o DecodeOptions) ([]Hypothesis, error) {
	k := o.Beam
	states := make([]beamState, len(srcs))
	for i := range states {
		states[i].alive = []beam{{ids: []int64{}}}
	}
	for {
		var rs, rp [][]int64
		for i := range states {
			if states[i].done {
				continue
			}
			for _, b := range states[i].alive {
				rs = append(rs, srcs[i])
				rp = append(rp, b.ids)
			}
		}
		if len(rs) == 0 {
			break
		}
		logits, v, err := step(m, rs, rp, o.Special)
		if err != nil {
			return nil, err
		}
		r := 0
		for i := range states {
			st := &states[i]
			if st.done {
				continue
			}
			var cands []candidate
			for bi, b := range st.alive {
				row := logits[r*v : (r+1)*v]
				r++
				lse := logSumExp(row)
				for _, tok := range topN(row, min(2*k, v)) {
					cands = append(cands, candidate{bi, int64(tok), b.logProb + float64(row[tok]) - lse})
				}
			}
			sort.SliceStable(cands, func(a, b int) bool { return cands[a].logProb > cands[b].logProb })
			n := len(st.alive[0].ids) + 1 // tokens after this step, EOS counted
			limit := o.limit(len(srcs[i]))
			var alive []beam
			for _, c := range cands {
				prev := st.alive[c.beam].ids
				if c.token == o.Special.EOS {
					st.finished = append(st.finished, Hypothesis{IDs: prev, LogProb: c.logProb, Score: c.logProb * o.lengthNorm(n), Finished: true})
					continue
				}
				if len(alive) < k {
					ids := make([]int64, len(prev)+1)
					copy(ids, prev)
					ids[len(prev)] = c.token
					alive = append(alive, beam{ids, c.logProb})
				}
			}
			if n >= limit {
				for _, b := range alive {
					st.finished = append(st.finished, Hypothesis{IDs: b.ids, LogProb: b.logProb, Score: b.logProb * o.lengthNorm(n)})
				}
				alive = nil
			}
			sort.SliceStable(st.finished, func(a, b int) bool { return st.finished[a].Score > st.finished[b].Score })
			if len(st.finished) > k {
				st.finished = st.finished[:k]
			}
			st.alive = alive
			switch {
			case len(alive) == 0:
				st.done = true
			case len(st.finished) == k:
				bound := alive[0].logProb * o.lengthNorm(limit)
				st.done = bound <= st.finished[k-1].Score
			}
		}
	}
	out := make([]Hypothesis, len(srcs))
	for i, st := range states {
		out[i] = st.finished[0]
	}
	return out, nil
}

// topN returns the indices of the n largest values of row, largest first;
// ties go to the lower index.
func topN(row []float32, n int) []int {
	top := make([]int, 0, n+1)
	for i, x := range row {
		if len(top) == n && x <= row[top[n-1]] {
			continue
		}
		j := len(top)
		for j > 0 && x > row[top[j-1]] {
			j--
		}
		top = append(top, 0)
		copy(top[j+1:], top[j:])
		top[j] = i
		if len(top) > n {
			top = top[:n]
		}
	}
	return top
}

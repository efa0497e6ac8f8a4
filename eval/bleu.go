package eval

import (
	"fmt"
	"math"
	"regexp"
	"strings"
)

// SacreBLEUVersion is the sacreBLEU release whose definitions BLEU and chrF
// follow; it is the version field of the signatures.
const SacreBLEUVersion = "2.6.0"

// MaxNgramOrder is BLEU's n-gram order (sacreBLEU's default).
const MaxNgramOrder = 4

// The language-dependent part of mteval-v13a's tokenisation, as sacreBLEU's
// TokenizerRegexp applies it: each rule runs over the whole line in turn.
var tok13aRules = []struct {
	re   *regexp.Regexp
	repl string
}{
	// Most ASCII punctuation and symbols become tokens of their own: the
	// ranges {-~, [-`, space-&, (-+, :-@ and the slash.
	{regexp.MustCompile("([{-~\\[-` -&(-+:-@/])"), " ${1} "},
	// Period and comma unless preceded by a digit.
	{regexp.MustCompile(`([^0-9])([.,])`), "${1} ${2} "},
	// Period and comma unless followed by a digit.
	{regexp.MustCompile(`([.,])([^0-9])`), " ${1} ${2}"},
	// A dash preceded by a digit.
	{regexp.MustCompile(`([0-9])(-)`), "${1} ${2} "},
}

// Tokenize13a tokenises a line as sacreBLEU's default "13a" tokenizer does
// (the rules of mteval-v13a.pl, used by WMT) and returns the tokens.
func Tokenize13a(line string) []string {
	// The language-independent part.
	line = strings.ReplaceAll(line, "<skipped>", "")
	line = strings.ReplaceAll(line, "-\n", "")
	line = strings.ReplaceAll(line, "\n", " ")
	if strings.Contains(line, "&") {
		line = strings.ReplaceAll(line, "&quot;", `"`)
		line = strings.ReplaceAll(line, "&amp;", "&")
		line = strings.ReplaceAll(line, "&lt;", "<")
		line = strings.ReplaceAll(line, "&gt;", ">")
	}
	line = " " + line + " "
	for _, r := range tok13aRules {
		line = r.re.ReplaceAllString(line, r.repl)
	}
	return pyFields(line)
}

// isPySpace reports whether Python's str.split() and str.strip() treat r as
// whitespace: Go's unicode.IsSpace plus the information separators
// U+001C..U+001F, which Python counts and Go does not.
func isPySpace(r rune) bool {
	switch r {
	case '\t', '\n', '\v', '\f', '\r', ' ', 0x1c, 0x1d, 0x1e, 0x1f, 0x85, 0xa0,
		0x1680, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000:
		return true
	}
	return r >= 0x2000 && r <= 0x200a
}

// pyFields splits s as Python's s.split() does.
func pyFields(s string) []string { return strings.FieldsFunc(s, isPySpace) }

// BLEU is a corpus BLEU score with the statistics sacreBLEU reports.
// Score and Precisions are percentages (0-100).
type BLEU struct {
	Score      float64                `json:"score"`
	Counts     [MaxNgramOrder]int     `json:"counts"` // clipped n-gram matches per order
	Totals     [MaxNgramOrder]int     `json:"totals"` // hypothesis n-grams per order
	Precisions [MaxNgramOrder]float64 `json:"precisions"`
	BP         float64                `json:"bp"`
	Ratio      float64                `json:"ratio"` // HypLen / RefLen
	HypLen     int                    `json:"hyp_len"`
	RefLen     int                    `json:"ref_len"`
}

// BLEUSignature is the signature sacreBLEU prints for its default BLEU
// (one reference, mixed case, no effective order, 13a, exp smoothing).
const BLEUSignature = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" + SacreBLEUVersion

// Signature returns BLEUSignature.
func (b *BLEU) Signature() string { return BLEUSignature }

// String formats b as sacreBLEU's text output does, e.g.
// "BLEU = 12.60 41.3/13.6/8.1/5.6 (BP = 1.000 ratio = 1.033 hyp_len = 6421 ref_len = 6218)".
func (b *BLEU) String() string {
	p := make([]string, len(b.Precisions))
	for i, x := range b.Precisions {
		p[i] = fmt.Sprintf("%.1f", x)
	}
	return fmt.Sprintf("BLEU = %.2f %s (BP = %.3f ratio = %.3f hyp_len = %d ref_len = %d)",
		b.Score, strings.Join(p, "/"), b.BP, b.Ratio, b.HypLen, b.RefLen)
}

// CorpusBLEU computes corpus BLEU of hypotheses against one reference each,
// with sacreBLEU's defaults: each line right-stripped and tokenised by
// Tokenize13a, clipped n-gram counts up to 4-grams summed over the corpus,
// the brevity penalty, and exponential smoothing.
func CorpusBLEU(hyps, refs []string) (*BLEU, error) {
	if len(hyps) != len(refs) {
		return nil, fmt.Errorf("BLEU: %d hypotheses but %d references: give one reference line per hypothesis", len(hyps), len(refs))
	}
	var st bleuStats
	for i := range hyps {
		st.add(Tokenize13a(pyRstrip(hyps[i])), Tokenize13a(pyRstrip(refs[i])))
	}
	return st.score(), nil
}

func pyRstrip(s string) string { return strings.TrimRightFunc(s, isPySpace) }

// bleuStats are BLEU's sufficient statistics, summed over sentences.
type bleuStats struct {
	hypLen, refLen int
	correct, total [MaxNgramOrder]int
}

// add counts one sentence pair.
func (st *bleuStats) add(hyp, ref []string) {
	st.hypLen += len(hyp)
	st.refLen += len(ref)
	refCounts := ngramCounts(ref)
	for g, c := range ngramCounts(hyp) {
		n := strings.Count(g, " ")
		st.total[n] += c
		st.correct[n] += min(c, refCounts[g])
	}
}

// ngramCounts counts the 1- to 4-grams of toks; an n-gram's key is its
// tokens joined by single spaces (tokens hold no spaces, so the number of
// spaces is the order minus one).
func ngramCounts(toks []string) map[string]int {
	m := make(map[string]int, MaxNgramOrder*len(toks))
	for n := 1; n <= MaxNgramOrder; n++ {
		for i := 0; i+n <= len(toks); i++ {
			m[strings.Join(toks[i:i+n], " ")]++
		}
	}
	return m
}

// score computes BLEU from the statistics as sacreBLEU's compute_bleu does
// with smooth_method="exp": an order with no match gets the precision
// 100/(2^k·total), k counting the zero-match orders so far; an order with
// no hypothesis n-grams ends the loop and leaves its precision (and those
// after it) zero, which makes the score zero.
func (st *bleuStats) score() *BLEU {
	b := &BLEU{HypLen: st.hypLen, RefLen: st.refLen, Counts: st.correct, Totals: st.total, BP: 1}
	if st.refLen > 0 {
		b.Ratio = float64(st.hypLen) / float64(st.refLen)
	}
	if st.hypLen < st.refLen {
		b.BP = 0
		if st.hypLen > 0 {
			b.BP = math.Exp(1 - float64(st.refLen)/float64(st.hypLen))
		}
	}
	any := false
	for _, c := range st.correct {
		any = any || c > 0
	}
	if !any {
		// sacreBLEU returns 0 with zero precisions when nothing matches.
		return b
	}
	smooth := 1.0
	for n := 0; n < MaxNgramOrder; n++ {
		if st.total[n] == 0 {
			break
		}
		if st.correct[n] == 0 {
			smooth *= 2
			b.Precisions[n] = 100 / (smooth * float64(st.total[n]))
		} else {
			b.Precisions[n] = 100 * float64(st.correct[n]) / float64(st.total[n])
		}
	}
	sum := 0.0
	for _, p := range b.Precisions {
		sum += pyLog(p)
	}
	b.Score = b.BP * math.Exp(sum/MaxNgramOrder)
	return b
}

// pyLog is sacreBLEU's my_log: the natural log, with a huge negative value
// for zero so that a missing order drives the geometric mean to zero.
func pyLog(x float64) float64 {
	if x == 0 {
		return -9999999999
	}
	return math.Log(x)
}

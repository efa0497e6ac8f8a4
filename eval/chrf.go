package eval

import (
	"fmt"
	"strings"
)

// ChrFOrder and ChrFBeta are sacreBLEU's chrF defaults: character 6-grams,
// recall weighted twice as much as precision.
const (
	ChrFOrder = 6
	ChrFBeta  = 2
)

// ChrFSignature is the signature sacreBLEU prints for its default chrF.
const ChrFSignature = "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:" + SacreBLEUVersion

// ChrF is a corpus chrF score (0-100) with its per-order statistics.
type ChrF struct {
	Score float64 `json:"score"`
	// Hyp, Ref and Match count the character n-grams of order i+1.
	Hyp   [ChrFOrder]int `json:"hyp"`
	Ref   [ChrFOrder]int `json:"ref"`
	Match [ChrFOrder]int `json:"match"`
}

// Signature returns ChrFSignature.
func (c *ChrF) Signature() string { return ChrFSignature }

// String formats c as sacreBLEU does, e.g. "chrF2 = 61.58".
func (c *ChrF) String() string { return fmt.Sprintf("chrF%d = %.2f", ChrFBeta, c.Score) }

// CorpusChrF computes corpus chrF with sacreBLEU's defaults (character
// 6-grams, β = 2, whitespace removed, no word n-grams, effective-order
// averaging): per-order counts are summed over the corpus, precision and
// recall are averaged over the orders where both hypothesis and reference
// have n-grams, and the F-β of those averages is the score.
func CorpusChrF(hyps, refs []string) (*ChrF, error) {
	if len(hyps) != len(refs) {
		return nil, fmt.Errorf("chrF: %d hypotheses but %d references: give one reference line per hypothesis", len(hyps), len(refs))
	}
	c := &ChrF{}
	for i := range hyps {
		h := []rune(strings.Join(pyFields(hyps[i]), ""))
		r := []rune(strings.Join(pyFields(refs[i]), ""))
		for n := 1; n <= ChrFOrder; n++ {
			hc, rc := charNgrams(h, n), charNgrams(r, n)
			rTotal := 0
			for _, k := range rc {
				rTotal += k
			}
			hTotal, match := 0, 0
			for g, k := range hc {
				hTotal += k
				match += min(k, rc[g])
			}
			if rTotal == 0 {
				// sacreBLEU does not count hypothesis n-grams of an order
				// the reference lacks.
				hTotal = 0
			}
			c.Hyp[n-1] += hTotal
			c.Ref[n-1] += rTotal
			c.Match[n-1] += match
		}
	}
	c.Score = c.fScore()
	return c, nil
}

func charNgrams(s []rune, n int) map[string]int {
	m := make(map[string]int)
	for i := 0; i+n <= len(s); i++ {
		m[string(s[i:i+n])]++
	}
	return m
}

func (c *ChrF) fScore() float64 {
	var prec, rec float64
	eff := 0
	for i := 0; i < ChrFOrder; i++ {
		if c.Hyp[i] > 0 && c.Ref[i] > 0 {
			prec += float64(c.Match[i]) / float64(c.Hyp[i])
			rec += float64(c.Match[i]) / float64(c.Ref[i])
			eff++
		}
	}
	if eff == 0 {
		return 0
	}
	prec /= float64(eff)
	rec /= float64(eff)
	if prec+rec == 0 {
		return 0
	}
	b2 := float64(ChrFBeta * ChrFBeta)
	return 100 * (1 + b2) * prec * rec / (b2*prec + rec)
}

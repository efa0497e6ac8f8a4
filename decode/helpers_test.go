package decode

import (
	"math"
	"math/rand/v2"
	"testing"
)

// logSumExp returns log Σ exp(row) in float64, the definition the
// decoding head's log-probabilities are checked against.
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

// TestTopK checks the decoding head against the definitions: the k
// largest logits (ties to the lower index) and their log-probabilities.
func TestTopK(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 5))
	rows, v := 5, 3000
	logits := make([]float32, rows*v)
	for i := range logits {
		logits[i] = float32(r.NormFloat64() * 6)
	}
	logits[7], logits[9] = 40, 40       // a tie in row 0
	logits[v+3] = float32(math.Inf(-1)) // a masked token
	for i := 2 * v; i < 3*v; i++ {      // row 2: all equal
		logits[i] = 1
	}
	for _, k := range []int{1, 8} {
		ids, lps, err := topK(logits, rows, v, k)
		if err != nil {
			t.Fatal(err)
		}
		for row := range rows {
			x := logits[row*v : (row+1)*v]
			want := topN(x, k)
			lse := logSumExp(x)
			for j, tok := range want {
				got := ids[row*k+j]
				if got != int64(tok) {
					t.Fatalf("k %d row %d: rank %d is token %d, want %d", k, row, j, got, tok)
				}
				if d := math.Abs(float64(lps[row*k+j]) - (float64(x[tok]) - lse)); d > 1e-5*math.Max(1, math.Abs(lse)) {
					t.Errorf("k %d row %d token %d: log-prob %g, want %g", k, row, tok, lps[row*k+j], float64(x[tok])-lse)
				}
			}
		}
	}
}

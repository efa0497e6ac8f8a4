package eval

import (
	"encoding/json"
	"math"
	"os"
	"strings"
	"testing"
)

// The expected tokenisations are sacreBLEU 2.6.0's Tokenizer13a output for
// the same (right-stripped) lines.
func TestTokenize13a(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Hello, world!", "Hello , world !"},
		{"It costs $3.50, or 3,50 EUR.", "It costs $ 3.50 , or 3,50 EUR ."},
		{"1990-2000 and well-known", "1990 - 2000 and well-known"},
		{"e.g. U.S.A. 5.", "e . g . U . S . A . 5 ."},
		{"&quot;quoted&quot; &amp; &lt;tag&gt;", `" quoted " & < tag >`},
		{"line-\nbreak and\nnewline", "linebreak and newline"},
		{"<skipped> skipped words", "skipped words"},
		{"a/b (c) [d] {e} ~f^ `g` @h #i %j", "a / b ( c ) [ d ] { e } ~ f ^ ` g ` @ h # i % j"},
		{"don't 'quote'", "don't 'quote'"},
		{"tabs\tand\u00a0nbsp\u001cfs", "tabs and nbsp fs"},
		{"ends with dots...", "ends with dots . . ."},
		{"x.y,z .5 5. ,5 5,", "x . y , z . 5 5 . , 5 5 ,"},
		{"café über-cool — dash", "café über-cool — dash"},
		{"  leading and trailing  ", "leading and trailing"},
		{"", ""},
	} {
		if got := strings.Join(Tokenize13a(pyRstrip(tc.in)), " "); got != tc.want {
			t.Errorf("Tokenize13a(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol }

func checkBLEU(t *testing.T, name string, got *BLEU, want BLEU) {
	t.Helper()
	if !near(got.Score, want.Score, 1e-9) || !near(got.BP, want.BP, 1e-12) ||
		got.HypLen != want.HypLen || got.RefLen != want.RefLen ||
		got.Counts != want.Counts || got.Totals != want.Totals {
		t.Errorf("%s: got %+v, want %+v", name, *got, want)
	}
	for i := range want.Precisions {
		if !near(got.Precisions[i], want.Precisions[i], 1e-9) {
			t.Errorf("%s: precision %d = %.15g, want %.15g", name, i+1, got.Precisions[i], want.Precisions[i])
		}
	}
}

// The fixture, by hand (13a tokens; "·" separates sentences' counts):
//
//  1. hyp "the cat sat on the mat ." ref "the cat sat on a mat ." (7, 7 tokens)
//     1-grams 6/7 (the is clipped to 1), 2-grams 4/6 (the cat, cat sat,
//     sat on, mat .), 3-grams 2/5, 4-grams 1/4.
//  2. hyp "It costs 3,50 euros - really ?" ref "It costs 3,50 euros , really ?"
//     (7, 7: the comma between digits stays, the dash is not split, the
//     comma after "euros" is) 1-grams 6/7, 2-grams 4/6, 3-grams 2/5, 4-grams 1/4.
//  3. hyp "Hello world" ref "Hello there big world" (2, 4): 1-grams 2/2,
//     2-grams 0/1, no 3- or 4-grams.
//
// Corpus: matches 14, 8, 4, 2 of 16, 13, 10, 8 n-grams; precisions 87.5,
// 800/13 = 61.538…, 40, 25; hyp_len 16 < ref_len 18 so BP = e^(1-18/16) =
// e^-0.125 = 0.88249690258…; BLEU = BP·(87.5·(800/13)·40·25)^¼ = 42.511052912…
// (sacreBLEU 2.6.0 prints "BLEU = 42.51 87.5/61.5/40.0/25.0 (BP = 0.882
// ratio = 0.889 hyp_len = 16 ref_len = 18)").
func TestBLEUHandFixture(t *testing.T) {
	hyps := []string{"the cat sat on the mat.", "It costs 3,50 euros - really?", "Hello world"}
	refs := []string{"the cat sat on a mat.", "It costs 3,50 euros, really?", "Hello there big world"}
	got, err := CorpusBLEU(hyps, refs)
	if err != nil {
		t.Fatal(err)
	}
	bp := math.Exp(-0.125)
	checkBLEU(t, "fixture", got, BLEU{
		Score:      bp * math.Pow(87.5*(800.0/13)*40*25, 0.25),
		Counts:     [4]int{14, 8, 4, 2},
		Totals:     [4]int{16, 13, 10, 8},
		Precisions: [4]float64{87.5, 800.0 / 13, 40, 25},
		BP:         bp, HypLen: 16, RefLen: 18,
	})
	if !near(got.Score, 42.51105291208334, 1e-9) {
		t.Errorf("score %.15g, want sacreBLEU's 42.51105291208334", got.Score)
	}
	const wantStr = "BLEU = 42.51 87.5/61.5/40.0/25.0 (BP = 0.882 ratio = 0.889 hyp_len = 16 ref_len = 18)"
	if got.String() != wantStr {
		t.Errorf("String() = %q, want %q", got.String(), wantStr)
	}
	if got.Signature() != "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0" {
		t.Errorf("signature %q", got.Signature())
	}
}

func TestBLEUCases(t *testing.T) {
	for _, tc := range []struct {
		name       string
		hyps, refs []string
		want       BLEU
	}{
		{
			name: "perfect match",
			hyps: []string{"a b c d e", "the end ."}, refs: []string{"a b c d e", "the end."},
			want: BLEU{Score: 100, Counts: [4]int{8, 6, 4, 2}, Totals: [4]int{8, 6, 4, 2},
				Precisions: [4]float64{100, 100, 100, 100}, BP: 1, HypLen: 8, RefLen: 8},
		},
		{
			// sys_len 0: BP 0, no matches, score 0.
			name: "empty hypothesis",
			hyps: []string{""}, refs: []string{"a b c"},
			want: BLEU{HypLen: 0, RefLen: 3},
		},
		{
			// All n-grams match but the hypothesis is 4 of 6 tokens:
			// BP = e^(1-6/4) = e^-0.5, precisions 100.
			name: "brevity penalty",
			hyps: []string{"a b c d"}, refs: []string{"a b c d e f"},
			want: BLEU{Score: 100 * math.Exp(-0.5), Counts: [4]int{4, 3, 2, 1}, Totals: [4]int{4, 3, 2, 1},
				Precisions: [4]float64{100, 100, 100, 100}, BP: math.Exp(-0.5), HypLen: 4, RefLen: 6},
		},
		{
			// "a b c d" vs "a b x d": 3/4, 1/3, then 0/2 and 0/1; exp
			// smoothing gives 100/(2·2) = 25 and 100/(4·1) = 25.
			name: "exp smoothing",
			hyps: []string{"a b c d"}, refs: []string{"a b x d"},
			want: BLEU{Score: math.Pow(75*(100.0/3)*25*25, 0.25), Counts: [4]int{3, 1, 0, 0}, Totals: [4]int{4, 3, 2, 1},
				Precisions: [4]float64{75, 100.0 / 3, 25, 25}, BP: 1, HypLen: 4, RefLen: 4},
		},
		{
			// No 3-grams at all: the loop stops, precisions 3 and 4 stay 0
			// and the score is 0 although everything matches.
			name: "too short for 3-grams",
			hyps: []string{"a b"}, refs: []string{"a b"},
			want: BLEU{Counts: [4]int{2, 1, 0, 0}, Totals: [4]int{2, 1, 0, 0},
				Precisions: [4]float64{100, 100, 0, 0}, BP: 1, HypLen: 2, RefLen: 2},
		},
		{
			// Values from sacreBLEU 2.6.0 on the same lines.
			name: "sacrebleu corpus",
			hyps: []string{"The quick brown fox jumps over the lazy dog.", "Prices rose 3.5% in 1999-2000, analysts said.",
				`"Yes," she said &amp; left.`, "A B C D"},
			refs: []string{"The quick brown fox jumped over the lazy dog.", "Prices rose by 3.5% in 1999-2000, said analysts.",
				"&quot;Yes,&quot; she said and left.", "a b c d"},
			want: BLEU{Score: 57.25985698228472, Counts: [4]int{29, 20, 14, 10}, Totals: [4]int{35, 31, 27, 23},
				Precisions: [4]float64{82.85714285714286, 64.51612903225806, 51.851851851851855, 43.47826086956522},
				BP:         0.9718328750329812, HypLen: 35, RefLen: 36},
		},
		{
			name: "sacrebleu unicode",
			hyps: []string{"der Hund beißt den Mann", "ein Haus"},
			refs: []string{"der Hund biss den Mann", "das Haus ist groß"},
			want: BLEU{Score: 20.873176328735713, Counts: [4]int{5, 2, 0, 0}, Totals: [4]int{7, 5, 3, 2},
				Precisions: [4]float64{71.42857142857143, 40, 16.666666666666668, 12.5},
				BP:         0.7514772930752859, HypLen: 7, RefLen: 9},
		},
	} {
		got, err := CorpusBLEU(tc.hyps, tc.refs)
		if err != nil {
			t.Fatal(err)
		}
		if tc.want.RefLen > 0 {
			tc.want.Ratio = float64(tc.want.HypLen) / float64(tc.want.RefLen)
		}
		checkBLEU(t, tc.name, got, tc.want)
	}
}

func TestBLEULineCountMismatch(t *testing.T) {
	_, err := CorpusBLEU([]string{"a", "b"}, []string{"a"})
	if err == nil || !strings.Contains(err.Error(), "2 hypotheses but 1 references") {
		t.Fatalf("got %v, want a line-count error", err)
	}
	_, err = CorpusChrF([]string{"a"}, nil)
	if err == nil {
		t.Fatal("chrF accepted mismatched line counts")
	}
}

// Expected chrF values are sacreBLEU 2.6.0's CHRF() on the same lines.
func TestChrF(t *testing.T) {
	for _, tc := range []struct {
		hyps, refs []string
		want       float64
	}{
		{[]string{"the cat sat on the mat.", "It costs 3,50 euros - really?", "Hello world"},
			[]string{"the cat sat on a mat.", "It costs 3,50 euros, really?", "Hello there big world"}, 65.87302112057716},
		{[]string{"a b c d"}, []string{"a b x d"}, 27.083333333333332},
		{[]string{"a b"}, []string{"a b"}, 100},
		{[]string{""}, []string{"a b c"}, 0},
		{[]string{"der Hund beißt den Mann", "ein Haus"}, []string{"der Hund biss den Mann", "das Haus ist groß"}, 44.558578218017246},
	} {
		got, err := CorpusChrF(tc.hyps, tc.refs)
		if err != nil {
			t.Fatal(err)
		}
		if !near(got.Score, tc.want, 1e-9) {
			t.Errorf("chrF(%q) = %.15g, want %.15g", tc.hyps, got.Score, tc.want)
		}
	}
	// "a b c d" vs "a b x d" by hand: whitespace removed, "abcd" vs "abxd";
	// 1-grams 3/4 both ways, 2-grams 1/3, 3- and 4-grams 0; orders 5 and 6
	// have no n-grams and are skipped. Average P = R = (3/4+1/3)/4 = 13/48,
	// and F2 of equal P and R is P: 100·13/48 = 27.0833…
	got, _ := CorpusChrF([]string{"a b c d"}, []string{"a b x d"})
	if !near(got.Score, 100*13.0/48, 1e-12) {
		t.Errorf("chrF by hand: %v", got.Score)
	}
}

// TestSacreBLEURandom checks tokenisation, BLEU and chrF against sacreBLEU
// 2.6.0's output on 400 random lines heavy in punctuation, digits,
// entities and odd whitespace (testdata/README.md says how they were made).
func TestSacreBLEURandom(t *testing.T) {
	data, err := os.ReadFile("testdata/sacrebleu_random.json")
	if err != nil {
		t.Fatal(err)
	}
	var want struct {
		Lines, Tokens, Hyps, Refs []string
		BLEU                      float64 `json:"bleu"`
		Counts, Totals            [4]int
		HypLen                    int     `json:"hyp_len"`
		RefLen                    int     `json:"ref_len"`
		ChrF                      float64 `json:"chrf"`
	}
	if err := json.Unmarshal(data, &want); err != nil {
		t.Fatal(err)
	}
	if len(want.Lines) != 400 || len(want.Tokens) != 400 || len(want.Hyps) != 200 {
		t.Fatalf("testdata holds %d lines, %d tokenisations, %d hypotheses", len(want.Lines), len(want.Tokens), len(want.Hyps))
	}
	for i, l := range want.Lines {
		if got := strings.Join(Tokenize13a(pyRstrip(l)), " "); got != want.Tokens[i] {
			t.Errorf("line %d %q: tokens %q, sacreBLEU %q", i, l, got, want.Tokens[i])
		}
	}
	b, err := CorpusBLEU(want.Hyps, want.Refs)
	if err != nil {
		t.Fatal(err)
	}
	if !near(b.Score, want.BLEU, 1e-9) || b.Counts != want.Counts || b.Totals != want.Totals || b.HypLen != want.HypLen || b.RefLen != want.RefLen {
		t.Errorf("BLEU %+v, sacreBLEU %.15g counts %v totals %v lengths %d %d", *b, want.BLEU, want.Counts, want.Totals, want.HypLen, want.RefLen)
	}
	c, err := CorpusChrF(want.Hyps, want.Refs)
	if err != nil {
		t.Fatal(err)
	}
	if !near(c.Score, want.ChrF, 1e-9) {
		t.Errorf("chrF %.15g, sacreBLEU %.15g", c.Score, want.ChrF)
	}
}

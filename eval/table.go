package eval

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/qatc/qatc/safeio"
)

// WriteTable writes header and rows as aligned columns separated by two
// spaces: numeric cells right-aligned, others left-aligned, a dashed rule
// under the header.
func WriteTable(w io.Writer, header []string, rows [][]string) error {
	width := make([]int, len(header))
	numeric := make([]bool, len(header))
	for i, h := range header {
		width[i] = utf8.RuneCountInString(h)
		numeric[i] = len(rows) > 0
	}
	for _, r := range rows {
		if len(r) != len(header) {
			return fmt.Errorf("table: a row has %d cells for %d columns", len(r), len(header))
		}
		for i, c := range r {
			width[i] = max(width[i], utf8.RuneCountInString(c))
			numeric[i] = numeric[i] && isNumber(c)
		}
	}
	var b strings.Builder
	line := func(cells []string) {
		for i, c := range cells {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i > 0 {
				b.WriteString("  ")
			}
			if numeric[i] {
				b.WriteString(pad + c)
			} else if i < len(cells)-1 {
				b.WriteString(c + pad)
			} else {
				b.WriteString(c)
			}
		}
		b.WriteByte('\n')
	}
	line(header)
	rule := make([]string, len(header))
	for i := range rule {
		rule[i] = strings.Repeat("-", width[i])
	}
	line(rule)
	for _, r := range rows {
		line(r)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// isNumber reports whether a cell reads as a number (signs, units such as
// "MB" or "%" and a leading "+" allowed), for right alignment.
func isNumber(s string) bool {
	s = strings.TrimSpace(s)
	if s == "" || s == "-" {
		return s == "-"
	}
	if i := strings.IndexByte(s, ' '); i > 0 {
		s = s[:i]
	}
	s = strings.TrimRight(s, "%x")
	_, err := strconv.ParseFloat(strings.TrimPrefix(s, "+"), 64)
	return err == nil
}

// EvalTable returns the header and cells of the evaluation table: model,
// BLEU, ΔBLEU, chrF, size, decoding time, ms/sentence and sentences/s.
func EvalTable(rows []Row) ([]string, [][]string) {
	header := []string{"model", "BLEU", "ΔBLEU", "chrF", "same tokens", "size", "decode s", "ms/sent", "sent/s"}
	cells := make([][]string, len(rows))
	for i, r := range rows {
		delta, agree := "-", "-"
		if i > 0 {
			delta = fmt.Sprintf("%+.2f", r.DeltaBLEU)
			agree = fmt.Sprintf("%.2f%%", 100*r.Agreement)
		}
		chrf := "-"
		if r.ChrF != nil {
			chrf = fmt.Sprintf("%.2f", r.ChrF.Score)
		}
		cells[i] = []string{
			r.Model, fmt.Sprintf("%.2f", r.BLEU.Score), delta, chrf, agree, safeio.FormatSize(r.SizeBytes, 2),
			fmt.Sprintf("%.2f", r.DecodeSeconds), fmt.Sprintf("%.1f", r.MsPerSentence), fmt.Sprintf("%.1f", r.SentencesPerSecond),
		}
	}
	return header, cells
}

// WriteEvalTable writes rows as an aligned table followed by the BLEU
// signature line.
func WriteEvalTable(w io.Writer, rows []Row) error {
	h, c := EvalTable(rows)
	if err := WriteTable(w, h, c); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "BLEU: sacreBLEU %s\nchrF: sacreBLEU %s\n", BLEUSignature, ChrFSignature)
	return err
}

// BenchTable returns the header and cells of the benchmark table.
func BenchTable(rs []BenchResult) ([]string, [][]string) {
	header := []string{"model", "cache", "batch", "src", "tgt", "threads", "encoder ms", "step ms", "median ms", "p90 ms", "sent/s", "tok/s", "peak RSS"}
	cells := make([][]string, len(rs))
	for i, r := range rs {
		cache := "no"
		if r.Cached {
			cache = "yes"
		}
		cells[i] = []string{
			r.Model, cache, strconv.Itoa(r.Batch), strconv.Itoa(r.SrcLen), strconv.Itoa(r.TgtLen), strconv.Itoa(r.Threads),
			fmt.Sprintf("%.2f", r.EncoderMs), fmt.Sprintf("%.2f", r.StepMs),
			fmt.Sprintf("%.2f", r.MedianMs), fmt.Sprintf("%.2f", r.P90Ms),
			fmt.Sprintf("%.1f", r.SentencesPerSec), fmt.Sprintf("%.0f", r.TokensPerSec), safeio.FormatSize(r.PeakRSSBytes, 2),
		}
	}
	return header, cells
}

// DecodeBenchTable returns the header and cells of the decoding
// benchmark's table, with each model's speed relative to the first.
func DecodeBenchTable(rs []DecodeBench) ([]string, [][]string) {
	header := []string{"model", "cache", "sentences", "threads", "beam", "rounds", "decode s", "sent/s", "speed-up", "cpu s", "cpu speed-up"}
	cells := make([][]string, len(rs))
	for i, r := range rs {
		cache := "no"
		if r.Cached {
			cache = "yes"
		}
		cells[i] = []string{r.Model, cache, strconv.Itoa(r.Sentences), strconv.Itoa(r.Threads), strconv.Itoa(r.Beam), strconv.Itoa(r.Rounds),
			fmt.Sprintf("%.3f", r.Seconds), fmt.Sprintf("%.1f", r.SentencesPerSec), fmt.Sprintf("%.2fx", rs[0].Seconds/r.Seconds),
			fmt.Sprintf("%.3f", r.CPUSeconds), ratio(rs[0].CPUSeconds, r.CPUSeconds)}
	}
	return header, cells
}

// ratio formats a/b as a speed-up, "-" when b is 0.
func ratio(a, b float64) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// WriteBenchTable writes benchmark results as an aligned table.
func WriteBenchTable(w io.Writer, rs []BenchResult) error {
	h, c := BenchTable(rs)
	return WriteTable(w, h, c)
}

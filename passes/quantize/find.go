package quantize

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/qatc/qatc/graph"
)

// Find returns the quantizers of m found from the graph's structure
// (Units), in graph order, as the record describes them. When m has a
// qatc.quantization record, the two must agree; its kinds are then
// authoritative. A clip tensor that is missing is an error naming it.
func Find(m *graph.Model) ([]Quantizer, error) {
	rec, err := ReadRecord(m)
	if err != nil && !errors.Is(err, ErrNoRecord) {
		return nil, err
	}
	us, err := Units(m)
	if err != nil {
		return nil, err
	}
	qs := make([]Quantizer, len(us))
	for i, u := range us {
		qs[i] = u.Quantizer(m)
	}
	if rec == nil {
		return qs, nil
	}
	return qs, checkAgainst(qs, rec)
}

// checkAgainst checks that the graph's quantizers are the record's, and
// takes the record's kinds (a weight and an activation look alike once a
// training graph turns weights into inputs).
func checkAgainst(qs []Quantizer, rec *Record) error {
	found := map[string]*Quantizer{}
	for i := range qs {
		found[qs[i].Tensor] = &qs[i]
	}
	var missing []string
	for _, r := range rec.Quantizers {
		q := found[r.Tensor]
		if q == nil {
			missing = append(missing, r.Tensor)
			continue
		}
		if r.Kind == KindWeight && q.Kind == KindAct {
			q.Kind = KindWeight
		}
		if q.Kind != r.Kind || q.Bits != r.Bits || q.Clip != r.Clip {
			return fmt.Errorf("quantizer on %s: the graph has kind %s, %d bits, clip %q but the %s record says kind %s, %d bits, clip %q: the graph was edited; re-run insert on the fp32 model", r.Tensor, q.Kind, q.Bits, q.Clip, MetadataKey, r.Kind, r.Bits, r.Clip)
		}
		q.TiedTo, q.Transposed = r.TiedTo, r.Transposed
		delete(found, r.Tensor)
	}
	if len(missing) > 0 {
		return fmt.Errorf("the %s record lists %d quantizers the graph does not have (%s): the graph was edited; re-run insert on the fp32 model", MetadataKey, len(missing), strings.Join(first(missing, 3), ", "))
	}
	if len(found) > 0 {
		var extra []string
		for t := range found {
			extra = append(extra, t)
		}
		sort.Strings(extra)
		return fmt.Errorf("the graph has %d quantizers the %s record does not list (%s): re-run insert on the fp32 model", len(extra), MetadataKey, strings.Join(first(extra, 3), ", "))
	}
	return nil
}

func first(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], "…")
	}
	return s
}

package lightseq

import (
	"fmt"
	"github.com/qatc/qatc/decode"
	"math"

	"github.com/qatc/qatc/export/lightseq/lspb"
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/transformer"
)

// The bounds Verify holds a file to. The reference decoder follows
// LightSeq's numerics, which requantize every GEMM output to int8 where
// the QAT model stays in float and run softmax in float where the QAT
// model quantizes it, so a correct file does not reproduce the QAT
// model's logits as the ONNX formats do. The error is measured as softmax
// sees it: per position, the reference's logits minus the QAT model's,
// less their mean over the vocabulary (a shift of every logit changes no
// probability), as an RMS over the RMS spread of the QAT logits around
// their means. The bounds were chosen from these measurements
// (teacher-forced, every non-pad target position):
//
//	correct files                                        top-1    RMS error
//	demo model, percentile calibration, test sentences   100%     4.5-4.6%
//	demo model, random ids (no --src)                    94.3-95.1%  5.6%
//	PyTorch nn.Transformer (random weights, random ids),
//	  minmax calibration / NeurST's initial clips        99.7/97.1%  2.7/10.4%
//	PyTorch post-norm GELU, trained, nn.Transformer and
//	  functional (Pow-scaled q, k) exports, minmax       97.0%       7.0%
//	testmodels tiny / fused post-norm GELU               98.7/96.0%  2.9/3.1%
//	broken files (tiny / fused post-norm GELU)
//	  one FFN kernel transposed                          84.6/79.9%  23.5/24.3%
//	  one kernel clip doubled                            83.9/75.2%  21.2/26.0%
//	  Q and K swapped in one layer                       94.6/89.3%  12.0/13.4%
//	  one activation clip halved                         95.3/93.3%   6.7/8.8%
//
// So the bounds sit 1.4× beyond the worst correct file; they catch gross
// breaks, not every subtle one (the last rows pass or pass in part): the
// writer's layout is tested against the QAT model's weights directly.
const (
	// MinTop1 is the least share of positions whose argmax agrees.
	MinTop1 = 0.90
	// MaxRMSErr bounds the RMS logit error relative to the logits' spread.
	MaxRMSErr = 0.15
)

// VerifyReport compares a LightSeq file's reference decoder with the QAT
// model, teacher-forced on a batch.
type VerifyReport struct {
	// Positions is the number of non-pad target positions compared.
	Positions int
	// Top1 is the share of positions whose argmax agrees; MinTop1 the
	// bound.
	Top1, MinTop1 float64
	// RMSErr is the RMS logit error relative to the logits' spread (see
	// the bounds); MaxRMSErr its bound.
	RMSErr, MaxRMSErr float64
	// MaxAbsErr is the largest |reference − QAT| logit difference, MaxAbs
	// the largest |QAT logit|.
	MaxAbsErr, MaxAbs float64
}

// String states the comparison and its bounds in one line.
func (r VerifyReport) String() string {
	return fmt.Sprintf("reference decoder (LightSeq's int8 numerics) vs the QAT model, teacher-forced on %d positions: top-1 agreement %.2f%% (min %.0f%%), RMS logit error %.2f%% of their spread (max %.0f%%), max abs error %.4g (|logits| up to %.4g)",
		r.Positions, 100*r.Top1, 100*r.MinTop1, 100*r.RMSErr, 100*r.MaxRMSErr, r.MaxAbsErr, r.MaxAbs)
}

// Verify runs the LightSeq file qt through the reference decoder,
// teacher-forced on batch (source and target ids under tm's input names,
// each row padded at its end with the file's padding id), and compares its
// logits with the QAT model's at every non-pad target position. It fails
// when top-1 agreement or the RMS error is outside the bounds above, or
// when the batch holds no position to compare. The report comes back with
// the failure.
func Verify(qat *graph.Model, tm *transformer.Model, qt *lspb.QuantTransformer, batch map[string]*ort.Tensor) (VerifyReport, error) {
	r := VerifyReport{MinTop1: MinTop1, MaxRMSErr: MaxRMSErr}
	src, tgt := batch[tm.SrcInput], batch[tm.TgtInput]
	if src == nil || tgt == nil {
		return r, fmt.Errorf("lightseq check: the check batch lacks the source ids %s or the target ids %s", tm.SrcInput, tm.TgtInput)
	}
	if len(src.Shape) != 2 || len(tgt.Shape) != 2 || src.Shape[0] != tgt.Shape[0] {
		return r, fmt.Errorf("lightseq check: source and target ids must be [rows, len] with the same rows, got %v and %v", src.Shape, tgt.Shape)
	}
	rows, sl, tl := int(src.Shape[0]), int(src.Shape[1]), int(tgt.Shape[1])
	pad := int64(qt.ModelConf.SrcPaddingId)
	row := func(t *ort.Tensor, i, n int) []int64 { return trimPad(t.Int64s()[i*n:(i+1)*n], pad) }
	for i := range rows {
		if len(row(src, i, sl)) > 0 {
			r.Positions += len(row(tgt, i, tl))
		}
	}
	if r.Positions == 0 {
		return r, fmt.Errorf("lightseq check: the check batch (%d rows) holds no sentence pair with tokens to compare; give sentences with --src and --tgt", rows)
	}
	ref, err := NewReference(qt)
	if err != nil {
		return r, fmt.Errorf("lightseq check: %w", err)
	}
	s, err := ort.Open(qat, nil)
	if err != nil {
		return r, fmt.Errorf("lightseq check: %w", err)
	}
	outs, err := s.Run(batch, tm.LogitsOutput)
	s.Close()
	if err != nil {
		return r, fmt.Errorf("lightseq check: run the QAT model: %w", err)
	}
	logits := outs[tm.LogitsOutput].Float32s()
	if len(logits) != rows*tl*ref.Vocab {
		return r, fmt.Errorf("lightseq check: the QAT model's %s holds %d values, not [%d, %d, %d] as the file's vocabulary says", tm.LogitsOutput, len(logits), rows, tl, ref.Vocab)
	}
	v := ref.Vocab
	top1 := 0
	var se, sv float64
	for i := range rows {
		sr, tg := row(src, i, sl), row(tgt, i, tl)
		if len(sr) == 0 {
			continue
		}
		got, err := ref.TeacherForced(sr, tg)
		if err != nil {
			return r, fmt.Errorf("lightseq check: sentence %d: %w", i+1, err)
		}
		for p, g := range got {
			want := logits[(i*tl+p)*v : (i*tl+p+1)*v]
			if decode.Argmax(g) == decode.Argmax(want) {
				top1++
			}
			var mw, md float64
			for j, w := range want {
				mw += float64(w)
				md += float64(g[j]) - float64(w)
			}
			mw /= float64(v)
			md /= float64(v)
			for j, w := range want {
				d := float64(g[j]) - float64(w)
				se += (d - md) * (d - md)
				sv += (float64(w) - mw) * (float64(w) - mw)
				r.MaxAbs = math.Max(r.MaxAbs, math.Abs(float64(w)))
				if math.IsNaN(d) {
					d = math.Inf(1)
				}
				r.MaxAbsErr = math.Max(r.MaxAbsErr, math.Abs(d))
			}
		}
	}
	r.Top1 = float64(top1) / float64(r.Positions)
	r.RMSErr = math.Sqrt(se / sv)
	if sv == 0 {
		r.RMSErr = math.Inf(1)
	}
	switch {
	case !(r.RMSErr <= r.MaxRMSErr):
		return r, fmt.Errorf("lightseq check: the reference decoder's logits differ from the QAT model's by %.2f%% of their spread (RMS over %d positions), more than the %.0f%% a correct file stays within", 100*r.RMSErr, r.Positions, 100*r.MaxRMSErr)
	case r.Top1 < r.MinTop1:
		return r, fmt.Errorf("lightseq check: the reference decoder's argmax agrees with the QAT model's at %.2f%% of %d positions, below the %.0f%% a correct file reaches", 100*r.Top1, r.Positions, 100*r.MinTop1)
	}
	return r, nil
}

// trimPad drops the padding at the end of a row.
func trimPad(row []int64, pad int64) []int64 {
	n := len(row)
	for n > 0 && row[n-1] == pad {
		n--
	}
	return row[:n]
}

package export

import (
	"encoding/json"
	"fmt"
	"github.com/qatc/qatc/decode"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/incremental"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/seq2seq"
	"google.golang.org/protobuf/proto"
)

// IncrementalFormats are the formats Incremental writes: Formats, and
// fp32 (a model without quantizers, or a QAT model's with them dropped).
var IncrementalFormats = append([]string{"fp32"}, Formats...)

// IncrementalOptions configure Incremental.
type IncrementalOptions struct {
	// Source names the QAT model in the config and the files' metadata.
	Source string
	// Map names tensors by role where the recogniser fails.
	Map map[string]string
	// Pad, BOS and EOS are the special ids (BOS starts a translation).
	Pad, BOS, EOS int64
	// Src and Tgt are the check batch, [rows, len] ids of the source's
	// inputs (targets BOS first), padded with Pad at the end.
	Src, Tgt *ort.Tensor
}

// IncrementalReport says what Incremental built and how it checked it.
type IncrementalReport struct {
	Format string
	Config seq2seq.Config
	Files  []FileReport
	Check  IncrementalCheck
	// Notes says what the format conversion chose, per file.
	Notes []string
}

// FileReport describes one written model.
type FileReport struct {
	File       string
	Size       int64
	IntWeights int
	// Kernels counts the nodes onnxruntime ran per operator type on the
	// check batch (one run for the encoder and the first decoder step, the
	// last step for the decoder with past); IntKernels and FloatMatMuls
	// sum the integer and float matrix kernels among them.
	Kernels      map[string]int
	IntKernels   int
	FloatMatMuls int
}

// IncrementalCheck compares the incremental models, teacher-forced through
// the cache, with the full-sequence model on the check batch.
type IncrementalCheck struct {
	Positions int
	// MaxAbsErr is the largest logit difference; Bound the allowed one
	// (the format's, as Verify's, in Step units of the logits); StepRule
	// says how Step was found.
	MaxAbsErr, Step, Bound float64
	StepRule               string
	// Top1 is the share of positions whose argmax agrees; MinTop1 the
	// floor.
	Top1, MinTop1 float64
}

// Incremental builds the encoder and cached decoder of a QAT (or fp32)
// full-sequence model (passes/incremental) and converts each graph to
// format as Export does; fp32 drops the quantizers. It then runs them on
// the check batch, one target token per step through the cache, against
// the full-sequence model in the same format (for fp32 the model without
// its quantizers): the logits must agree within the format's bound, and
// onnxruntime must run integer kernels for an integer format, as Verify
// requires of a full-sequence export.
func Incremental(m *graph.Model, format string, opts IncrementalOptions) (*incremental.Set, *IncrementalReport, error) {
	if !slices.Contains(IncrementalFormats, format) {
		return nil, nil, fmt.Errorf("unknown incremental format %q: use %s", format, strings.Join(IncrementalFormats, ", "))
	}
	if opts.Src == nil || opts.Tgt == nil {
		return nil, nil, fmt.Errorf("incremental export: no check batch")
	}
	set, err := incremental.Build(m, incremental.Options{Map: opts.Map, Pad: opts.Pad, BOS: opts.BOS, EOS: opts.EOS, Float: format == "fp32"})
	if err != nil {
		return nil, nil, err
	}
	rep, err := convertDir(&set.Dir, format, opts.Source, false, intCacheFormats[format])
	if err != nil {
		return nil, nil, err
	}
	tm := set.Model
	if err := checkIncremental(m, checkRoles{tm.SrcInput, tm.TgtInput, tm.LogitsOutput}, &set.Dir, format, opts, rep); err != nil {
		return nil, rep, err
	}
	return set, rep, nil
}

// Dir exports a seq2seq directory (m.Dir, composed as m.Graph) to
// format: every file converted as Export converts a model (fp32 drops the
// quantizers), in the directory's layout (the merged decoder rebuilt from
// the two converted decoders), and checked as Incremental checks its
// graphs: teacher-forced through the cache on the check batch against the
// composition exported to the same format. Its config keeps the
// directory's fields and records the format and the source.
func Dir(m *seq2seq.Stored, format string, opts IncrementalOptions) (*seq2seq.Dir, *IncrementalReport, error) {
	if !slices.Contains(IncrementalFormats, format) {
		return nil, nil, fmt.Errorf("unknown format %q for a model directory: use %s", format, strings.Join(IncrementalFormats, ", "))
	}
	if m.Dir == nil {
		return nil, nil, fmt.Errorf("%s is not a model directory", m.Path)
	}
	if opts.Src == nil || opts.Tgt == nil {
		return nil, nil, fmt.Errorf("directory export: no check batch")
	}
	cfg := *m.Dir.Config
	d := &seq2seq.Dir{Layout: m.Dir.Layout, Config: &cfg,
		Encoder: m.Dir.Encoder, Decoder: m.Dir.Decoder, DecoderWithPast: m.Dir.DecoderWithPast}
	if _, err := quantize.ReadRecord(m.Graph); err == nil {
		d.Config.Qatc.Quantization = json.RawMessage(must(m.Graph.Metadata(quantize.MetadataKey)))
	}
	rep, err := convertDir(d, format, opts.Source, true, false)
	if err != nil {
		return nil, nil, err
	}
	if err := checkIncremental(m.Graph, checkRoles{seq2seq.SourceIDs, seq2seq.TargetIDs, seq2seq.Logits}, d, format, opts, rep); err != nil {
		return nil, rep, err
	}
	return d, rep, nil
}

func must(s string, _ bool) string { return s }

// intCacheFormats are the formats whose incremental graphs keep the
// key/value cache as integers (incremental.IntCache): those that keep the
// attention operands' quantizers with constant scales. dynamic and
// matmulnbits drop activation quantizers, so their caches hold floats.
var intCacheFormats = map[string]bool{"qdq": true, "qoperator": true}

// convertDir converts d's graphs to format in place (fp32: the quantizers
// dropped when strip; intCache: the cache made integer where the graphs
// allow, see incremental.IntCache) and reports on each file.
func convertDir(d *seq2seq.Dir, format, source string, strip, intCache bool) (*IncrementalReport, error) {
	rep := &IncrementalReport{Format: format}
	var cache *incremental.IntCache
	if intCache {
		cache = &incremental.IntCache{}
	}
	graphs := []**graph.Model{&d.Encoder, &d.Decoder, &d.DecoderWithPast}
	for i, p := range graphs {
		f := FileReport{File: seq2seq.Files[i]}
		if format == "fp32" {
			if strip {
				out, err := quantize.Strip(*p)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", f.File, err)
				}
				*p = out
			}
			f.Size = int64(proto.Size((*p).Proto))
		} else {
			o := &Options{Source: source}
			if cache != nil {
				o.afterFold = cache.Rewrite
			}
			out, r, err := Export(*p, format, o)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f.File, err)
			}
			*p = out
			f.Size, f.IntWeights = r.Size, r.IntWeights
			for _, n := range r.Notes {
				rep.Notes = append(rep.Notes, f.File+": "+n)
			}
		}
		if source != "" {
			(*p).SetMetadata(SourceKey, source)
		}
		rep.Files = append(rep.Files, f)
	}
	d.Config.Qatc.Format, d.Config.Qatc.Source = format, source
	if cache != nil {
		if ok, why := cache.Integer(); ok {
			d.Config.Qatc.Cache, d.Config.Qatc.CacheType = incremental.IntCacheDoc, cache.Type()
		} else {
			rep.Notes = append(rep.Notes, "the key/value cache holds floats: "+why)
		}
	}
	rep.Config = *d.Config
	return rep, nil
}

// checkRoles names the full-sequence reference's inputs and logits.
type checkRoles struct{ src, tgt, logits string }

// checkIncremental runs the check batch through the set (see Incremental).
func checkIncremental(m *graph.Model, roles checkRoles, set *seq2seq.Dir, format string, opts IncrementalOptions, rep *IncrementalReport) error {
	var ref *graph.Model
	var err error
	if format == "fp32" {
		ref, err = quantize.Strip(m)
	} else {
		ref, _, err = Export(m, format, nil)
	}
	if err != nil {
		return fmt.Errorf("the full-sequence %s model: %w", format, err)
	}
	res, err := run(ref, map[string]*ort.Tensor{roles.src: opts.Src, roles.tgt: opts.Tgt}, roles.logits, nil)
	if err != nil {
		return fmt.Errorf("run the full-sequence model: %w", err)
	}
	want := res.out.Float32s()
	rows, sl, tl := int(opts.Src.Shape[0]), int(opts.Src.Shape[1]), int(opts.Tgt.Shape[1])
	var srcs, tgts [][]int64
	for r := range rows {
		s := opts.Src.Int64s()[r*sl : (r+1)*sl]
		for len(s) > 1 && s[len(s)-1] == opts.Pad {
			s = s[:len(s)-1]
		}
		srcs = append(srcs, s)
		tgts = append(tgts, opts.Tgt.Int64s()[r*tl:(r+1)*tl])
	}
	dir, err := os.MkdirTemp("", "qatc-profile")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	inc, err := decode.NewIncremental("incremental "+format, set, &ort.Options{ProfilePrefix: filepath.Join(dir, "incremental")})
	if err != nil {
		return err
	}
	got, err := inc.TeacherForced(srcs, tgts)
	if err != nil {
		inc.Close()
		return fmt.Errorf("run the incremental models: %w", err)
	}
	profiles, err := inc.EndProfiling()
	if err != nil {
		return err
	}
	for i := range rep.Files {
		f := &rep.Files[i]
		if f.Kernels, err = readProfile(profiles[f.File]); err != nil {
			return err
		}
		for op, n := range f.Kernels {
			if intKernels[op] {
				f.IntKernels += n
			}
			if floatMatMuls[op] {
				f.FloatMatMuls += n
			}
		}
	}
	v := set.Config.Vocab
	c := &rep.Check
	var amax float64
	agree := 0
	for r := range rows {
		for j := range tl {
			a := want[(r*tl+j)*v : (r*tl+j+1)*v]
			e := got[r][j*v : (j+1)*v]
			for k := range a {
				amax = math.Max(amax, math.Abs(float64(a[k])))
				d := math.Abs(float64(a[k]) - float64(e[k]))
				if math.IsNaN(d) {
					d = math.Inf(1)
				}
				c.MaxAbsErr = math.Max(c.MaxAbsErr, d)
			}
			if decode.Argmax(a) == decode.Argmax(e) {
				agree++
			}
			c.Positions++
		}
	}
	c.Top1 = float64(agree) / float64(max(c.Positions, 1))
	if format == "fp32" {
		// The same float arithmetic, summed in other orders.
		c.Step, c.MinTop1 = amax/127, 0.999
		c.Bound = 1e-4 * math.Max(1, amax)
		c.StepRule = "fp32: 1e-4 of the largest logit, float rounding"
	} else {
		// Verify's bounds, against the full-sequence model of the same
		// format: sums in other orders can put an activation on the other
		// side of a rounding boundary, and dynamic quantizes each step's
		// activations over a grid of their own.
		b := bounds[format]
		if step, rule, err := projectionStep(m, roles.logits); err == nil {
			c.Step, c.StepRule = step, rule
		} else {
			c.Step = amax / 127
			c.StepRule = fmt.Sprintf("max|%s|/127, one 8-bit step of the logits' range, because no quantized projection step applies: %v", roles.logits, err)
		}
		c.Bound, c.MinTop1 = b.Steps*c.Step, b.Top1
		ints := 0
		for _, f := range rep.Files {
			ints += f.IntKernels
		}
		if ints == 0 {
			f := rep.Files[len(rep.Files)-1]
			return fmt.Errorf("onnxruntime ran no integer kernel in the incremental %s models (a decoder step ran %s); they would run in fp32", format, kernelList(f.Kernels))
		}
	}
	switch {
	case !(c.MaxAbsErr <= c.Bound):
		return fmt.Errorf("incremental %s models, teacher-forced through the cache: max abs logit error %.4g against the full-sequence model exceeds %.4g", format, c.MaxAbsErr, c.Bound)
	case c.Top1 < c.MinTop1:
		return fmt.Errorf("incremental %s models, teacher-forced through the cache: top-1 agreement %.2f%% with the full-sequence model is below %.1f%%", format, 100*c.Top1, 100*c.MinTop1)
	}
	return nil
}

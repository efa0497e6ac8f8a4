package export

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/qatc/qatc/eval"
	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes/incremental"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/safeio"
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
	rep := &IncrementalReport{Format: format}
	graphs := []**graph.Model{&set.Encoder, &set.Decoder, &set.DecoderWithPast}
	for i, p := range graphs {
		f := FileReport{File: seq2seq.Files[i]}
		if format == "fp32" {
			f.Size = int64(proto.Size((*p).Proto))
		} else {
			out, r, err := Export(*p, format, &Options{Source: opts.Source})
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", f.File, err)
			}
			*p = out
			f.Size, f.IntWeights = r.Size, r.IntWeights
			for _, n := range r.Notes {
				rep.Notes = append(rep.Notes, f.File+": "+n)
			}
		}
		if opts.Source != "" {
			(*p).SetMetadata(SourceKey, opts.Source)
		}
		rep.Files = append(rep.Files, f)
	}
	set.Config.Qatc.Format, set.Config.Qatc.Source = format, opts.Source
	rep.Config = set.Config
	if err := checkIncremental(m, set, format, opts, rep); err != nil {
		return nil, rep, err
	}
	return set, rep, nil
}

// checkIncremental runs the check batch through the set (see Incremental).
func checkIncremental(m *graph.Model, set *incremental.Set, format string, opts IncrementalOptions, rep *IncrementalReport) error {
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
	tm := set.Model
	res, err := run(ref, map[string]*ort.Tensor{tm.SrcInput: opts.Src, tm.TgtInput: opts.Tgt}, tm.LogitsOutput, nil)
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
	inc, err := eval.NewIncremental("incremental "+format, set, &ort.Options{ProfilePrefix: filepath.Join(dir, "incremental")})
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
			if argmax(a) == argmax(e) {
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
		if step, rule, err := projectionStep(m, tm.LogitsOutput); err == nil {
			c.Step, c.StepRule = step, rule
		} else {
			c.Step = amax / 127
			c.StepRule = fmt.Sprintf("max|%s|/127, one 8-bit step of the logits' range, because no quantized projection step applies: %v", tm.LogitsOutput, err)
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

// WriteIncremental writes set to directory dir: the three models and
// config.json. The files go to a new directory beside dir, which then
// takes dir's place, so that dir never holds a partial export. An
// existing dir is replaced only when it holds an earlier incremental
// export and nothing else.
func WriteIncremental(dir string, set *incremental.Set) error {
	dir = filepath.Clean(dir)
	if err := CheckIncrementalOutput(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	// The directory is written whole under a temporary name and replaces
	// any older one in one rename (safeio: removed on failure or signal).
	var b safeio.Batch
	defer b.Abort()
	tmp, err := b.CreateDir(dir)
	if err != nil {
		return err
	}
	for name, g := range set.Graphs() {
		if err := g.Save(filepath.Join(tmp, name)); err != nil {
			return err
		}
	}
	cfg, err := set.Config.Marshal()
	if err != nil {
		return err
	}
	if err := safeio.WriteFile(filepath.Join(tmp, seq2seq.ConfigFile), cfg); err != nil {
		return err
	}
	return b.Commit()
}

// CheckIncrementalOutput checks, before any work, that dir can take an
// incremental export: it does not exist, or it is a directory holding
// only an earlier incremental export's files.
func CheckIncrementalOutput(dir string) error {
	st, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("-o %s: a file of that name exists; an incremental export is a directory", dir)
	}
	return replaceable(dir)
}

// replaceable checks that existing directory dir holds only an
// incremental export's files.
func replaceable(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		return nil
	}
	ours := map[string]bool{seq2seq.ConfigFile: true}
	for _, f := range seq2seq.Files {
		ours[f] = true
	}
	for _, e := range entries {
		if !ours[e.Name()] && !strings.HasSuffix(e.Name(), ".data") {
			return fmt.Errorf("-o %s: the directory exists and holds %s, which is not part of an incremental export; choose another directory", dir, e.Name())
		}
	}
	if _, err := seq2seq.ReadConfig(dir); err != nil {
		return fmt.Errorf("-o %s: the directory exists and is not an incremental export (%v); choose another directory", dir, err)
	}
	return nil
}

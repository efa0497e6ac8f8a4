package train

import (
	"fmt"
	"strings"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
	"github.com/qatc/qatc/passes"
	"github.com/qatc/qatc/passes/calibrate"
	"github.com/qatc/qatc/passes/quantize"
	"github.com/qatc/qatc/passes/smooth"
	"github.com/qatc/qatc/safeio"
	"github.com/qatc/qatc/seq2seq"
)

// DefaultPercentile is the percentile Insert calibrates at with the
// percentile method when none is given.
const DefaultPercentile = calibrate.DefaultPercentile

// QuantOptions are insert's quantization parameters as a user gives them:
// NeurST's quant_params string first, then each setting that is not its
// zero value on top (qatc insert's flags).
type QuantOptions struct {
	// NeurST is NeurST's quant_params YAML flow string ("" for the
	// defaults: min/max, 8 bits, clips 1.0 and 16.0).
	NeurST string
	// Bits sets weight and activation bits; WeightBits and ActBits
	// override it.
	Bits, WeightBits, ActBits int
	// WeightClipMax and ActClipMax are the initial clips.
	WeightClipMax, ActClipMax float64
	// PerChannel, Granularity and BlockSize shape the weight clips.
	PerChannel  bool
	Granularity string
	BlockSize   int
	// WeightInit says where weight clips start (quantize.InitValue, …);
	// "" starts them at max |w| when calibrating, else at WeightClipMax.
	WeightInit string
	// Include and Exclude are regular expressions over tensor and node
	// names; RecipeFile is a YAML file of per-tensor rules.
	Include, Exclude []string
	RecipeFile       string
}

// An OptionError is an option that cannot be read as given, or options
// that do not go together: the command line's fault, not the model's.
// Option names the option where Err's message does not.
type OptionError struct {
	Option string
	Err    error
}

func (e *OptionError) Error() string {
	if e.Option == "" {
		return e.Err.Error()
	}
	return e.Option + ": " + e.Err.Error()
}

// optionErrorf formats an OptionError whose message names its options.
func optionErrorf(format string, args ...any) error {
	return &OptionError{Err: fmt.Errorf(format, args...)}
}
func (e *OptionError) Unwrap() error { return e.Err }

// Params resolves the options into quantize.Params; calibrating says
// whether activation clips will be calibrated (weight clips then start at
// max |w| unless WeightInit says otherwise).
func (o QuantOptions) Params(calibrating bool) (quantize.Params, error) {
	p := quantize.DefaultParams()
	if o.NeurST != "" {
		var err error
		if p, err = quantize.ParseNeurST(o.NeurST); err != nil {
			return p, &OptionError{"--quant-params", err}
		}
	}
	if o.Bits != 0 {
		p.WeightBits, p.ActBits = o.Bits, o.Bits
	}
	if o.WeightBits != 0 {
		p.WeightBits = o.WeightBits
	}
	if o.ActBits != 0 {
		p.ActBits = o.ActBits
	}
	if o.WeightClipMax != 0 {
		p.WeightClipMax = float32(o.WeightClipMax)
	}
	if o.ActClipMax != 0 {
		p.ActClipMax = float32(o.ActClipMax)
	}
	p.PerChannel = o.PerChannel
	if o.Granularity != "" {
		p.Granularity = o.Granularity
	}
	p.BlockSize = o.BlockSize
	p.WeightInit = o.WeightInit
	if p.WeightInit == "" && calibrating {
		p.WeightInit = quantize.InitMax
	}
	p.Include, p.Exclude = o.Include, o.Exclude
	if o.RecipeFile != "" {
		data, err := safeio.ReadFile(o.RecipeFile, 64<<20)
		if err != nil {
			return p, fmt.Errorf("--recipe: %w", err)
		}
		if p.Recipe, err = quantize.ParseRecipe(data); err != nil {
			return p, fmt.Errorf("--recipe %s: %w", o.RecipeFile, err)
		}
	}
	return p, nil
}

// InsertConfig configures Insert.
type InsertConfig struct {
	Quant QuantOptions
	// CalibSrc and CalibTgt are the sentences calibration (and smoothing)
	// run the fp32 model on; without CalibSrc the activation clips start
	// at their initial value. CalibTgt "" reads CalibSrc for the decoder.
	CalibSrc, CalibTgt string
	// Method is calibrate.MinMax, Percentile or MSE ("": minmax when
	// calibrating); Percentile the percentile method's (0: the default).
	Method     string
	Percentile float64
	// Batches caps the calibration batches, of BatchTokens padded tokens.
	Batches, BatchTokens int
	// Smooth is SmoothQuant's α (0: off), measured on the calibration
	// data.
	Smooth float64
	// Tokenizer reads the sentence files (nil: token ids); Special and
	// Roles describe the model.
	Tokenizer seq2seq.Tokenizer
	Special   seq2seq.Special
	Roles     seq2seq.Roles
	// Threads is onnxruntime's intra-op thread count (0: its default).
	Threads int
	// Progress, when set, is called after each batch of a pass that runs
	// the model, with the pass's name.
	Progress func(pass string, done, total int)
	// Dump writes the model after the passes it names (--dump-after).
	Dump passes.Options
}

// Check checks the options that need no file, before anything is read:
// the calibration method, and what needs calibration data.
func (cfg InsertConfig) Check() error {
	method := cfg.Method
	if method == "" && cfg.CalibSrc != "" {
		method = calibrate.MinMax
	}
	switch {
	case method != "" && cfg.CalibSrc == "":
		return optionErrorf("--calib-method needs --calib-src (and optionally --calib-tgt) to calibrate on")
	case method != "" && method != calibrate.MinMax && method != calibrate.Percentile && method != calibrate.MSE:
		return optionErrorf("--calib-method %q: want minmax, percentile or mse", method)
	case cfg.Smooth > 0 && cfg.CalibSrc == "":
		return optionErrorf("--smooth measures the activations: give --calib-src (and optionally --calib-tgt)")
	}
	return nil
}

// InsertResult says what Insert did.
type InsertResult struct {
	Record *quantize.Record
	Params quantize.Params
	// Method is the calibration method ("" without calibration).
	Method string
	// Smoothed says which LayerNorms SmoothQuant smoothed at α
	// SmoothAlpha (0: none).
	Smoothed    smooth.Report
	SmoothAlpha float64
}

// Summary says in one line what the quantizers are and where their clips
// come from, as qatc insert prints it.
func (r *InsertResult) Summary() string {
	counts := map[string]int{}
	for _, q := range r.Record.Quantizers {
		counts[q.Kind]++
	}
	var parts []string
	for _, k := range []string{quantize.KindWeight, quantize.KindAct, quantize.KindReLU, quantize.KindSoftmax} {
		if counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[k], k))
		}
	}
	p := r.Params
	how := "weight clips from " + weightInitText(p) + ", activation clips "
	if r.Method != "" {
		how += "calibrated by " + r.Method
	} else {
		how += fmt.Sprintf("at %g", p.ActClipMax)
	}
	if r.SmoothAlpha > 0 {
		how += fmt.Sprintf(", %d LayerNorms smoothed (α %g)", len(r.Smoothed.Smoothed), r.SmoothAlpha)
	}
	return fmt.Sprintf("%d quantizers (%s), W%dA%d, %s", len(r.Record.Quantizers), strings.Join(parts, ", "), p.WeightBits, p.ActBits, how)
}

// weightInitText says in words where p starts weight clips.
func weightInitText(p quantize.Params) string {
	switch p.WeightInit {
	case quantize.InitMax:
		return "max |w|"
	case quantize.InitPercentile:
		pct := p.Percentile
		if pct == 0 {
			pct = 99.99
		}
		return fmt.Sprintf("the %gth percentile of |w|", pct)
	case quantize.InitMSE:
		return "the MSE-optimal clip of each weight"
	}
	return fmt.Sprintf("the value %g", p.WeightClipMax)
}

// PlanFile is insert's dry run: the record InsertFile would write for the
// model at path (a file or a model directory, see seq2seq.Load), without
// writing anything.
func PlanFile(path string, cfg InsertConfig) (*quantize.Record, error) {
	p, err := cfg.Quant.Params(cfg.CalibSrc != "")
	if err != nil {
		return nil, err
	}
	stored, err := seq2seq.Load(path, cfg.Special.Pad)
	if err != nil {
		return nil, err
	}
	rec, err := quantize.Plan(stored.Graph, p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rec, nil
}

// insertRun is one Insert: the passes share the data and what they
// measured.
type insertRun struct {
	path      string // the model's file, for messages ("" when unknown)
	cfg       InsertConfig
	params    quantize.Params
	res       InsertResult
	model     seq2seq.Model
	data      *seq2seq.Dataset
	collector *calibrate.Collector
}

// The properties insert's passes require and produce.
const (
	propFP32       = "fp32"       // the model has no quantizers
	propData       = "data"       // the calibration sentences are read
	propStatistics = "statistics" // activation histograms of the fp32 model
	propQAT        = "qat"        // quantizers and their record
	propCalibrated = "calibrated" // activation clips set from the statistics
)

// InsertPipeline returns the passes Insert runs with cfg, for --passes.
func InsertPipeline(cfg InsertConfig) *passes.Pipeline {
	return (&insertRun{cfg: cfg}).pipeline()
}

func (r *insertRun) pipeline() *passes.Pipeline {
	calib, smoothing := "", ""
	if r.cfg.CalibSrc == "" {
		calib = "no calibration data (--calib-src)"
	}
	if r.cfg.Smooth == 0 {
		smoothing = "no --smooth"
	}
	return &passes.Pipeline{Name: "insert", Given: []string{propFP32}, Passes: []*passes.Pass{
		{Name: "read", Doc: "read the calibration sentences, checked against the model's vocabulary and positions",
			Requires: []string{propFP32}, Produces: []string{propData}, Off: calib, Run: r.read},
		{Name: "smooth", Doc: "SmoothQuant: move LayerNorm outputs' per-channel range into the weights that read them (passes/smooth)",
			Requires: []string{propFP32, propData}, Produces: []string{"smoothed"}, Off: smoothing, Run: r.smooth},
		{Name: "collect", Doc: "run the fp32 model over the calibration batches into histograms of the activations to quantize (passes/calibrate)",
			Requires: []string{propFP32, propData}, Produces: []string{propStatistics}, Off: calib, Run: r.collect},
		{Name: "insert", Doc: "place QuantizeLinear/DequantizeLinear pairs on weights and activation operands and record them (passes/quantize)",
			Requires: []string{propFP32}, Produces: []string{propQAT}, Removes: []string{propFP32}, Run: r.insert},
		{Name: "calibrate", Doc: "set the activation clips from the histograms (passes/calibrate)",
			Requires: []string{propQAT, propStatistics}, Produces: []string{propCalibrated}, Off: calib, Run: r.calibrate},
		{Name: "sample", Doc: "record a sample of the calibration sentences in the model, for export's check",
			Requires: []string{propQAT, propData}, Produces: []string{"sample"}, Off: calib, Run: r.sample},
	}}
}

// Insert puts quantizers into the fp32 model m, in place, through the
// insert pipeline: reading the calibration data, smoothing, collecting the
// activation statistics on the fp32 model, inserting the Q/DQ pairs,
// setting the activation clips from the statistics and recording a sample
// of the sentences, dumping the model after the passes cfg.Dump names.
func Insert(m *graph.Model, cfg InsertConfig) (*InsertResult, error) {
	r, err := newInsertRun("", cfg)
	if err != nil {
		return nil, err
	}
	if err := r.pipeline().Run(&passes.Unit{Model: m}, &cfg.Dump); err != nil {
		return nil, err
	}
	return &r.res, nil
}

// InsertFile is Insert on the model at path, written to out: a file, or a
// model directory (seq2seq.Load), which is quantized as the composition
// of its encoder and decoder, calibrated on both together, and written
// back in its layout with one quantizer per tensor across its files.
func InsertFile(path, out string, cfg InsertConfig) (*InsertResult, error) {
	r, err := newInsertRun(path, cfg)
	if err != nil {
		return nil, err
	}
	stored, err := seq2seq.Load(path, cfg.Special.Pad)
	if err != nil {
		return nil, err
	}
	if err := r.pipeline().Run(&passes.Unit{Model: stored.Graph}, &cfg.Dump); err != nil {
		return nil, err
	}
	return &r.res, stored.Save(out)
}

// newInsertRun resolves the options of one insert.
func newInsertRun(path string, cfg InsertConfig) (*insertRun, error) {
	r := &insertRun{path: path, cfg: cfg}
	var err error
	if r.params, err = cfg.Quant.Params(cfg.CalibSrc != ""); err != nil {
		return nil, err
	}
	r.res.Params = r.params
	if cfg.CalibSrc != "" {
		r.res.Method = cfg.Method
		if r.res.Method == "" {
			r.res.Method = calibrate.MinMax
		}
	}
	return r, nil
}

func (r *insertRun) progress(pass string) func(done, total int) {
	if r.cfg.Progress == nil {
		return nil
	}
	return func(done, total int) { r.cfg.Progress(pass, done, total) }
}

func (r *insertRun) options(pass string) CalibrationOptions {
	return CalibrationOptions{Roles: r.model.Roles, Batches: r.cfg.Batches, BatchTokens: r.cfg.BatchTokens,
		Threads: r.cfg.Threads, Progress: r.progress(pass)}
}

func (r *insertRun) read(u *passes.Unit) error {
	var err error
	if r.model, err = seq2seq.Describe(u.Model, r.cfg.Roles); err != nil {
		return r.named(err)
	}
	if r.model.Vocab > 0 {
		if err := ort.CheckSize("logits", 4, ort.Factor{Name: "--batch-tokens", Value: int64(r.cfg.BatchTokens)}, ort.Factor{Name: "vocabulary", Value: int64(r.model.Vocab)}); err != nil {
			return err
		}
	}
	tgt := r.cfg.CalibTgt
	if tgt == "" {
		tgt = r.cfg.CalibSrc
	}
	r.data, err = seq2seq.ReadParallel(r.cfg.CalibSrc, tgt, seq2seq.DataOptions{
		Tokenizer: r.cfg.Tokenizer, Vocab: r.model.Vocab, Special: r.cfg.Special,
		SrcPositions: r.model.SrcPositions, TgtPositions: r.model.TgtPositions,
	})
	return err
}

func (r *insertRun) smooth(u *passes.Unit) error {
	var err error
	r.res.Smoothed, err = Smooth(u.Model, r.data, r.cfg.Smooth, r.options("smooth"))
	r.res.SmoothAlpha = r.cfg.Smooth
	return r.named(err)
}

// named prefixes an error about the model with its file.
func (r *insertRun) named(err error) error {
	if err == nil || r.path == "" {
		return err
	}
	return fmt.Errorf("%s: %w", r.path, err)
}

func (r *insertRun) collect(u *passes.Unit) error {
	plan, err := quantize.Plan(u.Model, r.params)
	if err != nil {
		return r.named(err)
	}
	r.collector = calibrate.NewCollector(plan)
	return Calibrate(u.Model, r.data, r.collector, r.options("collect"))
}

func (r *insertRun) insert(u *passes.Unit) error {
	var err error
	r.res.Record, err = quantize.Insert(u.Model, r.params)
	return r.named(err)
}

func (r *insertRun) calibrate(u *passes.Unit) error {
	return calibrate.Calibrate(u.Model, r.res.Record, r.collector, r.res.Method, r.cfg.Percentile)
}

func (r *insertRun) sample(u *passes.Unit) error {
	_, err := RecordSample(u.Model, r.data, r.model.Roles)
	return err
}

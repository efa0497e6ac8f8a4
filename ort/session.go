package ort

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/onnx"
	onnxrt "github.com/yalue/onnxruntime_go"
	"google.golang.org/protobuf/proto"
)

// GraphOptimization is onnxruntime's graph optimization level. The zero
// value keeps onnxruntime's default, which applies every optimization.
type GraphOptimization int

// Graph optimization levels.
const (
	OptimizeDefault  GraphOptimization = iota // onnxruntime's default (all)
	OptimizeNone                              // run the graph as written
	OptimizeBasic                             // constant folding, redundant-node removal
	OptimizeExtended                          // plus operator fusions
	OptimizeAll                               // plus layout optimizations
)

// Options configure a session. A nil *Options means the zero value.
type Options struct {
	// Threads is the number of intra-op threads; 0 lets onnxruntime
	// choose. Sessions always run sequentially with one inter-op thread.
	Threads int
	// Outputs names intermediate values to expose as extra outputs, for
	// calibration and debugging. The caller's model is not changed.
	Outputs []string
	// Optimization selects onnxruntime's graph optimization level.
	Optimization GraphOptimization
	// ProfilePrefix, when set, makes onnxruntime profile every run and
	// write a JSON trace named "<prefix>_<date>.json"; see EndProfiling.
	ProfilePrefix string
	// OptimizedModelPath, when set, makes onnxruntime write the graph it
	// runs, after its optimizations, to this file.
	OptimizedModelPath string
	// NoSpinning stops the intra-op threads from spinning while they wait
	// for work (onnxruntime's session.intra_op.allow_spinning = 0). On a
	// machine shared with other processes a spinning thread burns the
	// core the thread it waits for needs; long runs of large ops (a
	// training step) lose nothing by sleeping instead.
	NoSpinning bool
	// NoMemPattern turns off onnxruntime's memory pattern, which places
	// every intermediate tensor of a run in one block reserved for that
	// run and freed after it. A training graph keeps its forward
	// activations alive for the backward pass, so that block is large
	// (gigabytes at a few thousand tokens) and each run faults its pages
	// in again (measured: a base-model training step 13% faster at 512
	// tokens and 1.5× at 4096 without it). Without the pattern the
	// tensors come from onnxruntime's arena, which keeps its memory.
	NoMemPattern bool
	// Provider is the execution provider: "" or "cpu" for onnxruntime's
	// CPU kernels, "cuda" for an NVIDIA GPU (device 0), which needs a
	// CUDA build of onnxruntime (QATC_ORT_LIB); ops the provider lacks
	// fall back to the CPU.
	Provider string
	// NoPrepack keeps onnxruntime from repacking constant weights into
	// its kernels' layouts at session creation
	// (session.disable_prepacking). A packed copy is a second copy of
	// every matrix weight, worth it for a session that runs many times,
	// not for one that runs once (export's check).
	NoPrepack bool
}

// Providers lists the values of Options.Provider.
var Providers = []string{"cpu", "cuda"}

// Session is an onnxruntime session over one model. Run may be called
// from several goroutines at once.
type Session struct {
	name    string // the model's path or graph name, for messages
	sess    *onnxrt.DynamicAdvancedSession
	inputs  []graph.IOInfo
	outputs []graph.IOInfo
	inIdx   map[string]int
	outIdx  map[string]int

	profile      string
	profileStart time.Time

	mu     sync.RWMutex // Close waits for running Runs
	closed bool
}

// maxInline is the largest serialized model handed to onnxruntime as bytes:
// protobuf cannot parse a message over 2 GiB, so larger models go through a
// temporary file with external data. Tests lower it.
var maxInline = 2<<30 - 64<<20

// Open starts a session over an in-memory model (opts may be nil). The
// model is serialized for onnxruntime and the serialized bytes are dropped
// once the session exists; the model itself is not changed.
func Open(m *graph.Model, opts *Options) (*Session, error) {
	if opts == nil {
		opts = &Options{}
	}
	name := "model"
	if g := m.Graph(); g != nil && g.Name != "" {
		name = "model " + g.Name
	}
	return open(m, name, opts)
}

// OpenFile starts a session over a model file (opts may be nil). Without
// Options.Outputs onnxruntime reads the file itself; with them the model is
// loaded into memory to add the outputs.
func OpenFile(path string, opts *Options) (*Session, error) {
	if opts == nil {
		opts = &Options{}
	}
	if err := Init(); err != nil {
		return nil, err
	}
	if len(opts.Outputs) > 0 {
		m, err := graph.Load(path)
		if err != nil {
			return nil, err
		}
		return open(m, path, opts)
	}
	// onnxruntime reads the file and its external data by itself: check
	// them first (no FIFO, no holes, no data file of another write).
	st, err := graph.CheckFile(path)
	if err != nil {
		return nil, err
	}
	in, out := st.Inputs(), st.Outputs()
	s := newSession(path, in, out)
	if err := s.fillRanks(func() ([]onnxrt.InputOutputInfo, []onnxrt.InputOutputInfo, error) {
		return onnxrt.GetInputOutputInfo(path)
	}); err != nil {
		return nil, err
	}
	so, err := sessionOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	defer so.Destroy()
	s.sess, err = onnxrt.NewDynamicAdvancedSession(path, names(in), names(out), so)
	if err != nil {
		return nil, fmt.Errorf("%s: onnxruntime: %s", path, ortMessage(err))
	}
	s.startProfile(opts)
	return s, nil
}

// open starts a session over m with opts.Outputs added as graph outputs.
func open(m *graph.Model, name string, opts *Options) (*Session, error) {
	if err := Init(); err != nil {
		return nil, err
	}
	in, out := m.Inputs(), m.Outputs()
	extra, extraInfo, err := extraOutputs(m, opts.Outputs)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	out = append(out, extraInfo...)
	s := newSession(name, in, out)
	so, err := sessionOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	defer so.Destroy()

	// The extra outputs are appended to the serialized model as a second
	// ModelProto holding only a graph with those outputs: protobuf merges
	// the two messages and concatenates the repeated output field. This
	// leaves the caller's protobuf untouched and clones nothing (weights
	// included), and keeps fields this package does not know about.
	tail, err := proto.Marshal(&onnx.ModelProto{Graph: &onnx.GraphProto{Output: extra}})
	if err != nil {
		return nil, fmt.Errorf("%s: encode outputs: %v", name, err)
	}
	if size := proto.Size(m.Proto); size+len(tail) > maxInline {
		path, cleanup, err := saveExternal(m, tail)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
		defer cleanup()
		if err := s.fillRanks(func() ([]onnxrt.InputOutputInfo, []onnxrt.InputOutputInfo, error) {
			return onnxrt.GetInputOutputInfo(path)
		}); err != nil {
			return nil, err
		}
		s.sess, err = onnxrt.NewDynamicAdvancedSession(path, names(in), names(out), so)
		if err != nil {
			return nil, fmt.Errorf("%s: onnxruntime: %s", name, ortMessage(err))
		}
	} else {
		buf := make([]byte, 0, size+len(tail))
		buf, err = proto.MarshalOptions{}.MarshalAppend(buf, m.Proto)
		if err != nil {
			return nil, fmt.Errorf("%s: encode model: %v", name, err)
		}
		buf = append(buf, tail...)
		if err := s.fillRanks(func() ([]onnxrt.InputOutputInfo, []onnxrt.InputOutputInfo, error) {
			return onnxrt.GetInputOutputInfoWithONNXData(buf)
		}); err != nil {
			return nil, err
		}
		s.sess, err = onnxrt.NewDynamicAdvancedSessionWithONNXData(buf, names(in), names(out), so)
		if err != nil {
			return nil, fmt.Errorf("%s: onnxruntime: %s", name, ortMessage(err))
		}
	}
	s.startProfile(opts)
	return s, nil
}

// saveExternal writes m with external data into a temporary directory,
// with tail (the serialized extra outputs) appended to the model file, and
// returns the model file's path and a function that removes the directory.
func saveExternal(m *graph.Model, tail []byte) (string, func(), error) {
	dir, err := os.MkdirTemp("", "qatc-runtime-*")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	path := filepath.Join(dir, "model.onnx")
	if err := m.SaveWith(path, &graph.SaveOptions{ExternalData: true}); err != nil {
		cleanup()
		return "", nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err == nil {
		_, err = f.Write(tail)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		cleanup()
		return "", nil, err
	}
	return path, cleanup, nil
}

// extraOutputs returns the outputs to add for names, as ValueInfos that
// carry only the name (onnxruntime types such an output from its own
// inference, so a gap in graph's inference cannot make the session fail),
// and their IOInfos from graph's shape inference. Names that already are
// outputs are skipped; names no node computes are refused.
func extraOutputs(m *graph.Model, names []string) ([]*onnx.ValueInfoProto, []graph.IOInfo, error) {
	if len(names) == 0 {
		return nil, nil, nil
	}
	var types map[string]graph.TensorInfo
	var extra []*onnx.ValueInfoProto
	var infos []graph.IOInfo
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] || m.IsGraphOutput(n) {
			continue
		}
		seen[n] = true
		switch {
		case m.Producer(n) != nil:
		case m.Initializer(n) != nil:
			return nil, nil, fmt.Errorf("Options.Outputs: %q is an initializer, not a computed value; read it from the model", n)
		case m.Input(n) != nil:
			return nil, nil, fmt.Errorf("Options.Outputs: %q is a graph input, not a computed value", n)
		default:
			return nil, nil, fmt.Errorf("Options.Outputs: no node of the model produces %q", n)
		}
		if types == nil {
			// A graph that cannot be ordered has no inference; onnxruntime
			// reports the cycle when the session is created.
			types, _ = m.InferShapes()
		}
		extra = append(extra, &onnx.ValueInfoProto{Name: n})
		infos = append(infos, tensorIO(n, types[n]))
	}
	return extra, infos, nil
}

// tensorIO converts what inference knows about a value; an unknown element
// type leaves the rank unknown too, so that onnxruntime is asked.
func tensorIO(name string, t graph.TensorInfo) graph.IOInfo {
	info := graph.IOInfo{Name: name, Elem: t.Elem}
	if !t.RankKnown || t.Elem == graph.Undefined {
		return info
	}
	info.Dims = make([]int64, len(t.Dims))
	info.DimParams = make([]string, len(t.Dims))
	for i, d := range t.Dims {
		info.Dims[i], info.DimParams[i] = d.Value, d.Param
		if !d.Static() {
			info.Dims[i] = -1
		}
	}
	return info
}

// fillRanks completes the outputs whose rank the model does not declare
// (nor shape inference knows) from onnxruntime's own inference, which info
// gets by loading the model once more. Run needs every output's rank: the
// binding cannot return a scalar it allocated itself, so scalar outputs
// get a buffer before the run.
func (s *Session) fillRanks(info func() ([]onnxrt.InputOutputInfo, []onnxrt.InputOutputInfo, error)) error {
	missing := false
	for _, o := range s.outputs {
		missing = missing || o.Dims == nil
	}
	if !missing {
		return nil
	}
	_, outs, err := info()
	if err != nil {
		return fmt.Errorf("%s: onnxruntime: %s", s.name, ortMessage(err))
	}
	for _, o := range outs {
		i, ok := s.outIdx[o.Name]
		if !ok || s.outputs[i].Dims != nil || o.OrtValueType != onnxrt.ONNXTypeTensor {
			continue
		}
		v := &s.outputs[i]
		v.Elem = graph.DataType(o.DataType)
		v.Dims = append(make([]int64, 0, len(o.Dimensions)), o.Dimensions...)
		v.DimParams = make([]string, len(o.Dimensions))
	}
	return nil
}

// newSession indexes a session's inputs and outputs.
func newSession(name string, in, out []graph.IOInfo) *Session {
	s := &Session{name: name, inputs: in, outputs: out, inIdx: map[string]int{}, outIdx: map[string]int{}}
	for i, v := range in {
		s.inIdx[v.Name] = i
	}
	for i, v := range out {
		s.outIdx[v.Name] = i
	}
	return s
}

// sessionOptions translates opts for onnxruntime. Runs are sequential with
// one inter-op thread: qatc's graphs are chains of large ops, where
// parallelism inside an op is what pays.
func sessionOptions(opts *Options) (*onnxrt.SessionOptions, error) {
	so, err := onnxrt.NewSessionOptions()
	if err != nil {
		return nil, err
	}
	err = setOptions(so, opts)
	if err != nil {
		so.Destroy()
		return nil, err
	}
	return so, nil
}

func setOptions(so *onnxrt.SessionOptions, opts *Options) error {
	if opts.Threads < 0 {
		return fmt.Errorf("Options.Threads is %d; want 0 (onnxruntime's default) or more", opts.Threads)
	}
	if opts.Threads > 0 {
		if err := so.SetIntraOpNumThreads(opts.Threads); err != nil {
			return err
		}
	}
	if err := so.SetInterOpNumThreads(1); err != nil {
		return err
	}
	if err := so.SetExecutionMode(onnxrt.ExecutionModeSequential); err != nil {
		return err
	}
	if opts.Optimization != OptimizeDefault {
		var level onnxrt.GraphOptimizationLevel
		switch opts.Optimization {
		case OptimizeNone:
			level = onnxrt.GraphOptimizationLevelDisableAll
		case OptimizeBasic:
			level = onnxrt.GraphOptimizationLevelEnableBasic
		case OptimizeExtended:
			level = onnxrt.GraphOptimizationLevelEnableExtended
		case OptimizeAll:
			level = onnxrt.GraphOptimizationLevelEnableAll
		default:
			return fmt.Errorf("Options.Optimization: unknown level %d", opts.Optimization)
		}
		if err := so.SetGraphOptimizationLevel(level); err != nil {
			return err
		}
	}
	if opts.ProfilePrefix != "" {
		if err := so.EnableProfiling(opts.ProfilePrefix); err != nil {
			return err
		}
	}
	if opts.OptimizedModelPath != "" {
		if err := so.SetOptimizedModelFilePath(opts.OptimizedModelPath); err != nil {
			return err
		}
	}
	if opts.NoMemPattern {
		if err := so.SetMemPattern(false); err != nil {
			return err
		}
	}
	if opts.NoPrepack {
		if err := so.AddSessionConfigEntry("session.disable_prepacking", "1"); err != nil {
			return err
		}
	}
	if opts.NoSpinning {
		if err := so.AddSessionConfigEntry("session.intra_op.allow_spinning", "0"); err != nil {
			return err
		}
	}
	return setProvider(so, opts.Provider)
}

// setProvider appends the execution provider named by p.
func setProvider(so *onnxrt.SessionOptions, p string) error {
	switch p {
	case "", "cpu":
		return nil
	case "cuda":
		co, err := onnxrt.NewCUDAProviderOptions()
		if err == nil {
			err = so.AppendExecutionProviderCUDA(co)
			co.Destroy()
		}
		if err != nil {
			lib, version := Library()
			return fmt.Errorf("execution provider cuda: onnxruntime %s (%s) cannot run on CUDA (%s); point QATC_ORT_LIB at a CUDA build of onnxruntime (onnxruntime-gpu's libonnxruntime.so, with CUDA and cuDNN installed) or use the CPU", version, lib, ortMessage(err))
		}
		return nil
	}
	return fmt.Errorf("unknown execution provider %q (known: %s)", p, strings.Join(Providers, ", "))
}

func (s *Session) startProfile(opts *Options) {
	if opts.ProfilePrefix != "" {
		s.profile = opts.ProfilePrefix
		s.profileStart = time.Now().Add(-time.Second)
	}
}

// Inputs returns the inputs Run needs, in the model's order.
func (s *Session) Inputs() []graph.IOInfo { return append([]graph.IOInfo(nil), s.inputs...) }

// Outputs returns the outputs Run can return: the model's, then those
// added by Options.Outputs.
func (s *Session) Outputs() []graph.IOInfo { return append([]graph.IOInfo(nil), s.outputs...) }

// Run feeds inputs by name and returns the named outputs (all outputs when
// none are named). Every input must be given, with the model's element type
// and rank and its static dims; dynamic dims may change from call to call.
// The inputs' Go slices are read in place; the outputs are new slices.
// onnxruntime computes every output of the session whichever are named.
func (s *Session) Run(inputs map[string]*Tensor, outputs ...string) (map[string]*Tensor, error) {
	return s.RunInto(inputs, nil, outputs...)
}

// RunInto is Run with caller-owned buffers for some outputs: onnxruntime
// writes the output of each name in into into that tensor's Data (of the
// result's shape and type), and the result holds that same
// tensor. It spares the allocation and copy of large outputs that a loop
// reads every time, such as a training step's gradients. into may be nil.
func (s *Session) RunInto(inputs, into map[string]*Tensor, outputs ...string) (map[string]*Tensor, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, fmt.Errorf("%s: Run on a closed session", s.name)
	}
	if err := s.checkInputs(inputs); err != nil {
		return nil, fmt.Errorf("%s: %v", s.name, err)
	}
	if len(outputs) == 0 {
		outputs = names(s.outputs)
	}
	for _, o := range outputs {
		if _, ok := s.outIdx[o]; !ok {
			return nil, fmt.Errorf("%s: unknown output %q (the model's outputs: %s; expose an intermediate value with Options.Outputs)", s.name, o, strings.Join(names(s.outputs), ", "))
		}
	}

	in := make([]onnxrt.Value, len(s.inputs))
	defer destroyAll(in)
	for i, info := range s.inputs {
		v, err := newValue(inputs[info.Name])
		if err != nil {
			return nil, fmt.Errorf("%s: input %q: %v", s.name, info.Name, err)
		}
		in[i] = v
	}
	out := make([]onnxrt.Value, len(s.outputs))
	defer destroyAll(out)
	for name := range into {
		if _, ok := s.outIdx[name]; !ok {
			return nil, fmt.Errorf("%s: RunInto: unknown output %q", s.name, name)
		}
	}
	for i, info := range s.outputs {
		if t := into[info.Name]; t != nil {
			if err := t.check(); err != nil || info.Elem != graph.Undefined && t.DType() != info.Elem {
				return nil, fmt.Errorf("%s: RunInto: output %q needs a %s buffer, given %s", s.name, info.Name, info.Type(), t)
			}
			v, err := newValue(t)
			if err != nil {
				return nil, fmt.Errorf("%s: output %q: %v", s.name, info.Name, err)
			}
			out[i] = v
			continue
		}
		// The binding cannot turn a rank-0 result it allocated into a
		// Go value, so scalar outputs get a buffer of their own.
		if info.Dims != nil && len(info.Dims) == 0 {
			v, err := newScalar(info.Elem)
			if err != nil {
				return nil, fmt.Errorf("%s: output %q: %v", s.name, info.Name, err)
			}
			out[i] = v
		}
	}
	if err := s.sess.Run(in, out); err != nil {
		return nil, fmt.Errorf("%s: onnxruntime: %s", s.name, ortMessage(err))
	}
	res := make(map[string]*Tensor, len(outputs))
	for _, o := range outputs {
		if t := into[o]; t != nil {
			if len(t.Shape) == 0 {
				// A scalar's value is a copy (see wrap): read it back.
				v, err := fromValue(out[s.outIdx[o]])
				if err != nil {
					return nil, fmt.Errorf("%s: output %q: %v", s.name, o, err)
				}
				reflect.Copy(reflect.ValueOf(t.Data), reflect.ValueOf(v.Data))
			}
			res[o] = t
			continue
		}
		t, err := fromValue(out[s.outIdx[o]])
		if err != nil {
			return nil, fmt.Errorf("%s: output %q: %v", s.name, o, err)
		}
		res[o] = t
	}
	return res, nil
}

// checkInputs checks the inputs against the model's declared inputs.
func (s *Session) checkInputs(inputs map[string]*Tensor) error {
	for name := range inputs {
		if _, ok := s.inIdx[name]; !ok {
			return fmt.Errorf("unknown input %q (the model's inputs: %s)", name, strings.Join(s.inputNames(), ", "))
		}
	}
	for _, info := range s.inputs {
		t, ok := inputs[info.Name]
		if !ok || t == nil {
			return fmt.Errorf("missing input %q (%s)", info.Name, info.Type())
		}
		if err := t.check(); err != nil {
			return fmt.Errorf("input %q: %v", info.Name, err)
		}
		if info.Elem != graph.Undefined && t.DType() != info.Elem {
			return fmt.Errorf("input %q: given %s, the model expects %s", info.Name, t, info.Type())
		}
		if info.Dims == nil {
			continue
		}
		if len(t.Shape) != len(info.Dims) {
			return fmt.Errorf("input %q: given %s (rank %d), the model expects %s (rank %d)", info.Name, t, len(t.Shape), info.Type(), len(info.Dims))
		}
		for i, d := range info.Dims {
			if d >= 0 && t.Shape[i] != d {
				return fmt.Errorf("input %q: given %s, the model expects %s (dim %d must be %d)", info.Name, t, info.Type(), i, d)
			}
		}
	}
	return nil
}

func (s *Session) inputNames() []string {
	n := names(s.inputs)
	sort.Strings(n)
	return n
}

// Close releases the session. It waits for Runs in progress; later calls
// do nothing.
func (s *Session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.sess == nil {
		return nil
	}
	err := s.sess.Destroy()
	releaseFreed()
	return err
}

// EndProfiling closes the session and returns the path of the profile
// onnxruntime wrote (Options.ProfilePrefix). onnxruntime writes the profile
// when the session is released, and the binding exposes no other way to
// end it, so the session cannot be used afterwards.
func (s *Session) EndProfiling() (string, error) {
	if s.profile == "" {
		return "", fmt.Errorf("%s: profiling is off (set Options.ProfilePrefix)", s.name)
	}
	if err := s.Close(); err != nil {
		return "", err
	}
	files, err := filepath.Glob(s.profile + "_*.json")
	if err != nil {
		return "", fmt.Errorf("%s: profile: %v", s.name, err)
	}
	var newest string
	var newestTime time.Time
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil || st.ModTime().Before(s.profileStart) {
			continue
		}
		if newest == "" || st.ModTime().After(newestTime) {
			newest, newestTime = f, st.ModTime()
		}
	}
	if newest == "" {
		return "", fmt.Errorf("%s: onnxruntime wrote no profile %s_*.json", s.name, s.profile)
	}
	return newest, nil
}

// ortMessage strips the binding's generic prefixes from an onnxruntime
// error, keeping onnxruntime's own message on one line.
func ortMessage(err error) string {
	msg := err.Error()
	for _, p := range []string{"Error creating C session from file: ", "Error creating C session: ", "Error running network: "} {
		msg = strings.TrimPrefix(msg, p)
	}
	return strings.Join(strings.Fields(msg), " ")
}

func names(infos []graph.IOInfo) []string {
	n := make([]string, len(infos))
	for i, v := range infos {
		n[i] = v.Name
	}
	return n
}

func destroyAll(vs []onnxrt.Value) {
	for _, v := range vs {
		if v != nil {
			v.Destroy()
		}
	}
}

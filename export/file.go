package export

import (
	"fmt"
	"runtime/debug"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
)

// writeONNX exports the QAT model file at path into format (one of
// Formats), checks the result against the QAT model on inputs (at the
// positions pad keeps) as Verify does, and writes it to out: Export, Verify and Save in the order that
// holds least in memory at once, for models of hundreds of megabytes.
// onnxruntime runs the QAT model straight from its file, and that session
// is closed before Go reads the model; the weights are converted one at a
// time from a copy that shares the QAT model's bytes; the QAT model is
// released before the exported one runs; no session prepacks its
// weights. For transformer-big (841 MB), qoperator: 1.3× the model's size
// in peak RSS, where Export then Verify took 6.7×. Its errors name path.
func writeONNX(path, out, format string, inputs map[string]*ort.Tensor, pad Padding, opts *Options) (*Report, VerifyReport, error) {
	if err := checkFormat(format); err != nil {
		return nil, VerifyReport{}, fmt.Errorf("%s: %w", path, err)
	}
	refs, err := runFile(path, inputs)
	if err != nil {
		return nil, VerifyReport{}, fmt.Errorf("%s: run the QAT model: %w", path, err)
	}
	m, err := graph.LoadValid(path)
	if err != nil {
		return nil, VerifyReport{}, err
	}
	exported, rep, steps, err := export(m, format, opts)
	if err != nil {
		return nil, VerifyReport{}, fmt.Errorf("%s: %w", path, err)
	}
	output, err := commonOutput(exported, func(name string) bool { return refs[name] != nil })
	if err != nil {
		return rep, VerifyReport{Format: format}, fmt.Errorf("%s: %w", path, err)
	}
	var plain *ort.Tensor
	if bounds[format].Regrid {
		if plain, err = plainOutput(m, inputs, output); err != nil {
			return rep, VerifyReport{Format: format}, fmt.Errorf("%s: %w", path, err)
		}
	}
	// The float weights go back to the system before the exported model's
	// session allocates its own.
	m = nil
	debug.FreeOSMemory()
	ver, err := check(exported, inputs, pad, output, refs[output], plain, steps[output])
	if err != nil {
		return rep, ver, fmt.Errorf("%s: %s export does not match the QAT model: %w", path, format, err)
	}
	if err := exported.Save(out); err != nil {
		return rep, ver, err
	}
	return rep, ver, nil
}

// runFile runs the model file at path on inputs, as Verify runs the QAT
// model, and returns its float outputs.
func runFile(path string, inputs map[string]*ort.Tensor) (map[string]*ort.Tensor, error) {
	s, err := ort.OpenFile(path, &ort.Options{Optimization: refOptimization, NoPrepack: true})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var names []string
	for _, o := range s.Outputs() {
		if o.Elem == graph.Float {
			names = append(names, o.Name)
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%s has no float output", path)
	}
	return s.Run(inputs, names...)
}

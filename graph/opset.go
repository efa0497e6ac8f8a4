package graph

import (
	"fmt"
	"strings"
)

// breakingOps lists default-domain ops whose inputs or meaning changed at
// the given opset, so that a model using them cannot simply import a
// newer one.
var breakingOps = []struct {
	since int64
	ops   []string
}{
	{18, []string{"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}},
	{20, []string{"DFT"}},
	{21, []string{"GroupNormalization"}},
}

// irVersions gives the IR version each default-domain opset from 15 on
// was released with (older opsets work with IR 8).
var irVersions = []struct{ opset, ir int64 }{{19, 9}, {21, 10}, {23, 11}}

// CanRaiseOpset says, as an error naming the node, why the model's
// default-domain opset cannot be raised to v: an op whose meaning changed
// in between (a Reduce with an axes attribute before 18, say), or an opset
// below 13, where per-axis quantization changed. nil means RaiseOpset(v)
// succeeds.
func (m *Model) CanRaiseOpset(v int64) error {
	cur := m.Opset("")
	if cur >= v {
		return nil
	}
	if cur < 13 {
		return fmt.Errorf("the model is opset %d, too old to raise to %d (per-axis quantization changed at 13): re-export it at opset %d", cur, v, v)
	}
	for _, b := range breakingOps {
		if cur >= b.since || b.since > v {
			continue
		}
		for _, n := range m.Graph().Node {
			if n.Domain != "" && n.Domain != "ai.onnx" {
				continue
			}
			for _, op := range b.ops {
				if n.OpType != op || strings.HasPrefix(op, "Reduce") && Attr(n, "axes") == nil {
					continue // without axes, a reduction means the same at every opset
				}
				return fmt.Errorf("the model is opset %d and its %s node %s changed meaning at opset %d, so the opset cannot be raised to %d: re-export the model at opset %d", cur, op, NodeName(n), b.since, v, v)
			}
		}
	}
	return nil
}

// RaiseOpset imports the default domain at opset v, and the IR version
// that opset needs, when CanRaiseOpset allows it; otherwise it returns
// that error and leaves m unchanged. A model already at v or later is
// left as it is.
func (m *Model) RaiseOpset(v int64) error {
	if m.Opset("") >= v {
		return nil
	}
	if err := m.CanRaiseOpset(v); err != nil {
		return err
	}
	m.SetOpset("", v)
	for _, iv := range irVersions {
		if v >= iv.opset && m.Proto.IrVersion < iv.ir {
			m.Proto.IrVersion = iv.ir
		}
	}
	return nil
}

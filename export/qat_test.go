package export

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/ort"
)

// qatConfig chooses how makeQAT quantizes a float model.
type qatConfig struct {
	bits       int  // weights and activations
	perChannel bool // weights per output channel
	actAxis0   bool // per-channel weights along the input axis instead (not carriable by integer MatMuls)
}

// makeQAT inserts quantizers as passes/quantize does (the graph form of
// DESIGN.md): a weight quantizer on every float matrix that a MatMul, Gemm
// or Gather reads (directly or through Slice/Transpose), and an activation
// quantizer (act, relu or softmax by producer) on every other MatMul/Gemm
// input, with clips from the maximum over the calibration batch.
func makeQAT(t testing.TB, fp32 *graph.Model, batch map[string]*ort.Tensor, cfg qatConfig) *graph.Model {
	t.Helper()
	data, err := fp32.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	m, err := graph.Parse(data, "")
	if err != nil {
		t.Fatal(err)
	}

	weights := map[string]int64{} // weight -> per-channel axis
	for _, name := range m.InitializerNames() {
		init := m.Initializer(name)
		if graph.TensorType(init) != graph.Float || len(init.Dims) < 2 {
			continue
		}
		if axis, ok := weightUse(m, name, int64(len(init.Dims))-1); ok {
			if cfg.actAxis0 {
				axis = int64(len(init.Dims)) - 1 - axis
			}
			weights[name] = axis
		}
	}
	type act struct{ name, kind string }
	var acts []act
	seen := map[string]bool{}
	for _, n := range m.Graph().Node {
		if n.OpType != "MatMul" && n.OpType != "Gemm" {
			continue
		}
		ins := n.Input[:1]
		if n.OpType == "MatMul" {
			ins = n.Input[:2]
		}
		for _, in := range ins {
			if seen[in] || fromWeight(m, in) {
				continue
			}
			seen[in] = true
			kind := "act"
			if p := m.Producer(in); p != nil && p.OpType == "Relu" {
				kind = "relu"
			} else if p != nil && p.OpType == "Softmax" {
				kind = "softmax"
			}
			acts = append(acts, act{in, kind})
		}
	}

	// Calibrate the activation clips on the batch.
	var names []string
	for _, a := range acts {
		names = append(names, a.name)
	}
	s, err := ort.Open(m, &ort.Options{Outputs: names})
	if err != nil {
		t.Fatal(err)
	}
	vals, err := s.Run(batch, names...)
	s.Close()
	if err != nil {
		t.Fatal(err)
	}

	tiny := m.AddInitializer(graph.FloatTensor("qat_tiny", nil, []float32{1e-8}))
	qmaxS := m.AddInitializer(graph.FloatTensor("qat_qmax_signed", nil, []float32{float32(int(1)<<(cfg.bits-1) - 1)}))
	qmaxU := m.AddInitializer(graph.FloatTensor("qat_qmax_unsigned", nil, []float32{float32(int(1)<<cfg.bits - 1)}))
	zpS := m.AddInitializer(graph.Int8Tensor("qat_zp_signed", nil, []int8{0}))
	zpU := m.AddInitializer(graph.Uint8Tensor("qat_zp_unsigned", nil, []uint8{0}))
	type rec struct {
		Tensor string `json:"tensor"`
		Kind   string `json:"kind"`
		Bits   int    `json:"bits"`
		Axis   *int64 `json:"axis,omitempty"`
		Clip   string `json:"clip,omitempty"`
	}
	var record []rec

	insert := func(T, kind string, clip []float32, axis int64) {
		signed := kind == "weight" || kind == "act"
		var scale string
		clipName := ""
		if kind == "softmax" {
			scale = m.AddInitializer(graph.FloatTensor(m.UniqueName(T+"_scale"), nil, []float32{1 / float32(int(1)<<cfg.bits)}))
		} else {
			dims := []int64{}
			if len(clip) > 1 {
				dims = []int64{int64(len(clip))}
			}
			clipName = m.AddInitializer(graph.FloatTensor(m.UniqueName(T+"_clip_max"), dims, clip))
			mx := m.UniqueName(T + "_clip_pos")
			m.Op("Max", "", []string{clipName, tiny}, []string{mx})
			scale = m.UniqueName(T + "_scale")
			qmax := qmaxS
			if !signed {
				qmax = qmaxU
			}
			m.Op("Div", "", []string{mx, qmax}, []string{scale})
		}
		zp := zpS
		if !signed {
			zp = zpU
		}
		if len(clip) > 1 {
			zp = m.UniqueName(T + "_zero_point")
			m.AddInitializer(graph.Int8Tensor(zp, []int64{int64(len(clip))}, make([]int8, len(clip))))
		}
		q := m.UniqueName(T + "_quantized")
		d := m.UniqueName(T + "_dequantized")
		ax := graph.AttrInt("axis", axis)
		qn := m.Op("QuantizeLinear", m.UniqueName(T+"/quantize"), []string{T, scale, zp}, []string{q}, ax)
		iv := q
		if cfg.bits < 8 {
			lo, hi := 0, int(1)<<cfg.bits-1
			if signed {
				lo, hi = -(int(1) << (cfg.bits - 1)), int(1)<<(cfg.bits-1)-1
			}
			var lot, hit string
			if signed {
				lot = m.AddInitializer(graph.Int8Tensor(m.UniqueName(T+"_qmin"), nil, []int8{int8(lo)}))
				hit = m.AddInitializer(graph.Int8Tensor(m.UniqueName(T+"_qmax"), nil, []int8{int8(hi)}))
			} else {
				lot = m.AddInitializer(graph.Uint8Tensor(m.UniqueName(T+"_qmin"), nil, []uint8{uint8(lo)}))
				hit = m.AddInitializer(graph.Uint8Tensor(m.UniqueName(T+"_qmax"), nil, []uint8{uint8(hi)}))
			}
			iv = m.UniqueName(T + "_clipped")
			m.Op("Clip", "", []string{q, lot, hit}, []string{iv})
		}
		m.Op("DequantizeLinear", m.UniqueName(T+"/dequantize"), []string{iv, scale, zp}, []string{d}, ax)
		m.ReplaceUses(T, d, qn)
		r := rec{Tensor: T, Kind: kind, Bits: cfg.bits, Clip: clipName}
		if len(clip) > 1 {
			r.Axis = &axis
		}
		record = append(record, r)
	}

	for _, name := range m.InitializerNames() {
		axis, ok := weights[name]
		if !ok {
			continue
		}
		init := m.Initializer(name)
		w, err := graph.Floats(init)
		if err != nil {
			t.Fatal(err)
		}
		clip := []float32{0}
		if cfg.perChannel {
			clip = make([]float32, init.Dims[axis])
		}
		inner := graph.NumElements(init.Dims[axis+1:])
		for i, v := range w {
			c := 0
			if cfg.perChannel {
				c = int(int64(i) / inner % init.Dims[axis])
			}
			clip[c] = max(clip[c], float32(math.Abs(float64(v))))
		}
		insert(name, "weight", clip, axis)
	}
	for _, a := range acts {
		var c float32
		for _, v := range vals[a.name].Float32s() {
			c = max(c, float32(math.Abs(float64(v))))
		}
		insert(a.name, a.kind, []float32{c}, 1)
	}
	js, _ := json.Marshal(map[string]any{"version": 1, "quantizers": record})
	m.SetMetadata("qatc.quantization", string(js))
	if err := m.TopoSort(); err != nil {
		t.Fatal(err)
	}
	return m
}

// weightUse reports whether w reaches a MatMul/Gemm weight or a Gather
// table (through Slice and Transpose), and its output-channel axis.
func weightUse(m *graph.Model, v string, last int64) (int64, bool) {
	for _, c := range m.Consumers(v) {
		switch {
		case c.OpType == "MatMul" && c.Input[1] == v:
			return last, true
		case c.OpType == "Gemm" && c.Input[1] == v:
			if graph.IntAttr(c, "transB", 0) != 0 {
				return 0, true
			}
			return last, true
		case c.OpType == "Gather" && c.Input[0] == v:
			return last, true
		case (c.OpType == "Slice" || c.OpType == "Transpose") && c.Input[0] == v:
			if axis, ok := weightUse(m, c.Output[0], last); ok {
				if c.OpType == "Transpose" {
					axis = last - axis
				}
				return axis, true
			}
		}
	}
	return 0, false
}

// fromWeight reports whether v is data movement over an initializer.
func fromWeight(m *graph.Model, v string) bool {
	for {
		if m.Initializer(v) != nil {
			return true
		}
		p := m.Producer(v)
		if p == nil || (p.OpType != "Slice" && p.OpType != "Transpose" && p.OpType != "Reshape") {
			return false
		}
		v = p.Input[0]
	}
}

// torchBatch returns random token ids for the PyTorch reference model.
func torchBatch(batch, srcLen, tgtLen int, seed uint64) map[string]*ort.Tensor {
	r := rand.New(rand.NewPCG(seed, 7))
	ids := func(n int) []int64 {
		v := make([]int64, n)
		for i := range v {
			v[i] = 4 + r.Int64N(508)
		}
		return v
	}
	return map[string]*ort.Tensor{
		"src_ids": ort.Int64([]int64{int64(batch), int64(srcLen)}, ids(batch*srcLen)),
		"tgt_ids": ort.Int64([]int64{int64(batch), int64(tgtLen)}, ids(batch*tgtLen)),
	}
}

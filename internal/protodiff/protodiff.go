// Package protodiff compares two protobuf messages of one type field by
// field, for tests that write one file two ways (LightSeq weight files
// from two exports of one model): bytes fields, which hold the int8
// weights, must be equal byte for byte, float and double values equal
// within a relative tolerance, and every other value equal.
package protodiff

import (
	"fmt"
	"math"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// A Result says what Compare compared and what differed.
type Result struct {
	Bytes  int // bytes fields compared (set in both)
	Floats int // float and double values compared
	// MaxRel is the largest |a − b| / max(1, |b|) over the floats.
	MaxRel float64
	// Diffs has one line per difference, naming the field by its path
	// (".encoder_stack[1].multihead_project_kernel_qkv").
	Diffs []string
}

// Compare compares x and y (messages of one type) field by field: bytes
// must be equal, floats within tol relative (to max(1, |y|)), the rest
// equal. A field set in one message and not in the other differs; one
// set in neither is not compared.
func Compare(x, y proto.Message, tol float64) Result {
	var r Result
	r.message("", x.ProtoReflect(), y.ProtoReflect(), tol)
	return r
}

func (r *Result) diff(format string, args ...any) {
	r.Diffs = append(r.Diffs, fmt.Sprintf(format, args...))
}

func (r *Result) message(path string, x, y protoreflect.Message, tol float64) {
	if x.Descriptor().FullName() != y.Descriptor().FullName() {
		r.diff("%s: %s and %s", path, x.Descriptor().FullName(), y.Descriptor().FullName())
		return
	}
	fields := x.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		name := path + "." + string(fd.Name())
		if x.Has(fd) != y.Has(fd) {
			r.diff("%s: set in one message only", name)
			continue
		}
		if !x.Has(fd) {
			continue // unset (empty) in both
		}
		v, w := x.Get(fd), y.Get(fd)
		switch {
		case fd.IsMap():
			if v.Map().Len() != w.Map().Len() {
				r.diff("%s: %d and %d entries", name, v.Map().Len(), w.Map().Len())
				continue
			}
			v.Map().Range(func(k protoreflect.MapKey, a protoreflect.Value) bool {
				if !w.Map().Has(k) {
					r.diff("%s[%v]: in one message only", name, k.Interface())
					return true
				}
				r.value(fmt.Sprintf("%s[%v]", name, k.Interface()), fd.MapValue(), a, w.Map().Get(k), tol)
				return true
			})
		case fd.IsList():
			if v.List().Len() != w.List().Len() {
				r.diff("%s: %d and %d values", name, v.List().Len(), w.List().Len())
				continue
			}
			for j := range v.List().Len() {
				r.value(fmt.Sprintf("%s[%d]", name, j), fd, v.List().Get(j), w.List().Get(j), tol)
			}
		default:
			r.value(name, fd, v, w, tol)
		}
	}
}

// value compares one singular value (an element, for lists and maps).
func (r *Result) value(name string, fd protoreflect.FieldDescriptor, v, w protoreflect.Value, tol float64) {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		r.message(name, v.Message(), w.Message(), tol)
	case protoreflect.BytesKind:
		r.Bytes++
		p, q := v.Bytes(), w.Bytes()
		if len(p) != len(q) {
			r.diff("%s: %d and %d bytes", name, len(p), len(q))
			return
		}
		for i := range p {
			if p[i] != q[i] {
				r.diff("%s: byte %d is %d and %d", name, i, int8(p[i]), int8(q[i]))
				return
			}
		}
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		r.Floats++
		a, b := v.Float(), w.Float()
		rel := math.Abs(a-b) / math.Max(1, math.Abs(b))
		if math.IsNaN(rel) {
			rel = math.Inf(1)
		}
		r.MaxRel = math.Max(r.MaxRel, rel)
		if !(rel <= tol) {
			r.diff("%s: %g and %g", name, a, b)
		}
	default:
		if v.Interface() != w.Interface() {
			r.diff("%s: %v and %v", name, v.Interface(), w.Interface())
		}
	}
}

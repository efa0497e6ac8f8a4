package ort

import (
	"fmt"
	"strings"
	"syscall"
)

// MemoryLimit is the largest tensor qatc lets its options ask for: a
// quarter of the machine's memory, leaving onnxruntime room for its own
// buffers beside it. Commands check batch × length × vocabulary against it
// before allocating, so that a large flag is an error that names it
// instead of the runtime's out-of-memory crash.
func MemoryLimit() int64 {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err != nil || si.Totalram == 0 {
		return 4 << 30
	}
	return int64(si.Totalram) * int64(si.Unit) / 4
}

// Factor is one dimension of a tensor whose size is checked: a value and
// how to name it in the error ("--batch", "vocabulary").
type Factor struct {
	Name  string
	Value int64
}

// SizeError is a tensor too large for MemoryLimit.
type SizeError struct {
	Msg string
	// Flags are the factors named as command-line flags (those starting
	// with "-"), the ones the user can lower.
	Flags []string
}

func (e *SizeError) Error() string { return e.Msg }

// CheckSize returns a *SizeError when a tensor of the factors' product of
// elements, elem bytes each, exceeds MemoryLimit; what names the tensor
// ("logits").
func CheckSize(what string, elem int64, factors ...Factor) error {
	size := float64(elem)
	var terms, flags []string
	for _, f := range factors {
		size *= float64(f.Value)
		terms = append(terms, fmt.Sprintf("%s %d", f.Name, f.Value))
		if strings.HasPrefix(f.Name, "-") {
			flags = append(flags, f.Name)
		}
	}
	limit := MemoryLimit()
	if size <= float64(limit) {
		return nil
	}
	msg := fmt.Sprintf("%s × %d bytes = %.4g GiB of %s, more than a quarter of this machine's memory (%.3g GiB)",
		strings.Join(terms, " × "), elem, size/(1<<30), what, float64(limit)/(1<<30))
	if len(flags) > 0 {
		msg += "; lower " + strings.Join(flags, " or ")
	}
	return &SizeError{Msg: msg, Flags: flags}
}

package graph

import (
	"strconv"
	"strings"
)

// Dim is one dimension of an inferred shape: static when Value >= 0, else
// symbolic, named by Param ("" when nothing is known about it).
type Dim struct {
	Value int64
	Param string
}

// Static reports whether the dimension's size is known.
func (d Dim) Static() bool { return d.Value >= 0 }

func (d Dim) String() string {
	switch {
	case d.Value >= 0:
		return strconv.FormatInt(d.Value, 10)
	case d.Param != "":
		return d.Param
	}
	return "?"
}

// TensorInfo is what shape inference knows about one value: its element
// type and, when RankKnown, one Dim per axis.
type TensorInfo struct {
	Elem      DataType
	RankKnown bool
	Dims      []Dim
}

// Rank returns the rank, or -1 when it is unknown.
func (t TensorInfo) Rank() int {
	if !t.RankKnown {
		return -1
	}
	return len(t.Dims)
}

func (t TensorInfo) String() string {
	if !t.RankKnown {
		return t.Elem.String() + "[...]"
	}
	parts := make([]string, len(t.Dims))
	for i, d := range t.Dims {
		parts[i] = d.String()
	}
	return t.Elem.String() + "[" + strings.Join(parts, ",") + "]"
}

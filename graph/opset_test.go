package graph

import (
	"strconv"
	"strings"
	"testing"
)

func TestRaiseOpset(t *testing.T) {
	reduce := func(opset int64, axesAttr bool) *Model {
		m := New("g", opset)
		m.AddInput("x", Float, []int64{2, 3})
		n := m.Op("ReduceMean", "mean", []string{"x"}, []string{"y"})
		if axesAttr {
			n.Attribute = append(n.Attribute, AttrInts("axes", 1))
		}
		m.AddOutput("y", Float, nil)
		return m
	}
	for _, tc := range []struct {
		name string
		m    *Model
		want string // "" for success
	}{
		{"reduce without axes", reduce(14, false), ""},
		{"reduce with an axes attribute", reduce(14, true), "ReduceMean node mean changed meaning at opset 18"},
		{"too old", reduce(11, false), "too old"},
		{"already there", reduce(22, true), ""},
	} {
		err := tc.m.RaiseOpset(21)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		case tc.want == "" && tc.m.Opset("") < 21:
			t.Errorf("%s: opset %d after raising", tc.name, tc.m.Opset(""))
		case tc.want == "" && tc.name != "already there" && tc.m.Proto.IrVersion < 10:
			t.Errorf("%s: opset %d, IR %d after raising", tc.name, tc.m.Opset(""), tc.m.Proto.IrVersion)
		case tc.want != "" && tc.m.Opset("") >= 21:
			t.Errorf("%s: raised despite the error", tc.name)
		}
	}
}

func TestTranspose(t *testing.T) {
	// [2, 3] → [3, 2]
	got, dims := Transpose([]int{1, 2, 3, 4, 5, 6}, []int64{2, 3}, []int64{1, 0})
	if fmt := fmtInts(got); fmt != "1 4 2 5 3 6" || dims[0] != 3 || dims[1] != 2 {
		t.Errorf("2-D: %v %v", got, dims)
	}
	// [2, 1, 3] with perm [2, 0, 1] → [3, 2, 1]: out[k][i][0] = in[i][0][k]
	got, dims = Transpose([]int{1, 2, 3, 4, 5, 6}, []int64{2, 1, 3}, []int64{2, 0, 1})
	if fmt := fmtInts(got); fmt != "1 4 2 5 3 6" || dims[0] != 3 || dims[1] != 2 || dims[2] != 1 {
		t.Errorf("3-D: %v %v", got, dims)
	}
}

func fmtInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, " ")
}

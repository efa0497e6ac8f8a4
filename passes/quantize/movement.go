package quantize

// Movement classifies the ops that move a tensor's elements without
// computing new values. Every package that looks through data movement
// (the placement tracing a weight, the recogniser following a view, fold
// moving a weight's DequantizeLinear, inspect finding stored integers)
// asks Moves with the kinds it may cross.
type Movement uint8

// Kinds of data movement.
const (
	Same    Movement = 1 << iota // Identity, Dropout (at inference): the tensor itself
	Layout                       // Transpose, Reshape, Squeeze, Unsqueeze, Flatten: its elements rearranged
	Cut                          // Slice: a constant part of it
	Lookup                       // Gather: rows chosen by indices
	Convert                      // Cast: its elements in another type
)

// The sets of movement the passes cross.
const (
	// Views only rearrange or rename a tensor: an activation's kind and
	// the recogniser's roles are read through them.
	Views = Same | Layout
	// Traced are what the placement follows from a product back to its
	// weight initializer.
	Traced = Same | Layout | Cut | Convert
	// Sinkable commute with a DequantizeLinear whose scale moves with its
	// channel: fold moves a weight's DequantizeLinear past them, so stored
	// integers sit behind them in an export.
	Sinkable = Layout | Cut | Lookup
)

// movement lists the data-movement ops, in the order messages name them.
var movement = []struct {
	op   string
	kind Movement
}{
	{"Transpose", Layout}, {"Identity", Same}, {"Cast", Convert}, {"Slice", Cut},
	{"Reshape", Layout}, {"Squeeze", Layout}, {"Unsqueeze", Layout}, {"Flatten", Layout},
	{"Dropout", Same}, {"Gather", Lookup},
}

// Moves reports whether op moves data in one of the ways of kinds.
func Moves(op string, kinds Movement) bool {
	for _, m := range movement {
		if m.op == op {
			return m.kind&kinds != 0
		}
	}
	return false
}

// MovementOps lists the ops of kinds, in a fixed order.
func MovementOps(kinds Movement) []string {
	var ops []string
	for _, m := range movement {
		if m.kind&kinds != 0 {
			ops = append(ops, m.op)
		}
	}
	return ops
}

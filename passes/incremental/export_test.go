package incremental

// Steps is steps for the external tests (torch_test.go), which compare
// argmaxes with decode.Argmax: package decode imports this one, so only
// an external test package may import it.
var Steps = steps

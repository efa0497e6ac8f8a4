package cmdline

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// ReorderArgs moves a command's flags before its positional arguments, so
// that "qatc inspect MODEL --json" works (the flag package stops at the
// first positional argument). twoValued names the flags that take two
// values (--dump-after PASS DIR): the second is passed as the hidden flag
// it maps to.
func ReorderArgs(app *cli.App, args []string, twoValued map[string]string) []string {
	out := []string{args[0]}
	i := 1
	for i < len(args) && strings.HasPrefix(args[i], "-") { // global flags
		out = append(out, args[i])
		i++
	}
	if i >= len(args) {
		return out
	}
	cmd := app.Command(args[i])
	out = append(out, args[i])
	i++
	if cmd == nil {
		return append(out, args[i:]...)
	}
	takesValue := map[string]bool{}
	for _, f := range cmd.Flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			takesValue[n] = !isBool
		}
	}
	var flags, positional []string
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			positional = append(positional, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			positional = append(positional, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if !strings.Contains(name, "=") && takesValue[name] && i+1 < len(args) {
			flags = append(flags, args[i+1])
			i++
		}
		if second, ok := twoValued[strings.SplitN(name, "=", 2)[0]]; ok && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			flags = append(flags, "--"+second, args[i+1])
			i++
		}
	}
	out = append(out, flags...)
	if len(positional) > 0 {
		out = append(out, "--")
		out = append(out, positional...)
	}
	return out
}

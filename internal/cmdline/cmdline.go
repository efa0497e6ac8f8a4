// Package cmdline is the command-line plumbing of qatc's commands over
// urfave/cli, kept apart from the commands so that cmd/qatc holds only
// its flags, one library call per command and the printing: usage errors
// (exit 2) and one-line messages, every numeric flag checked against its
// range and required flags named as such before a command runs (Checker),
// flags given after the arguments (ReorderArgs), and a progress display
// for logs and terminals (Progress).
package cmdline

import (
	"fmt"
	"strings"
)

// A UsageError is an error in how a command was called (exit 2).
type UsageError struct{ Msg string }

func (e UsageError) Error() string { return e.Msg }

// Usagef formats a UsageError.
func Usagef(format string, args ...any) error { return UsageError{fmt.Sprintf(format, args...)} }

// IsFlagError recognises urfave/cli's own usage errors.
func IsFlagError(err error) bool {
	s := err.Error()
	return strings.HasPrefix(s, "flag provided but not defined") ||
		strings.HasPrefix(s, "invalid value") ||
		strings.HasPrefix(s, "Required flag") ||
		strings.HasPrefix(s, "flag needs an argument") ||
		strings.HasPrefix(s, "No help topic")
}

// OneLine folds a multi-line message so that every error is one line.
func OneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}

package safeio

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// A Group is a file a command reads or writes together with the files that
// belong to it: a model and its external-data files.
type Group struct {
	// Flag is how the command line named the file, for errors: "-o",
	// "--save-training-graph", "input".
	Flag string
	Path string
	// Parts are the companion files: an input model's external-data files,
	// or the data file an output model may be written with.
	Parts []string
}

// A Dir is a directory a command writes into, creating it if needed.
type Dir struct {
	Flag, Path string
	// Replace is set when the command replaces the directory whole (an
	// export directory): no input may lie inside it.
	Replace bool
}

// Plan is what a command reads and writes, checked by Check before the
// command does any work.
type Plan struct {
	Inputs  []Group
	Outputs []Group
	Dirs    []Dir
	// InPlace allows an output to replace the first input, the command's
	// model, with its data file; nothing else may replace an input.
	// InPlaceFlag names the flag that sets it, for errors ("" when the
	// command has none).
	InPlace     bool
	InPlaceFlag string
}

// CheckError is a refused output path. Usage is set when the command line
// itself is at fault (an output that is an input, two outputs that are
// one file), as opposed to the file system (a directory that is missing or
// not writable).
type CheckError struct {
	Msg   string
	Usage bool
}

func (e *CheckError) Error() string { return e.Msg }

func usage(format string, args ...any) error {
	return &CheckError{Msg: fmt.Sprintf(format, args...), Usage: true}
}

func failure(format string, args ...any) error {
	return &CheckError{Msg: fmt.Sprintf(format, args...)}
}

// identity is a file's device and inode: two paths name one file exactly
// when their identities are equal, whatever symbolic links, hard links or
// spellings lie between.
type identity struct{ dev, ino uint64 }

func identityOf(st fs.FileInfo) (identity, bool) {
	s, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return identity{}, false
	}
	return identity{uint64(s.Dev), s.Ino}, true
}

// inputFile is one existing input file and the group it belongs to.
type inputFile struct {
	group *Group
	path  string
	main  bool
}

// Check validates a plan's outputs before any work: every output's
// directory exists and is writable; no output is a directory or a special
// file; no output, nor the data file written beside it, is one of the
// inputs' files (models and their external data) unless InPlace and the
// output replaces exactly that input model; no two outputs are one file;
// output directories are directories (or can be created) and writable.
// Files are compared by identity (device and inode).
func Check(p Plan) error {
	c := &checker{plan: p, inputs: map[identity]inputFile{}, written: map[string]string{}, inDir: map[string]bool{}}
	for i := range p.Inputs {
		g := &p.Inputs[i]
		for j, path := range append([]string{g.Path}, g.Parts...) {
			if st, err := os.Stat(path); err == nil {
				if id, ok := identityOf(st); ok {
					if _, seen := c.inputs[id]; !seen {
						c.inputs[id] = inputFile{group: g, path: path, main: j == 0}
					}
				}
			}
		}
	}
	// Outputs inside a directory of Dirs are checked after it, and it
	// stands for their parent (it may not exist yet).
	for _, d := range p.Dirs {
		c.inDir[filepath.Clean(d.Path)] = true
	}
	inside := func(o *Group) bool { return c.inDir[filepath.Clean(filepath.Dir(o.Path))] }
	for i := range p.Outputs {
		if o := &p.Outputs[i]; !inside(o) {
			if err := c.output(o); err != nil {
				return err
			}
		}
	}
	for _, d := range p.Dirs {
		if err := c.dir(d); err != nil {
			return err
		}
	}
	for i := range p.Outputs {
		if o := &p.Outputs[i]; inside(o) {
			if err := c.output(o); err != nil {
				return err
			}
		}
	}
	return nil
}

// checker holds what Check has learnt so far.
type checker struct {
	plan    Plan
	inputs  map[identity]inputFile
	written map[string]string // resolved path → how it was named
	inDir   map[string]bool
}

// claim records an output path, refusing a second output of the same
// file.
func (c *checker) claim(path, name string) error {
	key, err := resolved(path)
	if err != nil {
		return nil // its directory is checked on its own
	}
	if other, ok := c.written[key]; ok {
		return usage("%s and %s are the same file %s; give each output its own path", other, name, path)
	}
	c.written[key] = name
	return nil
}

// output checks one output group: its directory, what is there now, and
// whether it is an input.
func (c *checker) output(o *Group) error {
	var mainID identity
	mainExists := false
	for j, path := range append([]string{o.Path}, o.Parts...) {
		main := j == 0
		name := o.Flag + " " + o.Path
		if !main {
			name = fmt.Sprintf("%s's data file %s", o.Flag+" "+o.Path, path)
		}
		parent := filepath.Clean(filepath.Dir(path))
		if !c.inDir[parent] {
			if err := checkParent(name, path); err != nil {
				return err
			}
		}
		st, err := os.Stat(path)
		if errors.Is(err, fs.ErrNotExist) && c.inDir[parent] {
			continue // in a directory still to be created
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return failure("%s: %v", name, err)
		}
		if err == nil {
			if st.IsDir() {
				return usage("%s is a directory; give a file name", name)
			}
			if !st.Mode().IsRegular() {
				return usage("%s is %s; qatc writes regular files only", name, kind(st.Mode()))
			}
			id, _ := identityOf(st)
			if main {
				mainID, mainExists = id, true
			}
			if in, ok := c.inputs[id]; ok {
				first := len(c.plan.Inputs) > 0 && in.group == &c.plan.Inputs[0]
				inPlace := c.plan.InPlace && first && mainExists && c.inputs[mainID].main && c.inputs[mainID].group == in.group
				if !inPlace {
					return c.overlap(name, main, in)
				}
			}
		}
		if err := c.claim(path, name); err != nil {
			return err
		}
	}
	return nil
}

// dir checks an output directory: a directory that can be written in, or
// one that can be created.
func (c *checker) dir(d Dir) error {
	name := d.Flag + " " + d.Path
	st, err := os.Stat(d.Path)
	switch {
	case err == nil && !st.IsDir():
		return usage("%s is a file, not a directory; give a directory", name)
	case err == nil:
		if err := writable(d.Path); err != nil {
			return failure("%s: cannot write in it (%v)", name, err)
		}
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
		// The nearest existing ancestor must let us create it.
		a := filepath.Dir(filepath.Clean(d.Path))
		for {
			st, err := os.Stat(a)
			if err == nil {
				if !st.IsDir() {
					return usage("%s: %s is a file, not a directory", name, a)
				}
				if err := writable(a); err != nil {
					return failure("%s: cannot create it in %s (%v)", name, a, err)
				}
				break
			}
			if next := filepath.Dir(a); next != a {
				a = next
				continue
			}
			return failure("%s: %v", name, err)
		}
	default:
		return failure("%s: %v", name, err)
	}
	if d.Replace {
		if key, err := resolved(d.Path); err == nil {
			for _, in := range c.inputs {
				if p, err := resolved(in.path); err == nil && strings.HasPrefix(p, key+string(filepath.Separator)) {
					return usage("%s holds the input %s and would be replaced; give another directory", name, in.path)
				}
			}
		}
	}
	return c.claim(d.Path, name)
}

// overlap explains an output that is one of the inputs' files.
func (c *checker) overlap(name string, main bool, in inputFile) error {
	first := len(c.plan.Inputs) > 0 && in.group == &c.plan.Inputs[0]
	hint := "give another path"
	if main && in.main && first && c.plan.InPlaceFlag != "" {
		hint += ", or " + c.plan.InPlaceFlag + " to replace it"
	}
	switch {
	case in.main && first:
		return usage("%s is the input model %s; %s", name, in.group.Path, hint)
	case in.main:
		return usage("%s is the input %s %s; %s", name, in.group.Flag, in.group.Path, hint)
	default:
		return usage("%s is %s, the external data of the input %s; writing it would change the input, %s", name, in.path, in.group.Path, hint)
	}
}

// checkParent checks that path's directory exists and is writable.
func checkParent(name, path string) error {
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return failure("%s: directory %s does not exist", name, dir)
	}
	if err != nil {
		return failure("%s: %v", name, err)
	}
	if !st.IsDir() {
		return failure("%s: %s is not a directory", name, dir)
	}
	if err := writable(dir); err != nil {
		return failure("%s: cannot write in directory %s (%v)", name, dir, err)
	}
	return nil
}

// access(2) modes.
const (
	accessW = 2
	accessX = 1
)

// writable reports whether files can be created in dir: permissions,
// read-only mounts and immutable directories all count.
func writable(dir string) error {
	if err := syscall.Access(dir, accessW|accessX); err != nil {
		if errors.Is(err, syscall.EROFS) {
			return errors.New("read-only file system")
		}
		return errors.New("permission denied")
	}
	return nil
}

// resolved returns path with its directory's symbolic links resolved, the
// key under which two spellings of one output path compare equal.
func resolved(path string) (string, error) {
	dir, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		return "", err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	base := filepath.Base(path)
	if real, err := filepath.EvalSymlinks(filepath.Join(dir, base)); err == nil {
		if abs, err := filepath.Abs(real); err == nil {
			return abs, nil
		}
	}
	return filepath.Join(dir, base), nil
}

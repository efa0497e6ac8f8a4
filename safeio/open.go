package safeio

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime/debug"
	"syscall"
)

// OpenRegular opens path for reading and returns it with its file info. It
// refuses directories, FIFOs, sockets and devices: the file is opened
// non-blocking, so that opening a FIFO with no writer returns at once, and
// its type is checked on the open descriptor, so that a path swapped after
// a check cannot slip through.
func OpenRegular(path string) (*os.File, fs.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, nil, &NotRegularError{Path: path, Kind: kind(st.Mode())}
	}
	// Regular files never block; clear the flag so that reads behave as
	// usual.
	if err := syscall.SetNonblock(int(f.Fd()), false); err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, st, nil
}

// NotRegularError is OpenRegular's refusal of a file that is not a
// regular file.
type NotRegularError struct {
	Path string
	// Kind says what it is instead: "a directory", "a FIFO (named pipe)".
	Kind string
}

func (e *NotRegularError) Error() string {
	return fmt.Sprintf("%s is %s, not a regular file", e.Path, e.Kind)
}

// kind names a file mode's type for an error message.
func kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO (named pipe)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	}
	return "not a regular file"
}

// ReadFile reads a regular file of at most max bytes.
func ReadFile(path string, max int64) ([]byte, error) {
	f, st, err := OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st.Size() > max {
		return nil, fmt.Errorf("%s is %d bytes, more than the %d this file can hold", path, st.Size(), max)
	}
	data := make([]byte, st.Size())
	if _, err := io.ReadFull(f, data); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, nil
}

// Map maps the first size bytes of f read-only and calls use with them,
// unmapping afterwards. Only the pages use touches are read, so a parser
// that stops at the first bad byte of a huge or sparse file costs almost
// nothing. use must not keep the slice. A file truncated by someone else
// while mapped makes the access fault; that fault is returned as an error
// rather than crashing the process.
func Map(f *os.File, size int64, use func([]byte) error) (err error) {
	if size == 0 {
		return use(nil)
	}
	if int64(int(size)) != size {
		return fmt.Errorf("%s: %d bytes cannot be mapped", f.Name(), size)
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map %s: %w", f.Name(), err)
	}
	defer syscall.Munmap(data)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if re, ok := r.(interface{ Addr() uintptr }); ok && re != nil {
				err = fmt.Errorf("%s changed while it was read (a fault reading its mapping); read it again once nothing writes it", f.Name())
				return
			}
			panic(r)
		}
	}()
	return use(data)
}

// Linux's lseek whence values for sparse files.
const (
	seekData = 3
	seekHole = 4
)

// Holes returns how many bytes of f's range [off, off+n) lie in holes:
// ranges of a sparse file that were never written and hold no data. File
// systems that do not report holes report none.
func Holes(f *os.File, off, n int64) (int64, error) {
	fd := int(f.Fd())
	end := off + n
	var holes int64
	for pos := off; pos < end; {
		h, err := syscall.Seek(fd, pos, seekHole)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) || errors.Is(err, syscall.EINVAL) {
				return holes, nil
			}
			return 0, fmt.Errorf("%s: %w", f.Name(), err)
		}
		if h >= end {
			break
		}
		d, err := syscall.Seek(fd, h, seekData)
		if errors.Is(err, syscall.ENXIO) {
			d = end // a hole up to the end of the file
		} else if err != nil {
			return 0, fmt.Errorf("%s: %w", f.Name(), err)
		}
		holes += min(d, end) - h
		pos = d
	}
	return holes, nil
}

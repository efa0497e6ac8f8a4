package safeio

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"unicode/utf8"
)

// MaxLineBytes is the longest line ReadLines accepts. A sentence file holds
// one sentence per line; a longer line is a file of another kind, and
// tokenizing it would cost memory out of all proportion to a sentence.
const MaxLineBytes = 1 << 20

// bom is the UTF-8 encoding of U+FEFF, which some editors write at the
// start of a text file.
var bom = []byte{0xEF, 0xBB, 0xBF}

// ReadLines reads a text file line by line and calls f with each line's
// 1-based number and its text, without the line ending (\n or \r\n). The
// text is checked to be UTF-8 without NUL bytes, a byte-order mark at the
// start of the file is dropped, and lines longer than MaxLineBytes are
// refused; each error names the file and line. The file may be a pipe (a
// shell's process substitution) but not a directory.
func ReadLines(path string, f func(n int, line string) error) error {
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	if st, err := fh.Stat(); err == nil && st.IsDir() {
		return fmt.Errorf("%s is a directory, not a text file", path)
	}
	return ScanLines(fh, path, f)
}

// ScanLines is ReadLines over a reader (standard input, say); name
// stands for the file in errors.
func ScanLines(in io.Reader, name string, f func(n int, line string) error) error {
	path := name
	r := bufio.NewReaderSize(in, 64<<10)
	var buf []byte
	for n := 1; ; n++ {
		buf = buf[:0]
		eof := false
		for {
			chunk, err := r.ReadSlice('\n')
			if len(buf)+len(chunk) > MaxLineBytes+2 {
				return fmt.Errorf("%s:%d: the line is longer than %d bytes; a sentence file holds one sentence per line", path, n, MaxLineBytes)
			}
			buf = append(buf, chunk...)
			if err == nil {
				break
			}
			if errors.Is(err, bufio.ErrBufferFull) {
				continue
			}
			if errors.Is(err, io.EOF) {
				eof = true
				break
			}
			return fmt.Errorf("read %s: %w", path, err)
		}
		if eof && len(buf) == 0 {
			return nil
		}
		line := bytes.TrimSuffix(bytes.TrimSuffix(buf, []byte{'\n'}), []byte{'\r'})
		if n == 1 {
			line = bytes.TrimPrefix(line, bom)
		}
		if len(line) > MaxLineBytes {
			return fmt.Errorf("%s:%d: the line is longer than %d bytes; a sentence file holds one sentence per line", path, n, MaxLineBytes)
		}
		if err := checkText(line); err != nil {
			return fmt.Errorf("%s:%d: %v", path, n, err)
		}
		if err := f(n, string(line)); err != nil {
			return err
		}
		if eof {
			return nil
		}
	}
}

// checkText refuses bytes that are not UTF-8 text, naming the first.
func checkText(b []byte) error {
	for i := 0; i < len(b); {
		if b[i] == 0 {
			return fmt.Errorf("a NUL byte at column %d; the file is binary, not text", i+1)
		}
		if b[i] < utf8.RuneSelf {
			i++
			continue
		}
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size <= 1 {
			return fmt.Errorf("byte 0x%02X at column %d is not UTF-8; convert the file to UTF-8 (e.g. iconv -f LATIN1 -t UTF-8)", b[i], i+1)
		}
		i += size
	}
	return nil
}

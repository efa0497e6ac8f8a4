package ort

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	onnxrt "github.com/yalue/onnxruntime_go"
)

// ortVersion is the onnxruntime release the install script fetches.
const ortVersion = "1.30.0"

// minMajor and minMinor give the oldest onnxruntime the binding works with:
// onnxruntime_go v1.27 asks the library for C API version 24.
const minMajor, minMinor = 1, 24

var (
	initMu   sync.Mutex
	initLib  string // the library that loaded
	initDone bool
)

// Init loads the onnxruntime shared library once: QATC_ORT_LIB when set,
// else the install script's location ($QATC_ORT_DIR, else
// ${XDG_CACHE_HOME:-~/.cache}/qatc/onnxruntime-1.30.0), else
// libonnxruntime.so.1 and libonnxruntime.so from the system library paths.
// It is safe to call repeatedly and from several goroutines; Open and
// OpenFile call it.
func Init() error {
	initMu.Lock()
	defer initMu.Unlock()
	if initDone {
		return nil
	}
	if lib := os.Getenv("QATC_ORT_LIB"); lib != "" {
		if err := load(lib); err != nil {
			return fmt.Errorf("QATC_ORT_LIB=%s: %v; point it at a libonnxruntime.so ≥ %d.%d or unset it and run scripts/install-onnxruntime.sh", lib, err, minMajor, minMinor)
		}
		return nil
	}
	return loadFirst(libraryCandidates())
}

// loadFirst loads the first of libs that loads.
func loadFirst(libs []string) error {
	var tried []string
	for _, lib := range libs {
		err := load(lib)
		if err == nil {
			return nil
		}
		var old *oldVersionError
		if errors.As(err, &old) {
			// A library that loads but is too old is worth naming on its
			// own: searching on would hide why it was passed over.
			return fmt.Errorf("%s: %v; run scripts/install-onnxruntime.sh (or set QATC_ORT_LIB to a newer library)", lib, err)
		}
		tried = append(tried, lib)
	}
	return fmt.Errorf("onnxruntime library not found (tried %s); run scripts/install-onnxruntime.sh (or set QATC_ORT_LIB to a libonnxruntime.so ≥ %d.%d)", strings.Join(tried, ", "), minMajor, minMinor)
}

// Library returns the path of the onnxruntime library Init loaded and its
// version, or empty strings before a successful Init.
func Library() (path, version string) {
	initMu.Lock()
	defer initMu.Unlock()
	if !initDone {
		return "", ""
	}
	return initLib, onnxrt.GetVersion()
}

// libraryCandidates lists where to look when QATC_ORT_LIB is unset, in
// order: the install script's directory, then names for dlopen's own search.
func libraryCandidates() []string {
	var libs []string
	if dir := os.Getenv("QATC_ORT_DIR"); dir != "" {
		libs = append(libs, filepath.Join(dir, "libonnxruntime.so.1"))
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		if home, err := os.UserHomeDir(); err == nil {
			cache = filepath.Join(home, ".cache")
		}
	}
	if cache != "" {
		libs = append(libs, filepath.Join(cache, "qatc", "onnxruntime-"+ortVersion, "libonnxruntime.so.1"))
	}
	return append(libs, "libonnxruntime.so.1", "libonnxruntime.so")
}

// oldVersionError reports a library older than the binding supports.
type oldVersionError struct{ version string }

func (e *oldVersionError) Error() string {
	if e.version == "" {
		return fmt.Sprintf("onnxruntime is older than %d.%d (it lacks C API version 24)", minMajor, minMinor)
	}
	return fmt.Sprintf("onnxruntime %s is older than %d.%d", e.version, minMajor, minMinor)
}

// load initializes the binding's environment with the library at path.
func load(path string) error {
	if filepath.IsAbs(path) {
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("no such file")
		}
	}
	onnxrt.SetSharedLibraryPath(path)
	// Errors come back through the API with onnxruntime's message, so its
	// own log would only repeat them on stderr.
	if err := onnxrt.InitializeEnvironment(onnxrt.WithLogLevelFatal()); err != nil {
		// The binding reports a library without C API 24 as a failure to
		// set the API base (code 2); say what that means.
		msg := err.Error()
		if strings.Contains(msg, "Error setting ORT API base: 2") {
			return &oldVersionError{}
		}
		// Keep dlopen's own message, which names the file and the cause.
		msg = strings.TrimPrefix(msg, "Platform-specific initialization failed: ")
		if strings.HasPrefix(msg, "Error loading ONNX shared library") {
			if i := strings.Index(msg, `": `); i >= 0 {
				msg = msg[i+3:]
			}
		}
		return errors.New(msg)
	}
	v := onnxrt.GetVersion()
	if !versionAtLeast(v, minMajor, minMinor) {
		onnxrt.DestroyEnvironment()
		return &oldVersionError{version: v}
	}
	initLib, initDone = path, true
	return nil
}

// versionAtLeast reports whether version "MAJOR.MINOR.PATCH" is at least
// major.minor; an unparsable version passes, since the C API check already
// succeeded.
func versionAtLeast(version string, major, minor int) bool {
	parts := strings.SplitN(version, ".", 3)
	if len(parts) < 2 {
		return true
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return true
	}
	return ma > major || ma == major && mi >= minor
}

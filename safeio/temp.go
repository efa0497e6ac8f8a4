package safeio

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Temporary files are named ".<target>.qatc-tmp.<pid>.<random>", so that
// anyone can tell what they are and whose they were, and a later run can
// remove those of a process that died.
const tempTag = ".qatc-tmp."

var tempName = regexp.MustCompile(`^\..*\.qatc-tmp\.([0-9]+)\.[0-9a-f]+$`)

// temp is one temporary file or directory of a Batch. Its descriptor stays
// open and locked (flock) until the batch ends: the lock tells CleanStale
// that the owner is alive, and the kernel drops it when the owner dies.
type temp struct {
	path, final string
	f           *os.File
	dir         bool
}

// Batch is a set of files written together: each is written under a
// temporary name next to its final path, and Commit renames them all into
// place, in the order they were created, while holding an exclusive lock
// on their directories. A reader that takes the shared lock (LockDirs)
// therefore never sees some files of a batch without the others. Create
// the data files before the files that refer to them.
type Batch struct {
	temps []*temp
	done  bool
}

// Create starts a temporary file for final (mode 0644) and returns it for
// writing. Leave it open: Commit and Abort close it.
func (b *Batch) Create(final string) (*os.File, error) {
	t, err := b.newTemp(final, false)
	if err != nil {
		return nil, err
	}
	return t.f, nil
}

// CreateDir starts a temporary directory for final and returns its path;
// Commit renames it into place (an existing directory final is replaced).
func (b *Batch) CreateDir(final string) (string, error) {
	t, err := b.newTemp(final, true)
	if err != nil {
		return "", err
	}
	return t.path, nil
}

func (b *Batch) newTemp(final string, dir bool) (*temp, error) {
	if b.done {
		return nil, errors.New("safeio: Batch used after Commit or Abort")
	}
	d := filepath.Dir(final)
	CleanStale(d)
	var suffix [6]byte
	rand.Read(suffix[:])
	path := filepath.Join(d, "."+filepath.Base(final)+tempTag+strconv.Itoa(os.Getpid())+"."+hex.EncodeToString(suffix[:]))
	t := &temp{path: path, final: final, dir: dir}
	// Registered before it exists, so that a signal arriving in between
	// still removes it.
	register(t)
	var err error
	if dir {
		if err = os.Mkdir(path, 0o755); err == nil {
			t.f, err = os.Open(path)
		}
	} else {
		t.f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	}
	if err == nil {
		err = syscall.Flock(int(t.f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	}
	if err != nil {
		discard(t)
		unregister(t)
		return nil, fmt.Errorf("write %s: %w", final, err)
	}
	b.temps = append(b.temps, t)
	return t, nil
}

// Commit closes the batch's files and renames them into place. On error
// nothing of the batch remains: temporaries are removed, and files already
// renamed stay (they replaced older ones completely).
func (b *Batch) Commit() error {
	if b.done {
		return errors.New("safeio: Batch committed twice")
	}
	for _, t := range b.temps {
		if !t.dir {
			if err := t.f.Sync(); err != nil {
				b.Abort()
				return fmt.Errorf("write %s: %w", t.final, err)
			}
		}
	}
	holdForTest(b)
	var dirs []string
	for _, t := range b.temps {
		if d := filepath.Dir(t.final); !ownTempDir(d) {
			dirs = append(dirs, d)
		}
	}
	unlock := lockDirs(dirs, syscall.LOCK_EX)
	defer unlock()
	reg.Lock()
	defer reg.Unlock()
	var err error
	for _, t := range b.temps {
		if err == nil {
			err = rename(t)
		}
		if err != nil {
			discard(t)
		} else {
			t.f.Close()
		}
		delete(reg.temps, t)
	}
	route()
	b.done = true
	return err
}

// ownTempDir reports whether dir is one of this process's temporary
// directories. Its descriptor holds the directory's lock, and no one else
// writes in it, so a batch inside it takes no lock.
func ownTempDir(dir string) bool {
	reg.Lock()
	defer reg.Unlock()
	for t := range reg.temps {
		if t.dir && filepath.Clean(t.path) == filepath.Clean(dir) {
			return true
		}
	}
	return false
}

// rename moves t into place; a directory replaces an existing one by
// moving it aside first (rename cannot replace a non-empty directory).
func rename(t *temp) error {
	if t.dir {
		if st, err := os.Lstat(t.final); err == nil && st.IsDir() {
			old := t.path + ".old"
			if err := os.Rename(t.final, old); err != nil {
				return fmt.Errorf("write %s: %w", t.final, err)
			}
			if err := os.Rename(t.path, t.final); err != nil {
				os.Rename(old, t.final)
				return fmt.Errorf("write %s: %w", t.final, err)
			}
			os.RemoveAll(old)
			return nil
		}
	}
	if err := os.Rename(t.path, t.final); err != nil {
		return fmt.Errorf("write %s: %w", t.final, err)
	}
	return nil
}

// Abort removes the batch's temporaries. It is safe after Commit, so
// "defer b.Abort()" covers every early return.
func (b *Batch) Abort() {
	if b.done {
		return
	}
	b.done = true
	reg.Lock()
	defer reg.Unlock()
	for _, t := range b.temps {
		discard(t)
		delete(reg.temps, t)
	}
	route()
}

// discard closes and removes a temporary.
func discard(t *temp) {
	if t.f != nil {
		t.f.Close()
	}
	if t.dir {
		os.RemoveAll(t.path)
	} else {
		os.Remove(t.path)
	}
}

// WriteFile writes data to path atomically: readers see the old file or
// the new one, never a part.
func WriteFile(path string, data []byte) error {
	var b Batch
	defer b.Abort()
	if err := b.Write(path, data); err != nil {
		return err
	}
	return b.Commit()
}

// Write adds a file holding data to the batch, written to its temporary
// file now and renamed to final by Commit.
func (b *Batch) Write(final string, data []byte) error {
	f, err := b.Create(final)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", final, err)
	}
	return nil
}

// CleanStale removes the temporaries that dead qatc processes left in dir
// (a SIGKILL gives no chance to clean up). A temporary is stale when no
// process holds its lock and the process that made it is gone; a live
// writer's files are never touched.
func CleanStale(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		m := tempName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid == os.Getpid() || alive(pid) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			if e.IsDir() {
				os.RemoveAll(path)
			} else {
				os.Remove(path)
			}
		}
		f.Close()
	}
}

// alive reports whether a process with this id exists.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// lockDirs takes flock locks of the given kind on each distinct directory
// (in a fixed order, so that two batches cannot deadlock) and returns the
// function that releases them. A directory that cannot be opened is not
// locked: the lock orders qatc's own writers and readers, it guards
// nothing else.
func lockDirs(dirs []string, how int) func() {
	seen := map[string]bool{}
	var keys []string
	for _, d := range dirs {
		k, err := filepath.Abs(d)
		if err != nil {
			k = d
		}
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var held []*os.File
	for _, k := range keys {
		f, err := os.Open(k)
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), how) != nil {
			f.Close()
			continue
		}
		held = append(held, f)
	}
	return func() {
		for _, f := range held {
			f.Close()
		}
	}
}

// LockDirs takes the shared lock on directories that Commit takes
// exclusively: files opened while holding it all come from one batch.
// Call the returned function once they are open.
func LockDirs(dirs ...string) func() { return lockDirs(dirs, syscall.LOCK_SH) }

// reg is the process's live temporaries and the signal handling that
// removes them.
var reg struct {
	sync.Mutex
	temps    map[*temp]bool
	graceful map[*gracefulCtx]bool
	once     sync.Once
	ch       chan os.Signal
	// notifying is set while SIGINT and SIGTERM are routed to ch: only
	// while temporaries or graceful contexts exist, so that the program's
	// signal behaviour is otherwise its own.
	notifying bool
}

type gracefulCtx struct {
	cancel context.CancelFunc
	fired  bool
}

func register(t *temp) {
	reg.Lock()
	defer reg.Unlock()
	if reg.temps == nil {
		reg.temps = map[*temp]bool{}
	}
	reg.temps[t] = true
	route()
}

func unregister(t *temp) {
	reg.Lock()
	defer reg.Unlock()
	delete(reg.temps, t)
	route()
}

// route starts or stops catching SIGINT and SIGTERM as temporaries and
// graceful contexts come and go. The caller holds reg's lock.
func route() {
	reg.once.Do(func() {
		reg.ch = make(chan os.Signal, 2)
		go handle(reg.ch)
	})
	active := len(reg.temps) > 0 || len(reg.graceful) > 0
	switch {
	case active && !reg.notifying:
		signal.Notify(reg.ch, syscall.SIGINT, syscall.SIGTERM)
	case !active && reg.notifying:
		signal.Stop(reg.ch)
	}
	reg.notifying = active
}

// handle receives SIGINT and SIGTERM. A signal first cancels the contexts
// from NotifyContext (a command that stops gracefully, such as training
// writing a checkpoint); when there is none, or on a second signal, it
// removes every live temporary and ends the process by the same signal,
// as the default action would.
func handle(ch chan os.Signal) {
	for sig := range ch {
		reg.Lock()
		graceful := false
		for g := range reg.graceful {
			if !g.fired {
				g.fired, graceful = true, true
				g.cancel()
			}
		}
		if graceful {
			reg.Unlock()
			continue
		}
		for t := range reg.temps {
			discard(t)
		}
		reg.temps = nil
		// Keep the lock: no new temporary may appear while the process
		// dies.
		signal.Reset(sig)
		s := sig.(syscall.Signal)
		syscall.Kill(os.Getpid(), s)
		time.Sleep(time.Second)
		os.Exit(128 + int(s))
	}
}

// NotifyContext returns a context cancelled by the first SIGINT or
// SIGTERM, for a command that stops gracefully on Ctrl-C. A second signal
// ends the process (removing temporaries) as usual. Call stop when the
// graceful part is over. A program that handles these signals itself
// should take its context from here: while a Batch has temporaries, safeio
// catches the signals.
func NotifyContext(parent context.Context) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(parent)
	g := &gracefulCtx{cancel: cancel}
	reg.Lock()
	if reg.graceful == nil {
		reg.graceful = map[*gracefulCtx]bool{}
	}
	reg.graceful[g] = true
	route()
	reg.Unlock()
	return ctx, func() {
		reg.Lock()
		delete(reg.graceful, g)
		route()
		reg.Unlock()
		cancel()
	}
}

// holdEnv names a file that Commit creates and then waits to see removed
// before renaming anything: tests use it to deliver a signal while a
// batch's temporaries all exist. Unset, it costs one environment lookup.
const holdEnv = "QATC_TEST_HOLD_COMMIT"

func holdForTest(b *Batch) {
	path := os.Getenv(holdEnv)
	if path == "" {
		return
	}
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		return
	}
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(path); err != nil {
			return
		}
	}
}

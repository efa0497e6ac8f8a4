//go:build mpi

package mpi

/*
#cgo pkg-config: ompi-c
#include <mpi.h>
#include <sched.h>
#include <stdlib.h>

// MPI's handles are macros or pointers to globals in some implementations,
// so every call goes through a small C function.

static int qatc_init(int *provided) {
	int err = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, provided);
	if (err != MPI_SUCCESS) return err;
	return MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}
static int qatc_rank(int *r) { return MPI_Comm_rank(MPI_COMM_WORLD, r); }
static int qatc_size(int *s) { return MPI_Comm_size(MPI_COMM_WORLD, s); }
static int qatc_iallreduce(float *buf, int n, MPI_Request *req) {
	return MPI_Iallreduce(MPI_IN_PLACE, buf, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, req);
}
static int qatc_iallgather_int(int *in, int *out, MPI_Request *req) {
	return MPI_Iallgather(in, 1, MPI_INT, out, 1, MPI_INT, MPI_COMM_WORLD, req);
}
static int qatc_iallgatherv(void *in, int n, void *out, int *counts, int *displs, MPI_Request *req) {
	return MPI_Iallgatherv(in, n, MPI_BYTE, out, counts, displs, MPI_BYTE, MPI_COMM_WORLD, req);
}
static int qatc_test(MPI_Request *req, int *done) { return MPI_Test(req, done, MPI_STATUS_IGNORE); }
static int qatc_abort(int code) { return MPI_Abort(MPI_COMM_WORLD, code); }
static int qatc_finalize(void) { return MPI_Finalize(); }
static int qatc_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }
static int qatc_success(void) { return MPI_SUCCESS; }
static int qatc_max_string(void) { return MPI_MAX_ERROR_STRING; }
static void qatc_error_string(int code, char *buf) {
	int n = 0;
	if (MPI_Error_string(code, buf, &n) != MPI_SUCCESS) n = 0;
	buf[n] = 0;
}
static void qatc_yield(void) { sched_yield(); }
*/
import "C"

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"time"
	"unsafe"
)

// DefaultTimeout bounds a collective call unless Comm.Timeout says
// otherwise: PyTorch's and NCCL's default. A collective waits for the
// slowest rank, so it must outlast what rank 0 does alone between steps
// (validation, checkpoints).
const DefaultTimeout = 30 * time.Minute

// maxCount is the most elements one MPI call takes (its counts are C
// ints); longer buffers are reduced in buckets of this size.
var maxCount = 1 << 30

// Comm is MPI_COMM_WORLD. Its methods may be called from any goroutine,
// one at a time (MPI_THREAD_SERIALIZED).
type Comm struct {
	rank, size int
	// Timeout bounds each collective call (0: no bound); past it the
	// call returns an error and the caller should Abort.
	Timeout time.Duration

	mu        sync.Mutex
	finalized bool
}

var (
	initOnce sync.Once
	world    *Comm
	initErr  error
)

// Init initializes MPI (once per process) and returns MPI_COMM_WORLD.
// A process started without mpirun is a job of one rank.
func Init() (*Comm, error) {
	initOnce.Do(func() {
		var provided C.int
		if rc := C.qatc_init(&provided); rc != C.qatc_success() {
			initErr = fmt.Errorf("MPI_Init_thread: %s", errorString(rc))
			return
		}
		if provided < C.qatc_thread_serialized() {
			C.qatc_finalize()
			initErr = fmt.Errorf("the MPI library provides thread level %d, qatc-mpi needs MPI_THREAD_SERIALIZED (%d): use an MPI built with thread support", provided, C.qatc_thread_serialized())
			return
		}
		var r, s C.int
		if rc := C.qatc_rank(&r); rc != C.qatc_success() {
			initErr = fmt.Errorf("MPI_Comm_rank: %s", errorString(rc))
			return
		}
		if rc := C.qatc_size(&s); rc != C.qatc_success() {
			initErr = fmt.Errorf("MPI_Comm_size: %s", errorString(rc))
			return
		}
		world = &Comm{rank: int(r), size: int(s), Timeout: DefaultTimeout}
	})
	return world, initErr
}

// Rank is this process's rank in MPI_COMM_WORLD.
func (c *Comm) Rank() int { return c.rank }

// Size is the number of ranks.
func (c *Comm) Size() int { return c.size }

// AllReduce sums buf elementwise across the ranks, in place, in buckets of
// at most 2³⁰ values that are all in flight at once.
func (c *Comm) AllReduce(buf []float32) error {
	if len(buf) == 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.usable(); err != nil {
		return err
	}
	// MPI keeps the buffer's address until the requests complete.
	var pin runtime.Pinner
	pin.Pin(&buf[0])
	defer pin.Unpin()
	n := (len(buf) + maxCount - 1) / maxCount
	reqs := make([]C.MPI_Request, n)
	for i := range n {
		part := buf[i*maxCount : min((i+1)*maxCount, len(buf))]
		if rc := C.qatc_iallreduce((*C.float)(unsafe.Pointer(&part[0])), C.int(len(part)), &reqs[i]); rc != C.qatc_success() {
			return fmt.Errorf("MPI_Iallreduce: %s", errorString(rc))
		}
	}
	for i := range reqs {
		if err := c.wait(&reqs[i], false, "the all-reduce of %d values", len(buf)); err != nil {
			return err
		}
	}
	return nil
}

// AllGather returns every rank's msg, indexed by rank.
func (c *Comm) AllGather(msg []byte) ([][]byte, error) {
	if len(msg) > math.MaxInt32 {
		return nil, fmt.Errorf("all-gather of %d bytes: more than MPI's counts hold", len(msg))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.usable(); err != nil {
		return nil, err
	}
	var pin runtime.Pinner
	defer pin.Unpin()
	counts := make([]C.int, c.size)
	own := C.int(len(msg))
	pin.Pin(&own)
	pin.Pin(&counts[0])
	var req C.MPI_Request
	if rc := C.qatc_iallgather_int(&own, &counts[0], &req); rc != C.qatc_success() {
		return nil, fmt.Errorf("MPI_Iallgather: %s", errorString(rc))
	}
	if err := c.wait(&req, true, "the all-gather of message sizes"); err != nil {
		return nil, err
	}
	displs := make([]C.int, c.size)
	total := 0
	for r, n := range counts {
		if total+int(n) > math.MaxInt32 {
			return nil, fmt.Errorf("all-gather of %d bytes: more than MPI's counts hold", total+int(n))
		}
		displs[r] = C.int(total)
		total += int(n)
	}
	// Buffers of at least one byte, so that every pointer is valid.
	in := append(msg[:len(msg):len(msg)], 0)
	out := make([]byte, total+1)
	pin.Pin(&in[0])
	pin.Pin(&out[0])
	pin.Pin(&displs[0])
	if rc := C.qatc_iallgatherv(unsafe.Pointer(&in[0]), own, unsafe.Pointer(&out[0]), &counts[0], &displs[0], &req); rc != C.qatc_success() {
		return nil, fmt.Errorf("MPI_Iallgatherv: %s", errorString(rc))
	}
	if err := c.wait(&req, false, "the all-gather of %d bytes", total); err != nil {
		return nil, err
	}
	all := make([][]byte, c.size)
	for r := range all {
		all[r] = out[displs[r] : displs[r]+counts[r] : displs[r]+counts[r]]
	}
	return all, nil
}

// wait completes req by testing it in a loop, and gives up after the
// timeout. After the first millisecond a patient wait sleeps between
// tests (50 µs, doubling up to 1 ms): it is where a rank waits for slower
// ones, and its core is theirs meanwhile. Otherwise the loop only yields
// the processor, since MPI moves a large message only while it is
// tested.
func (c *Comm) wait(req *C.MPI_Request, patient bool, what string, args ...any) error {
	start := time.Now()
	nap := 50 * time.Microsecond
	for {
		var done C.int
		if rc := C.qatc_test(req, &done); rc != C.qatc_success() {
			return fmt.Errorf("%s: %s", fmt.Sprintf(what, args...), errorString(rc))
		}
		if done != 0 {
			return nil
		}
		waited := time.Since(start)
		if c.Timeout > 0 && waited > c.Timeout {
			return &TimeoutError{What: fmt.Sprintf(what, args...), Timeout: c.Timeout}
		}
		switch {
		case waited < time.Millisecond:
		case patient:
			time.Sleep(nap)
			nap = min(2*nap, time.Millisecond)
		default:
			C.qatc_yield()
		}
	}
}

// TimeoutError is a collective call that did not complete in time: some
// rank did not join it (it hangs, was stopped, or its node is cut off).
// The request stays pending, so the job must be aborted.
type TimeoutError struct {
	What    string
	Timeout time.Duration
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("%s did not complete within %v: a rank hangs, was stopped or cannot be reached (raise --comm-timeout if rank 0 validates or checkpoints for longer)", e.What, e.Timeout)
}

func (c *Comm) usable() error {
	if c.finalized {
		return fmt.Errorf("MPI is finalized")
	}
	return nil
}

// Abort ends every process of the job with code (MPI_Abort); it does not
// return.
func (c *Comm) Abort(code int) {
	C.qatc_abort(C.int(code))
	// MPI_Abort does not return; should an implementation return, leave
	// anyway.
	panic(fmt.Sprintf("MPI_Abort(%d) returned", code))
}

// Finalize ends MPI in this process (MPI_Finalize); the Comm cannot be
// used afterwards.
func (c *Comm) Finalize() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finalized {
		return nil
	}
	c.finalized = true
	if rc := C.qatc_finalize(); rc != C.qatc_success() {
		return fmt.Errorf("MPI_Finalize: %s", errorString(rc))
	}
	return nil
}

func errorString(rc C.int) string {
	buf := (*C.char)(C.malloc(C.size_t(C.qatc_max_string() + 1)))
	defer C.free(unsafe.Pointer(buf))
	C.qatc_error_string(rc, buf)
	return fmt.Sprintf("%s (MPI error %d)", C.GoString(buf), int(rc))
}

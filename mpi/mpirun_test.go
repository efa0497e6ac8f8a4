//go:build !mpi

package mpi_test

// These tests run qatc-mpi under OpenMPI's mpirun, as a user does. They
// build the binaries themselves (cmd/qatc with and without -tags mpi) and
// need OpenMPI (scripts/install-openmpi.sh, which scripts/test.sh runs);
// without it they fail.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qatc/qatc/graph"
	"github.com/qatc/qatc/testmodels"
	"github.com/qatc/qatc/testmodels/demo"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binaries builds qatc, qatc-mpi and the binding's MPI test binary once.
func binaries(t testing.TB) (qatc, qatcMPI string) {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "qatc-mpi-test"); buildErr != nil {
			return
		}
		for _, args := range [][]string{
			{"build", "-o", filepath.Join(binDir, "qatc"), "../cmd/qatc"},
			{"build", "-tags", "mpi", "-o", filepath.Join(binDir, "qatc-mpi"), "../cmd/qatc"},
			{"test", "-c", "-tags", "mpi", "-o", filepath.Join(binDir, "mpi.test"), "."},
		} {
			if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go %s: %v\n%s(OpenMPI's headers and pkg-config file come from libopenmpi-dev: run scripts/install-openmpi.sh)", strings.Join(args, " "), err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "qatc"), filepath.Join(binDir, "qatc-mpi")
}

// mpirunArgs are the options every test passes to mpirun: as many ranks
// as asked whatever the cores (--oversubscribe), threads free to use any
// core (--bind-to none), shared-memory messages copied through a buffer
// (containers often forbid the single-copy process_vm_readv) and, when
// the tests run as root (CI), the permission OpenMPI otherwise refuses.
func mpirunArgs() []string {
	a := []string{"--oversubscribe", "--bind-to", "none", "--mca", "btl_vader_single_copy_mechanism", "none"}
	if os.Geteuid() == 0 {
		a = append(a, "--allow-run-as-root")
	}
	return a
}

// mpirun returns the command mpirun -np n ARGS (ARGS may hold ":" for
// one program per rank group).
func mpirun(t testing.TB, n int, opts []string, args ...string) *exec.Cmd {
	t.Helper()
	if _, err := exec.LookPath("mpirun"); err != nil {
		t.Fatal("mpirun not found: run scripts/install-openmpi.sh (apt-get install openmpi-bin libopenmpi-dev)")
	}
	a := append(append(mpirunArgs(), opts...), "-np", strconv.Itoa(n))
	return exec.Command("mpirun", append(a, args...)...)
}

// run runs cmd and returns its exit code and combined output.
func run(t testing.TB, cmd *exec.Cmd) (int, string) {
	t.Helper()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String()
	}
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return 0, out.String()
}

func must(t testing.TB, cmd *exec.Cmd) string {
	t.Helper()
	code, out := run(t, cmd)
	if code != 0 {
		t.Fatalf("%s: exit %d\n%s", cmd, code, out)
	}
	return out
}

const demoDir = "../testmodels/demo/data"

// demoTask writes n pairs of the demo task's training split (text, for
// the demo SentencePiece model) and returns the files.
func demoTask(t testing.TB, dir string, n int) (src, tgt string) {
	t.Helper()
	var s, g strings.Builder
	for _, p := range demo.Generate(demo.Splits[0].Seed, n) {
		s.WriteString(p.Src + "\n")
		g.WriteString(p.Tgt + "\n")
	}
	src, tgt = filepath.Join(dir, "train.src"), filepath.Join(dir, "train.tgt")
	write(t, src, s.String())
	write(t, tgt, g.String())
	return src, tgt
}

func write(t testing.TB, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// metrics reads a --metrics file.
func metrics(t testing.TB, path string) []stepMetrics {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ms []stepMetrics
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m stepMetrics
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		ms = append(ms, m)
	}
	return ms
}

type stepMetrics struct {
	Step        int64   `json:"step"`
	Loss        float64 `json:"loss"`
	Tokens      int64   `json:"tokens"`
	Seconds     float64 `json:"seconds"`
	CommSeconds float64 `json:"comm_seconds"`
	WaitSeconds float64 `json:"wait_seconds"`
}

// maxRelDiff returns the largest ‖a−b‖/‖b‖ over the float initializers of
// two model files, and the tensor where it is.
func maxRelDiff(t testing.TB, pa, pb string) (float64, string) {
	t.Helper()
	a, err := graph.Load(pa)
	if err != nil {
		t.Fatal(err)
	}
	b, err := graph.Load(pb)
	if err != nil {
		t.Fatal(err)
	}
	worst, where, n := 0.0, "", 0
	for _, name := range b.InitializerNames() {
		ib := b.Initializer(name)
		if graph.TensorType(ib) != graph.Float {
			continue
		}
		vb, err := graph.Floats(ib)
		if err != nil {
			t.Fatal(err)
		}
		va, err := graph.Floats(a.Initializer(name))
		if err != nil || len(va) != len(vb) {
			t.Fatalf("%s: %s differs in size from %s's (%v)", pa, name, pb, err)
		}
		var d, s float64
		for i := range vb {
			d += (float64(va[i]) - float64(vb[i])) * (float64(va[i]) - float64(vb[i]))
			s += float64(vb[i]) * float64(vb[i])
		}
		if r := math.Sqrt(d / math.Max(s, 1e-30)); r > worst || math.IsNaN(r) {
			worst, where = r, name
		}
		n++
	}
	if n == 0 {
		t.Fatalf("%s has no float initializers", pb)
	}
	return worst, where
}

// TestDemoDataParallel is the acceptance run on the demo model,
// 20 steps of qatc train with the same global batch. mpirun -np 2 takes
// the updates of one process that runs each batch as the same two pieces
// (--accumulate 2): the same gradients summed in the same order, so the
// same weights (1e-4 relative is asked; they are equal) along the same
// loss curve. One process running whole batches sums in another order:
// its loss curve agrees within 1e-4, its weights differ by float noise
// that Adam and ReLU amplify (the README has the figures). A run
// interrupted by SIGINT to mpirun and resumed with -np 1 (in the same two
// pieces) ends where the uninterrupted -np 2 run ends. Every process runs
// one onnxruntime thread, as two threads do not sum in a fixed order.
func TestDemoDataParallel(t *testing.T) {
	qatc, qatcMPI := binaries(t)
	dir := t.TempDir()
	src, tgt := demoTask(t, dir, 2000)
	out := func(name string) string { return filepath.Join(dir, name) }
	args := func(name string, extra ...string) []string {
		return append([]string{"train", filepath.Join(demoDir, "model.onnx"), "-o", out(name + ".onnx"),
			"--src", src, "--tgt", tgt, "--spm", filepath.Join(demoDir, "spm.model"),
			"--steps", "20", "--batch-tokens", "2048", "--seed", "7",
			"--threads", "1", "--metrics", out(name + ".jsonl")}, extra...)
	}

	must(t, exec.Command(qatc, args("pieces", "--accumulate", "2")...))
	must(t, exec.Command(qatc, args("whole")...))
	two := must(t, mpirun(t, 2, nil, append([]string{qatcMPI}, args("two", "--json")...)...))
	var rep struct {
		Ranks     int   `json:"ranks"`
		Steps     int64 `json:"steps"`
		CommBytes int64 `json:"comm_bytes"`
	}
	if err := json.Unmarshal([]byte(two[strings.LastIndex(two, "\n{")+1:]), &rep); err != nil || rep.Ranks != 2 || rep.Steps != 20 {
		t.Fatalf("mpirun -np 2: report %+v (%v)\n%s", rep, err, two)
	}
	// 20 all-reduces of the 1,455,104 parameters' float32 gradients.
	if want := int64(20 * 4 * 1455104); rep.CommBytes != want {
		t.Errorf("%d bytes all-reduced, want %d", rep.CommBytes, want)
	}
	if d, where := maxRelDiff(t, out("two.onnx"), out("pieces.onnx")); d > 1e-4 {
		t.Errorf("mpirun -np 2 and one process in 2 pieces: weights differ by %.3g (relative) at %s", d, where)
	} else {
		t.Logf("mpirun -np 2 and one process in 2 pieces: weights within %.2g", d)
	}
	d, where := maxRelDiff(t, out("two.onnx"), out("whole.onnx"))
	t.Logf("mpirun -np 2 and one process running whole batches: weights within %.2g (largest at %s)", d, where)
	twoM := metrics(t, out("two.jsonl"))
	for _, ref := range []string{"pieces", "whole"} {
		refM := metrics(t, out(ref+".jsonl"))
		if len(refM) != 20 || len(twoM) != 20 {
			t.Fatalf("%d and %d metric lines, want 20", len(refM), len(twoM))
		}
		worst := 0.0
		for i := range refM {
			d := math.Abs(twoM[i].Loss-refM[i].Loss) / math.Abs(refM[i].Loss)
			worst = math.Max(worst, d)
			if d > 1e-4 || twoM[i].Tokens != refM[i].Tokens {
				t.Errorf("step %d: loss %.6f on 2 ranks, %.6f in one process (%s; tokens %d, %d)", i+1, twoM[i].Loss, refM[i].Loss, ref, twoM[i].Tokens, refM[i].Tokens)
			}
		}
		t.Logf("loss curves of mpirun -np 2 and one process (%s) within %.2g", ref, worst)
	}

	// SIGINT to mpirun once step 4 is done: mpirun sends the ranks
	// SIGCONT, SIGTERM and SIGKILL odls_base_sigkill_timeout seconds
	// apart (1 by default, raised here for a loaded machine); the ranks
	// take the first as the request to stop, agree to stop after the same
	// step, and rank 0 writes a checkpoint.
	cmd := mpirun(t, 2, []string{"--mca", "odls_base_sigkill_timeout", "10"}, append([]string{qatcMPI}, args("cut")...)...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, cmd, func() bool { return countLines(out("cut.jsonl")) >= 4 }, &buf)
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	stopped := regexpFind(`interrupted at step (\d+); checkpoint`, buf.String())
	if stopped < 4 || stopped >= 20 {
		t.Fatalf("SIGINT after step 4: want an interruption before step 20 with a checkpoint\n%s", buf.String())
	}
	resume := must(t, mpirun(t, 1, nil, append([]string{qatcMPI}, args("cut", "--resume", "--accumulate", "2")...)...))
	if d, where := maxRelDiff(t, out("cut.onnx"), out("two.onnx")); d > 1e-4 {
		t.Errorf("interrupted at step %d on 2 ranks, resumed on 1: weights differ from the uninterrupted run's by %.3g at %s\n%s", stopped, d, where, resume)
	} else {
		t.Logf("interrupted at step %d on 2 ranks and resumed on 1: weights within %.2g of the uninterrupted run's", stopped, d)
	}
}

func countLines(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return bytes.Count(b, []byte("\n"))
}

// waitFor polls cond while cmd runs; it fails the test if cmd ends first
// or after two minutes.
func waitFor(t testing.TB, cmd *exec.Cmd, cond func() bool, out *bytes.Buffer) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("%s: condition not reached in 2 minutes\n%s", cmd, out)
		}
		if p, err := os.FindProcess(cmd.Process.Pid); err != nil || p.Signal(syscall.Signal(0)) != nil {
			t.Fatalf("%s ended early\n%s", cmd, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// regexpFind returns the integer the first group of pattern matches in
// s, or -1.
func regexpFind(pattern, s string) int {
	m := regexp.MustCompile(pattern).FindStringSubmatch(s)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// tinyTask writes the tiny test model and a copy task of n pairs of
// token ids, returning their paths.
func tinyTask(t testing.TB, dir string, n int, seed uint64) (model, src, tgt string) {
	t.Helper()
	m, err := testmodels.Build(testmodels.Tiny())
	if err != nil {
		t.Fatal(err)
	}
	model = filepath.Join(dir, "tiny.onnx")
	if err := m.Save(model); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 4))
	var lines []string
	for range n {
		ids := make([]string, 3+rng.IntN(6))
		for i := range ids {
			ids[i] = fmt.Sprint(4 + rng.IntN(60))
		}
		lines = append(lines, strings.Join(ids, " "))
	}
	text := strings.Join(lines, "\n") + "\n"
	src = filepath.Join(dir, fmt.Sprintf("train%d.src", seed))
	tgt = filepath.Join(dir, fmt.Sprintf("train%d.tgt", seed))
	write(t, src, text)
	write(t, tgt, text)
	return model, src, tgt
}

// TestBadStarts checks the failures detected before training: each ends
// every rank, with one line from rank 0 and no output file.
func TestBadStarts(t *testing.T) {
	_, qatcMPI := binaries(t)
	dir := t.TempDir()
	model, src, tgt := tinyTask(t, dir, 200, 1)
	_, other, _ := tinyTask(t, dir, 200, 2)
	_, few, fewTgt := tinyTask(t, dir, 3, 3)
	output := filepath.Join(dir, "out.onnx")
	base := func(extra ...string) []string {
		return append([]string{qatcMPI, "train", model, "-o", output, "--src", src, "--tgt", tgt,
			"--steps", "5", "--batch-tokens", "256", "--threads", "1"}, extra...)
	}
	// MPMD: rank 0 runs the first command line, rank 1 the second.
	pair := func(a, b []string) []string { return append(append(a[:len(a):len(a)], ":", "-np", "1"), b...) }
	for _, tc := range []struct {
		name string
		np   int
		args []string
		want string
	}{
		{"more ranks than batches", 2, []string{qatcMPI, "train", model, "-o", output, "--src", few, "--tgt", fewTgt, "--steps", "5", "--threads", "1"},
			"qatc-mpi: 2 ranks but the training data makes only 1 batch of at most 4096 tokens; use at most 1 rank, or smaller batches"},
		{"different flags", 1, pair(base("--lr", "1e-3"), base("--lr", "2e-3")),
			"qatc-mpi: rank 1 has another setting LR than rank 0 (0.002; rank 0: 0.001): start every rank with the same flags and data"},
		{"different data", 1, pair(base(), append(base(), "--src", other)),
			"qatc-mpi: rank 1 has another training data than rank 0 ("},
		{"a rank cannot read its data", 1, pair(base(), append(base(), "--src", filepath.Join(dir, "missing.src"))),
			"qatc-mpi: rank 1: "},
		{"a command that does not run on ranks", 2, []string{qatcMPI, "inspect", model},
			"qatc-mpi: qatc-mpi runs train and finetune on several ranks; run inspect with qatc (or with mpirun -np 1)"},
	} {
		code, out := run(t, mpirun(t, tc.np, nil, tc.args...))
		var ours []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "qatc-mpi:") {
				ours = append(ours, l)
			}
		}
		if code == 0 || len(ours) != 1 || !strings.HasPrefix(ours[0], tc.want) {
			t.Errorf("%s: exit %d, qatc-mpi's lines %q; want one line starting %q\n%s", tc.name, code, ours, tc.want, out)
		}
		if _, err := os.Stat(output); err == nil {
			t.Errorf("%s: %s was written", tc.name, output)
			os.Remove(output)
		}
	}
}

// TestRankFailures checks failures during training: a NaN on the ranks
// stops them all with one line naming the step and data lines; a rank
// killed or stopped mid-run ends the job instead of hanging it.
func TestRankFailures(t *testing.T) {
	_, qatcMPI := binaries(t)
	dir := t.TempDir()
	model, src, tgt := tinyTask(t, dir, 400, 1)
	jsonl := filepath.Join(dir, "m.jsonl")
	base := func(extra ...string) []string {
		return append([]string{qatcMPI, "train", model, "-o", filepath.Join(dir, "out.onnx"), "--src", src, "--tgt", tgt,
			"--batch-tokens", "256", "--threads", "1", "--metrics", jsonl}, extra...)
	}

	code, out := run(t, mpirun(t, 2, nil, base("--steps", "50", "--lr", "1e30")...))
	if code == 0 || !regexp.MustCompile(`(?m)^qatc-mpi: step \d+: the (loss is \S+ on rank \d|gradient norm is \S+) on batch \d+ of epoch \d+ \(data lines \[\d`).MatchString(out) ||
		strings.Count(out, "qatc-mpi:") != 1 {
		t.Errorf("NaN: exit %d; want one line naming the step and the data lines\n%s", code, out)
	}

	for _, tc := range []struct {
		name   string
		signal syscall.Signal
		extra  []string
		want   string
	}{
		// mpirun notices the death and ends the job.
		{"killed", syscall.SIGKILL, nil, "exited on signal 9"},
		// A stopped rank never joins the next collective: the others
		// give up after --comm-timeout and abort the job.
		{"stopped", syscall.SIGSTOP, []string{"--comm-timeout", "3s"}, "did not complete within 3s: a rank hangs, was stopped or cannot be reached"},
	} {
		os.Remove(jsonl)
		cmd := mpirun(t, 2, nil, base(append([]string{"--steps", "1000000"}, tc.extra...)...)...)
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, cmd, func() bool { return countLines(jsonl) >= 3 }, &buf)
		victim := rankPID(t, cmd.Process.Pid, 1)
		syscall.Kill(victim, tc.signal)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(buf.String(), tc.want) {
				t.Errorf("%s rank 1: mpirun ended with %v; want a failure saying %q\n%s", tc.name, err, tc.want, buf.String())
			}
		case <-time.After(90 * time.Second):
			cmd.Process.Kill()
			syscall.Kill(victim, syscall.SIGKILL)
			<-done
			t.Errorf("%s rank 1: the job still ran 90 s later\n%s", tc.name, buf.String())
		}
		syscall.Kill(victim, syscall.SIGKILL) // a stopped rank that outlived the job
	}
}

// rankPID returns the process id of rank r among mpirun's children.
func rankPID(t testing.TB, mpirunPID, r int) int {
	t.Helper()
	want := fmt.Sprintf("OMPI_COMM_WORLD_RANK=%d", r)
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The parent's pid is the second field after the command name,
		// which is parenthesized and may hold spaces.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) < 2 || f[1] != strconv.Itoa(mpirunPID) {
			continue
		}
		env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		for _, kv := range bytes.Split(env, []byte{0}) {
			if string(kv) == want {
				return pid
			}
		}
	}
	t.Fatalf("no child of mpirun (pid %d) is rank %d", mpirunPID, r)
	return 0
}

// TestBindingUnderMpirun runs the binding's own tests (mpi_test.go, built
// with -tags mpi) on 3 ranks.
func TestBindingUnderMpirun(t *testing.T) {
	binaries(t)
	out := must(t, mpirun(t, 3, nil, filepath.Join(binDir, "mpi.test"), "-test.v"))
	if n := strings.Count(out, "--- PASS: TestAllReduce"); n != 3 {
		t.Errorf("TestAllReduce passed on %d of 3 ranks\n%s", n, out)
	}
	if n := strings.Count(out, "--- PASS: TestAllGather"); n != 3 {
		t.Errorf("TestAllGather passed on %d of 3 ranks\n%s", n, out)
	}
}

// BenchmarkScaling is the scaling figure: fine-tuning throughput of the
// demo model (fp32 train, 4096-token batches) in one process with 2
// threads and on 2 ranks of 1 thread, five runs of each interleaved, with the share
// of a step spent summing gradients; then the bytes a rank all-reduces
// per step for the d=256, 3+3-layer, 6000-piece model, and what a ring
// all-reduce of them costs on 4 nodes at 10 Gbit/s. Opt-in:
//
//	go test ./mpi -run '^$' -bench Scaling -benchtime 1x
func BenchmarkScaling(b *testing.B) {
	qatc, qatcMPI := binaries(b)
	dir := b.TempDir()
	src, tgt := demoTask(b, dir, 8000)
	const steps, warm = 24, 4
	args := func(name string, threads int) []string {
		return []string{"train", filepath.Join(demoDir, "model.onnx"), "-o", filepath.Join(dir, name+".onnx"),
			"--src", src, "--tgt", tgt, "--spm", filepath.Join(demoDir, "spm.model"),
			"--steps", strconv.Itoa(steps), "--batch-tokens", "4096", "--threads", strconv.Itoa(threads),
			"--checkpoint-every", "0", "--metrics", filepath.Join(dir, name+".jsonl")}
	}
	// steady returns the tokens/s and the shares of the time in the
	// all-reduce and in waiting for the slower rank, after the first warm
	// steps.
	steady := func(name string) (tps, comm, wait float64) {
		ms := metrics(b, filepath.Join(dir, name+".jsonl"))
		a, z := ms[warm-1], ms[len(ms)-1]
		secs := z.Seconds - a.Seconds
		return float64(z.Tokens-a.Tokens) / secs, (z.CommSeconds - a.CommSeconds) / secs, (z.WaitSeconds - a.WaitSeconds) / secs
	}
	var tps1, tps2, comm, wait []float64
	for range 5 {
		must(b, exec.Command(qatc, args("n1", 2)...))
		must(b, mpirun(b, 2, nil, append([]string{qatcMPI}, args("n2", 1)...)...))
		t1, _, _ := steady("n1")
		t2, c2, w2 := steady("n2")
		b.Logf("N=1 (2 threads) %.0f tokens/s, N=2 (1 thread each) %.0f tokens/s (%.2fx); all-reduce %.1f%% of the time, waiting for the slower rank %.1f%%", t1, t2, t2/t1, 100*c2, 100*w2)
		tps1, tps2, comm, wait = append(tps1, t1), append(tps2, t2), append(comm, c2), append(wait, w2)
	}
	b.ReportMetric(median(tps1), "tok/s-N1")
	b.ReportMetric(median(tps2), "tok/s-N2")
	b.ReportMetric(100*median(comm), "allreduce%-N2")
	b.ReportMetric(100*median(wait), "wait%-N2")

	// The d=256 model: measured bytes per all-reduce on 2 ranks.
	cfg := testmodels.Config{Vocab: 6000, Hidden: 256, FFN: 1024, Heads: 4, EncoderLayers: 3, DecoderLayers: 3, MaxLen: 256,
		PreNorm: true, SharedEmbeddings: true, Activation: "relu", Opset: 17, Seed: 1}
	m, err := testmodels.Build(cfg)
	if err != nil {
		b.Fatal(err)
	}
	model := filepath.Join(dir, "d256.onnx")
	if err := m.Save(model); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var lines []string
	for range 400 {
		ids := make([]string, 10+rng.IntN(20))
		for i := range ids {
			ids[i] = strconv.Itoa(4 + rng.IntN(5990))
		}
		lines = append(lines, strings.Join(ids, " "))
	}
	ids := filepath.Join(dir, "d256.ids")
	write(b, ids, strings.Join(lines, "\n")+"\n")
	out := must(b, mpirun(b, 2, nil, qatcMPI, "train", model, "-o", filepath.Join(dir, "d256.out.onnx"), "--src", ids, "--tgt", ids,
		"--steps", "6", "--batch-tokens", "4096", "--threads", "1", "--json"))
	var rep struct {
		Steps     int64   `json:"steps"`
		Seconds   float64 `json:"seconds"`
		CommBytes int64   `json:"comm_bytes"`
	}
	if err := json.Unmarshal([]byte(out[strings.LastIndex(out, "\n{")+1:]), &rep); err != nil {
		b.Fatalf("%v\n%s", err, out)
	}
	bytes := float64(rep.CommBytes) / float64(rep.Steps)
	// A ring all-reduce sends and receives 2(n−1)/n of the buffer on each
	// node's link.
	const nodes, bitsPerSec = 4, 10e9
	secs := 2 * float64(nodes-1) / nodes * bytes * 8 / bitsPerSec
	step := rep.Seconds / float64(rep.Steps)
	b.Logf("d=256 model: %.1f MB all-reduced per step; on %d nodes at 10 Gbit/s a ring all-reduce moves %.1f MB per link: %.0f ms, %.1f%% of a %.2f s step (2 ranks of 1 thread here, 4096-token batches)",
		bytes/1e6, nodes, 2*float64(nodes-1)/nodes*bytes/1e6, 1000*secs, 100*secs/step, step)
	b.ReportMetric(bytes/1e6, "MB/allreduce-d256")
	b.ReportMetric(1000*secs, "ms-4nodes-10Gbit")
}

func median(x []float64) float64 {
	s := append([]float64(nil), x...)
	sort.Float64s(s)
	return s[len(s)/2]
}

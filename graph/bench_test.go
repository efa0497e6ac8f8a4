package graph

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The Big benchmarks measure Load and Save of a transformer-big sized model
// (about 210M float32 parameters in 200 initializers, 840 MB, with external
// data). Each measured operation runs in a fresh process (this test binary,
// re-executed) so that its peak resident memory (VmHWM) is its own; the
// benchmark reports seconds and peak memory as a multiple of the data size.

const (
	bigEnvMode = "QATC_GRAPH_BIG_MODE"
	bigEnvPath = "QATC_GRAPH_BIG_PATH"
)

// writeBigModel saves the synthetic model into dir and returns its path
// and the size of its tensor data.
func writeBigModel(b *testing.B, dir string) (string, int64) {
	b.Helper()
	m := New("big", 17)
	m.AddInput("x", Float, []int64{-1, 1024}, "n")
	prev := "x"
	var size int64
	for i := 0; i < 200; i++ {
		w := make([]float32, 1024*1024)
		for j := range w {
			w[j] = bigValue(i, j)
		}
		name := fmt.Sprintf("layer%d.weight", i)
		t := FloatTensor(name, []int64{1024, 1024}, w)
		size += int64(len(t.RawData))
		m.AddInitializer(t)
		out := fmt.Sprintf("h%d", i)
		m.Op("MatMul", "", []string{prev, name}, []string{out})
		prev = out
	}
	// A few small tensors stay inline.
	m.AddInitializer(FloatTensor("bias", []int64{16}, make([]float32, 16)))
	m.Op("Add", "", []string{prev, "bias"}, []string{"y"})
	m.AddOutput("y", Float, []int64{-1, 1024}, "n")
	path := filepath.Join(dir, "big.onnx")
	if err := m.SaveWith(path, &SaveOptions{ExternalData: true}); err != nil {
		b.Fatal(err)
	}
	return path, size
}

// bigValue is element j of weight i: cheap, varied, reproducible.
func bigValue(i, j int) float32 {
	return float32(int32(uint32(j)*2654435761+uint32(i))>>8) * 1e-9
}

// runBig runs bigHelper in a subprocess (this test binary, see TestMain)
// and returns the seconds the operation took and the process's peak
// resident bytes.
func runBig(b *testing.B, mode, path string) (float64, int64) {
	b.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), bigEnvMode+"="+mode, bigEnvPath+"="+path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("%s: %v\n%s", mode, err, out)
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		var secs float64
		var hwm int64
		if _, err := fmt.Sscanf(strings.TrimSpace(sc.Text()), "BIG seconds=%g hwm=%d", &secs, &hwm); err == nil {
			return secs, hwm
		}
	}
	b.Fatalf("%s: no result in output:\n%s", mode, out)
	return 0, 0
}

func benchBig(b *testing.B, mode string) {
	dir := b.TempDir()
	path, size := writeBigModel(b, dir)
	st, err := os.Stat(path + ".data")
	if err != nil {
		b.Fatal(err)
	}
	// Let the builder's 840 MB of dirty pages reach the disk first, so the
	// measured operation is not charged for their writeback.
	// Hand the builder's memory back too, so that it does not press on
	// the measured process.
	debug.FreeOSMemory()
	syscall.Sync()
	b.ResetTimer()
	var secs float64
	var hwm int64
	for i := 0; i < b.N; i++ {
		s, h := runBig(b, mode, path)
		secs += s
		hwm = max(hwm, h)
	}
	b.ReportMetric(secs/float64(b.N), "s/"+mode)
	b.ReportMetric(float64(hwm)/float64(st.Size()), "peak/size")
	b.ReportMetric(float64(st.Size())/1e6, "MB")
	b.ReportMetric(float64(size)/4e6, "Mparams")
}

func BenchmarkLoadBig(b *testing.B) { benchBig(b, "load") }
func BenchmarkSaveBig(b *testing.B) { benchBig(b, "save") }

// TestMain runs the subprocess side of the Big benchmarks when runBig
// starts this test binary with bigEnvMode set, and the tests otherwise.
func TestMain(m *testing.M) {
	if mode := os.Getenv(bigEnvMode); mode != "" {
		if err := bigHelper(mode, os.Getenv(bigEnvPath)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// bigHelper loads (and with mode "save" saves) the model at path and
// prints the seconds the operation took and the peak resident memory.
func bigHelper(mode, path string) error {
	start := time.Now()
	m, err := Load(path)
	if err != nil {
		return err
	}
	if mode == "save" {
		start = time.Now()
		out := filepath.Join(filepath.Dir(path), "saved.onnx")
		if err := m.SaveWith(out, &SaveOptions{ExternalData: true}); err != nil {
			return err
		}
	}
	secs := time.Since(start).Seconds()
	// Check the data really arrived, so the benchmark measures a load.
	w, err := Floats(m.Initializer("layer199.weight"))
	if err != nil || len(w) != 1024*1024 || w[12345] != bigValue(199, 12345) {
		return fmt.Errorf("layer199.weight not loaded correctly: %v", err)
	}
	hwm, err := peakRSS()
	if err != nil {
		return err
	}
	fmt.Printf("BIG seconds=%g hwm=%d\n", secs, hwm)
	return nil
}

// peakRSS reads the process's peak resident set size.
func peakRSS() (int64, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("peak memory: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmHWM: %v", err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/self/status")
}

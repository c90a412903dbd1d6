// Package sysinfo describes the machine a benchmark ran on and reads a
// process's CPU time and memory from /proc.
package sysinfo

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// Machine is what the report says about where it ran.
type Machine struct {
	CPUModel  string
	NProc     string // `nproc`: CPUs usable by this process
	MemTotal  string
	Kernel    string
	GoVersion string // `go version`
	GoRuntime string // the harness's own runtime.Version()
	GitCommit string // HEAD, with "+ N uncommitted changes" when dirty
	OS        string
}

// Describe gathers the machine description; fields it cannot read say so.
// root is the repository for git.
func Describe(ctx context.Context, root string) Machine {
	m := Machine{GoRuntime: runtime.Version()}
	m.CPUModel = cpuModel()
	m.NProc = command(ctx, "", "nproc")
	m.MemTotal = memTotal()
	m.Kernel = command(ctx, "", "uname", "-srm")
	m.GoVersion = command(ctx, "", "go", "version")
	m.OS = osRelease()
	head := command(ctx, root, "git", "rev-parse", "HEAD")
	if porcelain := command(ctx, root, "git", "status", "--porcelain"); porcelain != "" && !strings.HasPrefix(porcelain, "unknown") {
		head += fmt.Sprintf(" + %d uncommitted changes", len(strings.Split(porcelain, "\n")))
	}
	m.GitCommit = head
	return m
}

func command(ctx context.Context, dir, name string, args ...string) string {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return fmt.Sprintf("unknown (%s: %v)", name, err)
	}
	return strings.TrimSpace(string(out))
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown: " + err.Error()
	}
	models := map[string]int{}
	var order []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "model name" {
			continue
		}
		v = strings.TrimSpace(v)
		if models[v] == 0 {
			order = append(order, v)
		}
		models[v]++
	}
	if len(order) == 0 {
		return "unknown (no model name in /proc/cpuinfo)"
	}
	parts := make([]string, len(order))
	for i, m := range order {
		parts[i] = fmt.Sprintf("%d x %s", models[m], m)
	}
	return strings.Join(parts, ", ")
}

func memTotal() string {
	kb, err := statusField("/proc/meminfo", "MemTotal")
	if err != nil {
		return "unknown: " + err.Error()
	}
	return fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
}

func osRelease() string {
	b, err := os.ReadFile("/etc/os-release")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return "unknown"
}

// statusField reads a "Key:   123 kB" line from a /proc file, in kB.
func statusField(path, key string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || k != key {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			break
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse %s in %s: %w", key, path, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("read %s: no %s line", path, key)
}

// ClockTicks is the kernel's USER_HZ (`getconf CLK_TCK`), the unit of the
// CPU times in /proc/PID/stat; 100 when getconf is unavailable (Linux's
// value on every common architecture).
func ClockTicks(ctx context.Context) int64 {
	out, err := exec.CommandContext(ctx, "getconf", "CLK_TCK").Output()
	if err != nil {
		return 100
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || n <= 0 {
		return 100
	}
	return n
}

// CPUTicks returns utime + stime of pid from /proc/PID/stat, in clock ticks.
func CPUTicks(pid int) (int64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, fmt.Errorf("cpu ticks of %d: %w", pid, err)
	}
	// "pid (comm) state ppid ...": comm may contain spaces; fields after
	// the last ')' start at field 3 (state). utime and stime are fields 14
	// and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("cpu ticks of %d: malformed stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("cpu ticks of %d: short stat", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("cpu ticks of %d: bad utime/stime %q %q", pid, f[11], f[12])
	}
	return utime + stime, nil
}

// Memory is a process's resident set (now and peak), in bytes.
type Memory struct {
	RSS, PeakRSS int64
}

// ProcMemory reads VmRSS and VmHWM of pid.
func ProcMemory(pid int) (Memory, error) {
	path := filepath.Join("/proc", strconv.Itoa(pid), "status")
	rss, err := statusField(path, "VmRSS")
	if err != nil {
		return Memory{}, fmt.Errorf("memory of %d: %w", pid, err)
	}
	hwm, err := statusField(path, "VmHWM")
	if err != nil {
		return Memory{}, fmt.Errorf("memory of %d: %w", pid, err)
	}
	return Memory{RSS: rss * 1024, PeakRSS: hwm * 1024}, nil
}

// LoadAvg1 is the 1-minute load average from /proc/loadavg (NaN if
// unreadable).
func LoadAvg1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return math.NaN()
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return math.NaN()
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return math.NaN()
	}
	return v
}

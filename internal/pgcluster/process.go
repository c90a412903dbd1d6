package pgcluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func readPostmasterPID(dataDir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("pgcluster: no postmaster.pid in %s: %w", dataDir, ErrNotRunning)
	}
	if err != nil {
		return 0, fmt.Errorf("pgcluster: read postmaster.pid: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pgcluster: bad postmaster.pid in %s: %q", dataDir, line)
	}
	return pid, nil
}

// processGone reports whether pid has exited. A zombie counts as gone: the
// postmaster is not our child, and a container without a reaping init may
// leave it unreaped.
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	return procState(stat) == 'Z'
}

// procState returns the state field of /proc/PID/stat ("pid (comm) S ...";
// comm may contain spaces and parentheses, so parse from the last ')').
func procState(stat []byte) byte {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return 0
	}
	return stat[i+2]
}

func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if processGone(pid) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ChildPIDs lists the postmaster's current children (backends and auxiliary
// processes), best effort from /proc: fault tests stop or kill them.
func (c *Cluster) ChildPIDs() ([]int, error) {
	pid, err := c.PostmasterPID()
	if err != nil {
		return nil, err
	}
	return childrenOf(pid), nil
}

// childrenOf lists the current children of pid from /proc (best effort).
func childrenOf(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var kids []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			kids = append(kids, p)
		}
	}
	return kids
}

// isPostgres guards against signalling an unrelated process that reused a
// stale pid.
func isPostgres(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	exe, _, _ := bytes.Cut(cmdline, []byte{0})
	return strings.Contains(filepath.Base(string(exe)), "postgres")
}

// reapStale removes clusters under base left behind by test processes that
// died without Destroy (panic, go test -timeout): it shuts their postmaster
// down immediately (SIGQUIT) and removes the dir. Dirs without an owner.pid
// are being created right now and are left alone.
func reapStale(base string, logf func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(base, dirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		owner, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || owner <= 0 || !processGone(owner) {
			continue
		}
		if pid, err := readPostmasterPID(filepath.Join(dir, "data")); err == nil && !processGone(pid) && isPostgres(pid) {
			_ = syscall.Kill(pid, syscall.SIGQUIT)
			if !waitGone(pid, 10*time.Second) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				waitGone(pid, 5*time.Second)
			}
		}
		if err := os.RemoveAll(dir); err == nil {
			logf("pgcluster: removed stale cluster %s (owner process %d is gone)", dir, owner)
		}
	}
}

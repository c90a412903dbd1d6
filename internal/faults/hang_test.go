package faults

import (
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDatabaseHung freezes every process of the test cluster with SIGSTOP:
// connections stay open and nothing answers, the nastiest failure for a
// client. The daemon's endpoints must keep answering from memory (< 1 s),
// /readyz must report not ready within ~10 s, and after SIGCONT the daemon
// must recover and reflect a change.
func TestDatabaseHung(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2000)
	p := e.startSettled(t, config{})

	postmaster, err := e.cluster.PostmasterPID()
	if err != nil {
		t.Fatal(err)
	}
	var stopped []int
	// Always resume, even if the test fails half-way: registered before the
	// first SIGSTOP, it runs before the cluster's own cleanup.
	t.Cleanup(func() {
		for _, pid := range stopped {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	})
	// The postmaster first, so it cannot start a child we would miss.
	if err := syscall.Kill(postmaster, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped = append(stopped, postmaster)
	children, err := e.cluster.ChildPIDs()
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range children {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err == nil {
			stopped = append(stopped, pid)
		}
	}
	stoppedAt := time.Now()
	t.Logf("SIGSTOP sent to %d postgres processes", len(stopped))

	var notReadyAfter time.Duration
	var slowest time.Duration
	// 15 s: long enough for every periodic check of the daemon (database
	// ping every 5 s, leader check every 2 s, listener ping after 10 s of
	// quiet) to run into the hung server at least once.
	for time.Since(stoppedAt) < 15*time.Second {
		for _, path := range []string{"/metrics", "/healthz", "/status"} {
			code, _, took, err := get(p, path, 5*time.Second)
			slowest = max(slowest, took)
			if err != nil || code != http.StatusOK {
				t.Errorf("GET %s with the database hung: %d, %v", path, code, err)
			} else if took >= time.Second {
				t.Errorf("GET %s took %v with the database hung, want < 1 s", path, took)
			}
		}
		if notReadyAfter == 0 {
			code, body, took, err := get(p, "/readyz", 5*time.Second)
			slowest = max(slowest, took)
			if err != nil {
				t.Errorf("GET /readyz with the database hung: %v", err)
			} else if code == http.StatusServiceUnavailable {
				notReadyAfter = time.Since(stoppedAt)
				t.Logf("/readyz: %s", strings.TrimSpace(body))
			}
		}
		// Sampling the endpoints throughout the window is the test.
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("endpoints answered in at most %v with the database hung; /readyz said 503 after %v",
		slowest.Round(time.Millisecond), notReadyAfter.Round(time.Millisecond))
	if notReadyAfter == 0 || notReadyAfter > 10*time.Second {
		t.Errorf("/readyz said not ready after %v (0: never within 15 s), want within ~10 s", notReadyAfter.Round(time.Millisecond))
	}

	for _, pid := range stopped {
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			t.Errorf("SIGCONT %d: %v", pid, err)
		}
	}
	stopped = nil
	resumedAt := time.Now()
	e.pool.Reset()
	e.change(t)
	e.mustSettle(t, 30*time.Second)
	t.Logf("change reflected %v after SIGCONT", time.Since(resumedAt).Round(time.Millisecond))
	if err := waitReady(p, 30*time.Second); err != nil {
		t.Errorf("/readyz not 200 within 30 s of SIGCONT: %v", err)
	}
	t.Logf("ready again %v after SIGCONT", time.Since(resumedAt).Round(time.Millisecond))
	if p.Exited() {
		t.Fatal("daemon exited")
	}
}

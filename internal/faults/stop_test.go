package faults

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/refresherd/refresherd/internal/daemontest"
)

// TestStopMidRefresh stops the daemon while a slow refresh runs: first with
// SIGTERM (a 1 s grace period, then the refresh is cancelled), then with
// SIGKILL. Either way the view keeps its last good data, the status table
// and the log claim no refresh that did not commit, and no REFRESH is left
// running on the server a few seconds later (a leftover would hold the
// view's locks and block the next leader). A new daemon then catches up.
func TestStopMidRefresh(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2000)
	const grace = time.Second
	cfg := config{views: daemontest.SummaryView(slowQuery), grace: "1s"}
	p := e.startSettled(t, cfg)

	// A refresh that would take 30 s.
	e.setDelay(t, 30)

	t.Run("SIGTERM", func(t *testing.T) {
		before, hash, successes := e.status(t), e.viewHash(t), e.countSuccessLog(t)
		e.change(t)
		waitInProgress(t, p, 10*time.Second)
		waitServerRefreshes(t, e, 5*time.Second, func(n int) bool { return n == 1 })

		sentAt := time.Now()
		if err := p.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		// "Within grace + a few seconds": 5 s for cancelling the statement,
		// releasing the leader lock and closing connections.
		bound := grace + 5*time.Second
		ctx, cancel := context.WithTimeout(context.Background(), bound)
		defer cancel()
		code, err := p.Wait(ctx)
		if err != nil {
			t.Fatalf("no exit within %v of SIGTERM (grace %v): %v", bound, grace, err)
		}
		t.Logf("exited with code %d %v after SIGTERM (grace %v)", code, time.Since(sentAt).Round(time.Millisecond), grace)
		if code != 0 {
			t.Errorf("exit code %d after SIGTERM, want 0", code)
		}
		checkNothingCommitted(t, e, before, hash, successes)
	})

	t.Run("SIGKILL", func(t *testing.T) {
		before, hash, successes := e.status(t), e.viewHash(t), e.countSuccessLog(t)
		// A new daemon's first refresh (a start-up catch-up) takes 30 s.
		p := e.startDaemon(t, cfg)
		waitInProgress(t, p, 10*time.Second)
		waitServerRefreshes(t, e, 5*time.Second, func(n int) bool { return n == 1 })
		p.Kill()
		checkNothingCommitted(t, e, before, hash, successes)
	})

	t.Run("recovers", func(t *testing.T) {
		e.setDelay(t, 0)
		e.startDaemon(t, cfg)
		e.mustSettle(t, 10*time.Second)
	})
}

// checkNothingCommitted checks that the interrupted refresh left no trace:
// same data, same status, no new success in the log, and no REFRESH still
// running on the server after "a few seconds" (5).
func checkNothingCommitted(t *testing.T, e *env, before statusRow, hash string, successes int) {
	t.Helper()
	stoppedAt := time.Now()
	waitServerRefreshes(t, e, 5*time.Second, func(n int) bool { return n == 0 })
	t.Logf("no REFRESH on the server %v after the stop", time.Since(stoppedAt).Round(time.Millisecond))
	after := e.status(t)
	if !timesEqual(after.DataAsOf, before.DataAsOf) || !timesEqual(after.LastSuccess, before.LastSuccess) {
		t.Errorf("view_status moved for a refresh that did not commit: data_as_of %v -> %v, last_success_at %v -> %v",
			before.DataAsOf, after.DataAsOf, before.LastSuccess, after.LastSuccess)
	}
	if after.LastResult == "success" && before.LastResult != "success" {
		t.Errorf("view_status says success after an interrupted refresh")
	}
	if n := e.countSuccessLog(t); n != successes {
		t.Errorf("refresh_log has %d successes, %d before the interrupted refresh", n, successes)
	}
	if h := e.viewHash(t); h != hash {
		t.Errorf("the view's data changed although the refresh was interrupted")
	}
}

// waitServerRefreshes waits until the number of the daemon's REFRESHes of
// the view running on the server satisfies ok.
func waitServerRefreshes(t *testing.T, e *env, within time.Duration, ok func(int) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	err := daemontest.Eventually(ctx, 50*time.Millisecond, func() error {
		n, err := serverRefreshes(ctx, e.pool)
		if err != nil {
			return err
		}
		if !ok(n) {
			return fmt.Errorf("%d REFRESH of the view from the daemon on the server", n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("after %v: %v", within, err)
	}
}

package faults

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/refresherd/refresherd/internal/daemontest"
)

// TestDatabaseRestart stops the database (immediate mode: a crash as far as
// clients can tell) while the daemon is idle and while it refreshes, keeps
// it down for a while, starts it again and commits a change at once, before
// the daemon has reconnected. The daemon must report not-ready while the
// database is down, reconnect without flooding its log, and reflect the
// change within 10 s of the database coming back, through a catch-up.
func TestDatabaseRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 5000)
	p := e.startSettled(t, config{views: daemontest.SummaryView(slowQuery)})

	for _, tc := range []struct {
		name       string
		midRefresh bool
	}{{"idle", false}, {"during refresh", true}} {
		t.Run(tc.name, func(t *testing.T) {
			catchupsBefore := refreshes(t, p, "success", "catchup", "startup")
			from := len(p.LogLines())
			if tc.midRefresh {
				// A refresh that takes 3 s, so the stop lands inside it.
				e.setDelay(t, 3)
				e.change(t)
				waitInProgress(t, p, 10*time.Second)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := e.cluster.Stop(ctx, "immediate"); err != nil {
				t.Fatal(err)
			}
			downAt := time.Now()
			// Down for 6 s: several reconnect attempts by every connection
			// of the daemon, and at least one of its periodic (5 s)
			// database checks, happen while it is down.
			var first503 time.Time
			var flipped []string
			for time.Since(downAt) < 6*time.Second {
				code, body, _, err := get(p, "/readyz", 5*time.Second)
				switch {
				case err != nil:
					t.Errorf("/readyz while the database is down: %v", err)
				case code == http.StatusServiceUnavailable && first503.IsZero():
					first503 = time.Now()
				case code == http.StatusOK && !first503.IsZero():
					flipped = append(flipped, time.Since(downAt).Round(time.Millisecond).String()+": "+strings.TrimSpace(body))
				}
				// Sampling /readyz throughout the outage is the test.
				time.Sleep(100 * time.Millisecond)
			}
			if first503.IsZero() {
				t.Errorf("/readyz never said 503 during 6 s with the database down")
			} else {
				t.Logf("/readyz said 503 %v after the database went down", first503.Sub(downAt).Round(time.Millisecond))
			}
			if len(flipped) > 0 {
				t.Errorf("/readyz went back to 200 while the database was still down (at %v after the stop)", flipped)
			}

			if err := e.cluster.StartAgain(ctx); err != nil {
				t.Fatal(err)
			}
			upAt := time.Now()
			// The pool's connections died with the server.
			e.pool.Reset()
			// Commit a change right away, normally before the daemon has
			// reconnected: only a catch-up can bring it in. Also make
			// refreshes fast again.
			tx, err := e.pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, `UPDATE public.fault_delay SET secs = 0`); err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO app_charge (type, amount, month, user_id, job_id) VALUES ('sw', 7.77, '2026-05-01', 3, 4)`); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			committedAt := time.Now()

			e.mustSettle(t, 10*time.Second-time.Since(upAt))
			settledAfter := time.Since(upAt)

			reconnected := waitLogAfter(t, p, from, 10*time.Second, msgIs("listener connected"))
			reconnectAt, err := logTime(reconnected)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("database down %v; listener reconnected %v after it came back (change committed %v after); settled %v after it came back",
				upAt.Sub(downAt).Round(time.Millisecond), reconnectAt.Sub(upAt).Round(time.Millisecond),
				committedAt.Sub(upAt).Round(time.Millisecond), settledAfter.Round(time.Millisecond))
			if !committedAt.Before(reconnectAt) {
				t.Logf("note: the daemon reconnected before the change committed; NOTIFY may have carried it")
			}

			waitMetric(t, p, 10*time.Second, "refresherd_listener_connected", nil, func(v float64) bool { return v == 1 })
			if err := waitReady(p, 10*time.Second); err != nil {
				t.Errorf("/readyz not 200 within 10 s of the database coming back: %v", err)
			}

			// Changes during the outage went unseen: the first refresh of
			// the new term is a catch-up (the daemon lost its leader
			// session with the server, so it is a new term).
			if got := refreshes(t, p, "success", "catchup", "startup") - catchupsBefore; got < 1 {
				t.Errorf("%v successful catch-up/start-up refreshes after the restart, want >= 1", got)
			}

			// Each state change logged once, not once per attempt.
			var connectLines []string
			for _, l := range logsAfter(p, from) {
				if msg, _ := l["msg"].(string); strings.Contains(msg, "cannot connect") {
					connectLines = append(connectLines, msg)
				}
			}
			if len(connectLines) >= 10 {
				t.Errorf("log storm: %d \"cannot connect\" lines during a %v outage: %v", len(connectLines), upAt.Sub(downAt).Round(time.Second), connectLines)
			}
			t.Logf("%d log lines during the fault, %d of them \"cannot connect\"", len(logsAfter(p, from)), len(connectLines))
			waitIdle(t, p, 30*time.Second)
			if p.Exited() {
				t.Fatal("daemon exited")
			}
		})
	}
}

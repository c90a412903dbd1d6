package faults

import (
	"context"
	"testing"
	"time"
)

// TestListenerKilled terminates the daemon's LISTEN connection on the server
// and keeps it from reconnecting for a while (its role may not log in; the
// daemon's other connections stay up), commits a change meanwhile, then
// lets it back in. The change's ring was sent while nobody listened, so
// only the doorbell's fallback drain or the catch-up after the reconnect
// can bring it in.
func TestListenerKilled(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2000)
	e.exec(t, `CREATE ROLE refresherd_li LOGIN SUPERUSER`)
	p := start(t, config{}.write(t), "DATABASE_URL="+roleURL(t, e.url, "refresherd_li"))
	e.settle(t, p)
	waitMetric(t, p, 10*time.Second, "refresherd_listener_connected", nil, func(v float64) bool { return v == 1 })

	reconnectsBefore := mustMetric(t, p, "refresherd_listener_reconnects_total", nil)
	catchupsBefore := refreshes(t, p, "success", "catchup")
	from := len(p.LogLines())

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var pid int
	if err := e.pool.QueryRow(ctx, `SELECT pid FROM pg_stat_activity
		WHERE application_name = 'refresherd' AND query LIKE 'LISTEN%'`).Scan(&pid); err != nil {
		t.Fatalf("find the listener's backend: %v", err)
	}
	// Sessions already open are not affected by NOLOGIN.
	e.exec(t, `ALTER ROLE refresherd_li NOLOGIN`)
	var gone bool
	// With a timeout, pg_terminate_backend waits until the backend has
	// exited (PostgreSQL 14+).
	if err := e.pool.QueryRow(ctx, `SELECT pg_terminate_backend($1, 10000)`, pid).Scan(&gone); err != nil || !gone {
		t.Fatalf("terminate the listener's backend %d: %v, %v", pid, gone, err)
	}
	waitMetric(t, p, 5*time.Second, "refresherd_listener_connected", nil, func(v float64) bool { return v == 0 })
	e.change(t)
	committedAt := time.Now()
	// Let the listener fail to reconnect at least once, so the test sees
	// a real outage of it.
	waitLogAfter(t, p, from, 10*time.Second, msgIs("listener cannot connect; retrying"))
	e.exec(t, `ALTER ROLE refresherd_li LOGIN`)
	allowedAt := time.Now()

	e.mustSettle(t, 10*time.Second)
	t.Logf("change committed while the listener was down reflected %v after the commit, %v after the listener was allowed back",
		time.Since(committedAt).Round(time.Millisecond), time.Since(allowedAt).Round(time.Millisecond))
	reconnected := waitLogAfter(t, p, from, 10*time.Second, msgIs("listener connected"))
	if at, err := logTime(reconnected); err != nil {
		t.Fatal(err)
	} else if at.Before(allowedAt.Add(-time.Millisecond)) {
		t.Errorf("the listener reconnected at %v, before it was allowed to (%v)", at, allowedAt)
	}

	waitMetric(t, p, 10*time.Second, "refresherd_listener_connected", nil, func(v float64) bool { return v == 1 })
	if got := mustMetric(t, p, "refresherd_listener_reconnects_total", nil) - reconnectsBefore; got != 1 {
		t.Errorf("refresherd_listener_reconnects_total went up by %v, want 1", got)
	}
	// The catch-up may follow the refresh that the reconnect's poll asked
	// for (which settled the view above): wait for it.
	waitMetric(t, p, 10*time.Second, "refresherd_refreshes_total",
		map[string]string{"view": view, "result": "success", "trigger": "catchup"},
		func(v float64) bool { return v-catchupsBefore >= 1 })
	// The daemon keeps working on NOTIFY afterwards.
	e.change(t)
	e.mustSettle(t, 10*time.Second)
	if p.Exited() {
		t.Fatal("daemon exited")
	}
}

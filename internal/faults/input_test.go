package faults

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/refresherd/refresherd/internal/daemontest"
	"github.com/refresherd/refresherd/internal/demodata"
)

// TestGarbageNotifications sends payloads on the daemon's channel that are
// not change events it can use: each must be ignored, counted in
// refresherd_notifications_ignored_total, and cause no refresh; the daemon
// keeps working.
func TestGarbageNotifications(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2000)
	p := e.startSettled(t, config{})

	payloads := []string{
		`not json`,
		``,
		`null`,
		`[1, 2, 3]`,
		`{"schema": "public", "table": "app_charge"`,                       // truncated
		`{"schema": "public", "table": "app_user", "ts": 1767225600}`,      // a table no view watches
		`{"schema": "public", "table": "no_such_table", "ts": 1767225600}`, // a table that does not exist
		`{"schema": "PUBLIC", "table": "APP_CHARGE", "ts": 1767225600}`,    // names are case-sensitive
		`{"schema": "public", "table": "app_charge"}`,                      // no time
		`{"schema": "public", "table": "app_charge", "ts": "yesterday"}`,   // time of the wrong type
		`{"op": "drop"}`,                      // an unknown control message
		strings.Repeat("\u00e9garbage ", 700), // near the 8000-byte limit, multi-byte
	}
	ignoredBefore := mustMetric(t, p, "refresherd_notifications_ignored_total", nil)
	refreshesBefore := mustMetric(t, p, "refresherd_refreshes_total", map[string]string{"view": view})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, pl := range payloads {
		if _, err := e.pool.Exec(ctx, `SELECT pg_notify('refresherd_changes', $1)`, pl); err != nil {
			t.Fatalf("notify %.40q: %v", pl, err)
		}
	}
	want := ignoredBefore + float64(len(payloads))
	waitMetric(t, p, 10*time.Second, "refresherd_notifications_ignored_total", nil, func(v float64) bool { return v >= want })
	// The listener handles notifications one at a time, in order, and
	// counts one as ignored only once it has decided not to route it: every
	// payload has been handled now. One that wrongly reached the view would
	// show in this same scrape as a pending change (or a refresh running or
	// done), whatever the debounce.
	fams, err := p.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := fams.Sum("refresherd_notifications_ignored_total", nil); got != want {
		t.Errorf("refresherd_notifications_ignored_total = %v, want %v (%d payloads sent)", got, want, len(payloads))
	}
	l := map[string]string{"view": view}
	for _, name := range []string{"refresherd_pending_changes", "refresherd_refresh_in_progress", "refresherd_staleness_seconds"} {
		if v, ok := fams.Value(name, l); !ok || v != 0 {
			t.Errorf("%s = %v (series present: %v) after the garbage, want 0", name, v, ok)
		}
	}
	if got := fams.Sum("refresherd_refreshes_total", l) - refreshesBefore; got != 0 {
		t.Errorf("garbage notifications caused %v refreshes", got)
	}

	// Still working.
	e.change(t)
	e.mustSettle(t, 10*time.Second)
	if code, _, _, err := get(p, "/readyz", 5*time.Second); err != nil || code != http.StatusOK {
		t.Errorf("/readyz after garbage: %d, %v", code, err)
	}
	if p.Exited() {
		t.Fatal("daemon exited")
	}
}

// TestBadViews configures a view whose query cannot be created (unknown
// column) and a view with a valid query but a source table that does not
// exist (its trigger cannot be put), next to the good summary. The bad ones are reported
// (refresherd_view_ready 0, setup_error in /status, an error log line); the
// good one is refreshed as usual; the daemon keeps running.
func TestBadViews(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2000)
	const badQuery, missingSource = "public.bad_query_summary", "public.refund_summary"
	views := daemontest.SummaryView(demodata.SummaryQuery) + `  - name: ` + badQuery + `
    unique_key: [id]
    sources: [public.app_charge]
    query: SELECT c.id, c.no_such_column FROM public.app_charge c
  - name: ` + missingSource + `
    unique_key: [id]
    sources: [public.app_charge, public.app_refund]
    query: SELECT c.id, c.amount FROM public.app_charge c
`
	p := e.startDaemon(t, config{views: views})
	e.mustSettle(t, 30*time.Second)

	for _, bad := range []struct{ view, mention string }{
		{badQuery, "no_such_column"},
		{missingSource, "app_refund"},
	} {
		waitMetric(t, p, 10*time.Second, "refresherd_view_ready", map[string]string{"view": bad.view}, func(v float64) bool { return v == 0 })
		waitLogAfter(t, p, 0, 10*time.Second, func(l map[string]any) bool {
			errText, _ := l["error"].(string)
			return l["level"] == "error" && l["view"] == bad.view && strings.Contains(errText, bad.mention)
		})
		found := false
		for _, v := range getStatus(t, p).Views {
			if v.View == bad.view {
				found = true
				if v.Ready || !strings.Contains(v.SetupError, bad.mention) {
					t.Errorf("/status of %s: ready %v, setup_error %q; want not ready and an error mentioning %s", bad.view, v.Ready, v.SetupError, bad.mention)
				}
			}
		}
		if !found {
			t.Errorf("/status does not list %s", bad.view)
		}
	}
	if v := mustMetric(t, p, "refresherd_view_ready", map[string]string{"view": view}); v != 1 {
		t.Errorf("refresherd_view_ready of the good view = %v, want 1", v)
	}

	// The good view keeps refreshing on changes, twice over.
	for range 2 {
		before := refreshes(t, p, "success")
		e.change(t)
		e.mustSettle(t, 10*time.Second)
		waitMetric(t, p, 10*time.Second, "refresherd_refreshes_total", map[string]string{"view": view, "result": "success"},
			func(v float64) bool { return v > before })
	}
	if p.Exited() {
		t.Fatal("daemon exited because of bad views")
	}
	if code, _, _, err := get(p, "/healthz", 5*time.Second); err != nil || code != http.StatusOK {
		t.Errorf("/healthz: %d, %v", code, err)
	}
}

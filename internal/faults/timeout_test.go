package faults

import (
	"strings"
	"testing"
	"time"

	"github.com/refresherd/refresherd/internal/daemontest"
)

// TestStatementTimeout makes the view's query slower than its
// statement_timeout: the refresh must fail and be recorded as such
// (view_status, /status, metrics), the view must keep its previous data, and
// it must succeed once the slowness goes away.
func TestStatementTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2000)
	p := e.startSettled(t, config{views: daemontest.SummaryView(slowQuery), stmtTimeout: "1s"})

	before := e.status(t)
	hash := e.viewHash(t)
	errorsBefore := refreshes(t, p, "error")

	e.setDelay(t, 3)
	e.change(t)
	waitMetric(t, p, 15*time.Second, "refresherd_refreshes_total", map[string]string{"view": view, "result": "error"},
		func(v float64) bool { return v > errorsBefore })

	st := e.status(t)
	if st.LastResult != "error" || !strings.Contains(st.LastError, "statement timeout") {
		t.Errorf("view_status after the timeout: result %q, error %q; want error mentioning statement timeout", st.LastResult, st.LastError)
	}
	if st.Failures < 1 {
		t.Errorf("view_status consecutive_failures = %d, want >= 1", st.Failures)
	}
	if !timesEqual(st.DataAsOf, before.DataAsOf) || !timesEqual(st.LastSuccess, before.LastSuccess) {
		t.Errorf("a failed refresh moved data_as_of/last_success_at: %v/%v -> %v/%v", before.DataAsOf, before.LastSuccess, st.DataAsOf, st.LastSuccess)
	}
	if h := e.viewHash(t); h != hash {
		t.Errorf("the view's data changed although every refresh failed")
	}
	doc := getStatus(t, p)
	if len(doc.Views) != 1 || doc.Views[0].LastResult != "error" || !strings.Contains(doc.Views[0].LastError, "statement timeout") {
		t.Errorf("/status after the timeout: %+v", doc.Views)
	}
	if got := refreshes(t, p, "error") - errorsBefore; got < 1 {
		t.Errorf("refresherd_refreshes_total{result=\"error\"} went up by %v, want >= 1", got)
	}

	// Slowness gone: a retry succeeds and brings the change in.
	e.setDelay(t, 0)
	fixedAt := time.Now()
	e.mustSettle(t, time.Minute)
	t.Logf("settled %v after the slowness was removed", time.Since(fixedAt).Round(time.Millisecond))
	if st := e.status(t); st.LastResult != "success" || st.Failures != 0 {
		t.Errorf("view_status after recovery: result %q, consecutive failures %d", st.LastResult, st.Failures)
	}
}

func timesEqual(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}

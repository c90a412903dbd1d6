package faults

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestLockContention has another session hold the view's lock (an open
// transaction that ran a plain REFRESH: ACCESS EXCLUSIVE until it ends;
// LOCK TABLE does not accept a materialized view) while changes arrive. The
// daemon's refreshes must fail on lock_timeout and be counted as errors,
// retries must back off, the daemon must never run two REFRESHes of the view
// at once, and once the lock is released a refresh must succeed and settle.
func TestLockContention(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2000)
	p := e.startSettled(t, config{lockTimeout: "500ms"})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	holder := connect(t, e.url)
	if _, err := holder.Exec(ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(ctx, `REFRESH MATERIALIZED VIEW public.app_chargesummary`); err != nil {
		t.Fatal(err)
	}
	errorsBefore := refreshes(t, p, "error")
	from := len(p.LogLines())

	// Contention with a change every 500 ms until 4 attempts have failed
	// (3 gaps between them to compare), sampling the server's activity
	// meanwhile. With the retry backoff (1 s base, doubling, jitter in
	// [d/2, d]) and 500 ms lock waits that takes at most about 9 s; 30 s
	// without 4 failures means the daemon stopped retrying.
	isFailure := func(l map[string]any) bool {
		return l["msg"] == "refresh failed; the view keeps its previous data" && l["view"] == view
	}
	maxConcurrent := 0
	var samples int
	start := time.Now()
	nextChange := start
	for time.Since(start) < 30*time.Second {
		failures := 0
		for _, l := range logsAfter(p, from) {
			if isFailure(l) {
				failures++
			}
		}
		if failures >= 4 {
			break
		}
		if !time.Now().Before(nextChange) {
			e.change(t)
			nextChange = nextChange.Add(500 * time.Millisecond)
		}
		n, err := serverRefreshes(ctx, e.pool)
		if err != nil {
			t.Fatal(err)
		}
		samples++
		maxConcurrent = max(maxConcurrent, n)
		// The sampling interval: watching the server throughout the
		// contention is the test.
		time.Sleep(25 * time.Millisecond)
	}
	if maxConcurrent > 1 {
		t.Errorf("%d REFRESHes of the view from the daemon at once, want at most 1", maxConcurrent)
	}
	t.Logf("at most %d daemon REFRESH of the view at a time over %d samples", maxConcurrent, samples)

	errs := refreshes(t, p, "error") - errorsBefore
	// Each failed attempt's end (its log line) and start (minus its
	// duration): a gap runs from one's end to the next one's start, the
	// retry's wait alone, without the lock wait, whose length varies with
	// the machine's load.
	var failedAt, startedAt []time.Time
	for _, l := range logsAfter(p, from) {
		if isFailure(l) {
			at, err := logTime(l)
			if err != nil {
				t.Fatal(err)
			}
			took, err := time.ParseDuration(fmt.Sprint(l["duration"]))
			if err != nil {
				t.Fatalf("failure logged without a valid duration: %v", l)
			}
			failedAt, startedAt = append(failedAt, at), append(startedAt, at.Add(-took))
			if e, _ := l["error"].(string); !strings.Contains(e, "lock timeout") {
				t.Errorf("refresh failed for another reason than the lock: %s", e)
			}
		}
	}
	var gaps []time.Duration
	for i := 1; i < len(failedAt); i++ {
		gaps = append(gaps, startedAt[i].Sub(failedAt[i-1]).Round(time.Millisecond))
	}
	t.Logf("%v failed attempts in %v of contention (result=\"error\"), gaps between them %v", errs, time.Since(start).Round(time.Millisecond), gaps)
	if errs < 4 || len(failedAt) < 4 {
		t.Errorf("%v errors counted, %d logged, in %v of contention: want >= 4 (the daemon must keep retrying)", errs, len(failedAt), time.Since(start).Round(time.Second))
	}
	// Backing off: each wait is at least as long as the one before (each
	// delay's minimum is the previous one's maximum; 100 ms for scheduling),
	// and with 3 or more gaps the last is longer than the first.
	for i := 1; i < len(gaps); i++ {
		if gaps[i] < gaps[i-1]-100*time.Millisecond {
			t.Errorf("retry gaps %v do not back off (gap %d shorter than gap %d)", gaps, i+1, i)
		}
	}
	if len(gaps) >= 3 && gaps[len(gaps)-1] <= gaps[0] {
		t.Errorf("retry gaps %v do not grow", gaps)
	}
	if st := e.status(t); st.LastResult != "error" || !strings.Contains(st.LastError, "lock timeout") {
		t.Errorf("view_status during contention: result %q, error %q; want error mentioning lock timeout", st.LastResult, st.LastError)
	}

	// Release: the next retry succeeds and everything committed meanwhile
	// is reflected.
	if _, err := holder.Exec(ctx, `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
	releasedAt := time.Now()
	successBefore := refreshes(t, p, "success")
	e.mustSettle(t, time.Minute)
	t.Logf("settled %v after the lock was released", time.Since(releasedAt).Round(time.Millisecond))
	if got := refreshes(t, p, "success") - successBefore; got < 1 {
		t.Errorf("no successful refresh after the release")
	}
	if st := e.status(t); st.LastResult != "success" || st.Failures != 0 {
		t.Errorf("view_status after release: result %q, consecutive failures %d", st.LastResult, st.Failures)
	}
}

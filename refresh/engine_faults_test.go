package refresh

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/metrics"
)

// Tests of the engine's faults under sustained load, leadership loss and
// reloads, against real PostgreSQL.

// viewDiff counts the rows in which view and its query differ.
func viewDiff(t *testing.T, pool *pgxpool.Pool, v *config.View) int {
	t.Helper()
	var n int
	q := `SELECT count(*) FROM ((TABLE ` + v.Name.Sanitized() + ` EXCEPT ALL (` + v.Query + `))
		UNION ALL ((` + v.Query + `) EXCEPT ALL TABLE ` + v.Name.Sanitized() + `)) d`
	err := pool.QueryRow(context.Background(), q).Scan(&n)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "55000") {
		return -1 // not created or not populated yet
	}
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// logRow is one refresh_log row.
type logRow struct {
	view, by          string
	started, finished time.Time
}

func successLog(t *testing.T, pool *pgxpool.Pool) []logRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT view_name, refreshed_by, started_at, finished_at
		FROM refresherd.refresh_log WHERE result = 'success' ORDER BY started_at`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (logRow, error) {
		var l logRow
		err := r.Scan(&l.view, &l.by, &l.started, &l.finished)
		return l, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDependentChainUnderSustainedWrites: a chain of three views (a <- b <-
// c) under a write every 50 ms for 10 s. Every view refreshes at least once
// per freshness cap (with slack for the views above it and this machine's
// noise) and ends equal to its query. Dependents used to wait while an
// upstream had any change pending, which under a steady stream is always:
// the window is longer than the cap plus slack, so a dependent that waits
// for the writes to stop fails.
func TestDependentChainUnderSustainedWrites(t *testing.T) {
	t.Parallel()
	pool := testPool(t)
	const maxDelay = 2 * time.Second
	mk := func(name, query string, deps ...string) config.View {
		v := testView(t, name, query)
		v.Debounce, v.MaxDelay = 200*time.Millisecond, maxDelay
		for _, d := range deps {
			q, _ := config.ParseQualifiedName(d)
			v.DependsOn = append(v.DependsOn, q)
			v.Sources = nil // dependents learn of changes from their upstream
		}
		return *v
	}
	views := []config.View{
		mk("public.chain_a", sumQuery),
		mk("public.chain_b", `SELECT k, total * 2 AS total, n FROM public.chain_a`, "public.chain_a"),
		mk("public.chain_c", `SELECT k, total + 1 AS total, n FROM public.chain_b`, "public.chain_b"),
	}
	e := newTestEngine(t, pool, views...)
	runEngine(t, e)
	waitFor(t, 20*time.Second, "start-up refreshes", func() bool {
		c := refreshCounts(t, pool)
		return c["public.chain_c"][metrics.TriggerStartup] == 1
	})

	start := time.Now()
	const writing = 10 * time.Second
	tick := time.NewTicker(50 * time.Millisecond)
	for i := 0; time.Since(start) < writing; i++ {
		mustExec(t, pool, `INSERT INTO public.src VALUES ($1, $2)`, i%10, i)
		<-tick.C
	}
	tick.Stop()
	end := time.Now()

	// Each view's refreshes during the writes: at least one per cap.
	slack := maxDelay + 2*time.Second // the chain above it, and noise
	byView := map[string][]time.Time{}
	for _, l := range successLog(t, pool) {
		if l.started.After(start) && l.started.Before(end) {
			byView[l.view] = append(byView[l.view], l.started)
		}
	}
	for _, v := range views {
		ts := byView[v.Name.String()]
		prev := start
		var longest time.Duration
		for _, s := range append(ts, end) {
			longest = max(longest, s.Sub(prev))
			prev = s
		}
		t.Logf("%s: %d refreshes during %v of writes, longest gap %v", v.Name, len(ts), writing, longest.Round(time.Millisecond))
		if longest > maxDelay+slack {
			t.Errorf("%s: longest gap between refreshes %v, want <= %v (max_delay %v + slack)", v.Name, longest, maxDelay+slack, maxDelay)
		}
	}
	for _, v := range views {
		waitFor(t, 15*time.Second, v.Name.String()+" to equal its query", func() bool { return viewDiff(t, pool, &v) == 0 })
	}
}

// TestDeposedLeaderStopsRefreshing: two replicas; the leader's lock
// session is terminated server-side while it refreshes a slow view. The
// deposed term's refresh must not commit after the next term (b's, or a's
// own new one) started refreshing, and no two refreshes of the view overlap
// in time (refresh_log).
func TestDeposedLeaderStopsRefreshing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testPool(t)
	v := testView(t, "public.slow", `SELECT k, sum(v)::bigint AS total, count(*) AS n
		FROM public.src CROSS JOIN (SELECT pg_sleep(1.5)) s GROUP BY k`)
	v.Debounce, v.MaxDelay = 0, time.Second

	// Separate pools, as two processes would have.
	newPool := func() *pgxpool.Pool {
		p, err := pgxpool.NewWithConfig(ctx, pool.Config().Copy())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		return p
	}
	a := buildTestEngine(t, newPool(), testEngineSetup{identity: "a"}, *v)
	runEngine(t, a)
	waitFor(t, 20*time.Second, "a to lead and populate the view", func() bool {
		st := a.Status()
		return st.Leader && st.Views[0].LastResult == string(ResultSuccess)
	})
	b := buildTestEngine(t, newPool(), testEngineSetup{identity: "b"}, *v)
	runEngine(t, b)

	a.RefreshAll()
	waitFor(t, 10*time.Second, "a's manual refresh to run", func() bool { return a.Status().Views[0].InProgress })
	classid, objid := AdvisoryLockIDs(LeaderLockKey("test"))
	var killed bool
	var killAt time.Time
	if err := pool.QueryRow(ctx, `SELECT pg_terminate_backend(pid), clock_timestamp() FROM pg_locks
		WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 AND objsubid = 1 AND granted
		  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
		int64(classid), int64(objid)).Scan(&killed, &killAt); err != nil || !killed {
		t.Fatalf("terminate the leader's lock session: %v, %v", killed, err)
	}
	// The next term may be b's or a's again (a retries at once, b on its
	// poll): either way the deposed term's refresh must not commit in it.
	tookOver := time.Time{}
	waitFor(t, 20*time.Second, "a new term to refresh", func() bool {
		for _, l := range successLog(t, pool) {
			if l.started.After(killAt) {
				tookOver = l.started
				return true
			}
		}
		return false
	})
	waitFor(t, 10*time.Second, "one leader, idle", func() bool {
		sa, sb := a.Status(), b.Status()
		return sa.Leader != sb.Leader && !sa.Views[0].InProgress && !sb.Views[0].InProgress
	})

	log := successLog(t, pool)
	for i, l := range log {
		if l.started.Before(killAt) && l.finished.After(tookOver) {
			t.Errorf("the deposed term committed a refresh at %v, after the new term's refresh started at %v", l.finished, tookOver)
		}
		for _, m := range log[i+1:] {
			if m.started.Before(l.finished) {
				t.Errorf("refreshes overlap: %s [%v, %v] and %s [%v, %v]", l.by, l.started, l.finished, m.by, m.started, m.finished)
			}
		}
	}
}

// TestEndedTermIsNotReactivated: a listener connect that races the end of
// its term must not let workers refresh in it.
func TestEndedTermIsNotReactivated(t *testing.T) {
	e := newTestEngine(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	t1 := &term{ctx: ctx, cancel: cancel, seq: 1}
	e.term = t1
	if !e.activate(t1) {
		t.Fatal("current term not activated")
	}
	e.terms.set(nil)
	cancel()
	if e.activate(t1) {
		t.Fatal("an ended term was activated")
	}
	t2ctx, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	e.term = &term{ctx: t2ctx, cancel: cancel2, seq: 2}
	if e.activate(t1) {
		t.Fatal("an old term was activated over the current one")
	}
	if e.terms.active() {
		t.Fatal("gate open")
	}
}

// TestReloadRaces reloads in a loop (a view changed, a view removed and
// added back) while changes stream in from several goroutines. The engine
// runs but never leads (its leader connection goes nowhere), so no refresh
// consumes the changes: every one of them must be owed by the view's
// current worker at the end. No goroutine outlives the engine, and the
// metric series exist for exactly the configured views.
//
// Not parallel: the leak check counts every goroutine started after it
// began, so another test's engine running alongside would be reported
// (CI failed so). Sequential tests run while parallel ones are paused.
func TestReloadRaces(t *testing.T) {
	pool := testPool(t)
	x := *testView(t, "public.rx", sumQuery)
	y := *testView(t, "public.ry", sumQuery)
	dead := pool.Config().ConnConfig.Copy()
	dead.Host, dead.Port = "127.0.0.1", 1 // nothing listens: never leader
	dead.ConnectTimeout = 100 * time.Millisecond

	before := goleak.IgnoreCurrent()
	e := buildTestEngine(t, pool, testEngineSetup{sessionCfg: dead}, x, y)
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); _ = e.Run(ctx) }()

	src := x.Sources[0]
	const writers, each = 4, 500
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for range each {
				now := time.Now()
				if !e.SourceChanged(config.DetectNotify, src, now, now) {
					t.Error("no view watches the source")
					return
				}
			}
		})
	}
	configs := func(i int) *config.Config {
		xv := x
		xv.Debounce = time.Duration(1+i%2) * time.Second // changed: handover
		views := []config.View{xv}
		if i%3 != 0 {
			views = append(views, y) // removed and added back
		}
		return &config.Config{Leader: config.Leader{Name: "test"}, Shutdown: config.Shutdown{GracePeriod: time.Second},
			MaxConcurrentRefreshes: 1 + i%2, Views: views}
	}
	var last *config.Config
	for i := 0; ; i++ {
		last = configs(i)
		if _, err := e.Reload(last); err != nil {
			t.Fatal(err)
		}
		if i >= 100 && waitGroupDone(&wg) {
			break
		}
	}
	wg.Wait()

	// Every change is owed by x's current worker once handovers are done.
	waitFor(t, 10*time.Second, "all changes owed by the current worker", func() bool {
		w := e.lookup(x.Name)
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.sched.p.count == writers*each
	})
	w := e.lookup(x.Name)
	w.mu.Lock()
	got := w.sched.p.count
	w.mu.Unlock()
	if got != writers*each {
		t.Fatalf("x owes %d changes, want %d", got, writers*each)
	}

	// Series for exactly the configured views (a removed worker's series
	// go when it has ended).
	want := map[string]bool{}
	for _, v := range last.Views {
		want[v.Name.String()] = true
	}
	waitFor(t, 10*time.Second, "series of exactly the configured views", func() bool {
		return maps.Equal(seriesViews(t, e), want)
	})

	stop()
	<-ran
	goleak.VerifyNone(t, before)
}

// waitGroupDone reports whether wg has finished, without blocking.
func waitGroupDone(wg *sync.WaitGroup) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(time.Millisecond):
		return false
	}
}

// seriesViews lists the views that have a refresherd_view_ready series.
func seriesViews(t *testing.T, e *Engine) map[string]bool {
	t.Helper()
	mfs, err := e.m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "refresherd_view_ready" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "view" {
					out[l.GetValue()] = true
				}
			}
		}
	}
	return out
}

// TestAsOfMonotonic: re-reading the status table (after another view's
// swap, or at a new term) never moves a view's as-of back, although the
// read may be older than a refresh that committed meanwhile.
func TestAsOfMonotonic(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testPool(t)
	v := testView(t, "public.mono", sumQuery)
	if _, err := EnsureView(ctx, pool, v); err != nil {
		t.Fatal(err)
	}
	e := newTestEngine(t, pool, *v)
	w := e.lookup(v.Name)
	newer := time.Now().Truncate(time.Microsecond)
	w.setAsOf(newer, newer)
	older := newer.Add(-time.Hour)
	mustExec(t, pool, `UPDATE refresherd.view_status SET data_as_of = $2, last_success_at = $2 WHERE view_name = $1`, v.Name.String(), older)
	if err := e.loadStatus(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.Status().Views[0].DataAsOf; got == nil || !got.Equal(newer) {
		t.Fatalf("data_as_of after reading an older status = %v, want %v", got, newer)
	}
	if got := gaugeValue(t, e, "refresherd_data_as_of_timestamp_seconds"); got != float64(newer.UnixNano())/1e9 {
		t.Fatalf("data_as_of metric = %v, want %v", got, float64(newer.UnixNano())/1e9)
	}
}

// gaugeValue reads the single series of a gauge.
func gaugeValue(t *testing.T, e *Engine, name string) float64 {
	t.Helper()
	mfs, err := e.m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no single series %s", name)
	return 0
}

// TestHealthWithFullPool: max_concurrent_refreshes slow refreshes hold every
// connection of the pool; the database is still reachable and /readyz says
// so, because health checks have a connection of their own.
func TestHealthWithFullPool(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	base := testPool(t)
	const n = 2
	pcfg := base.Config().Copy()
	pcfg.MaxConns = n
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	var views []config.View
	for i := range n {
		v := testView(t, fmt.Sprintf("public.busy%d", i), `SELECT k, count(*) AS n FROM public.src
			CROSS JOIN (SELECT pg_sleep(4)) s GROUP BY k`)
		views = append(views, *v)
	}
	e := buildTestEngine(t, pool, testEngineSetup{maxConcurrent: n, healthEvery: 100 * time.Millisecond}, views...)
	runEngine(t, e)
	waitFor(t, 20*time.Second, "every slow refresh in flight", func() bool {
		st := e.Status()
		return !slices.ContainsFunc(st.Views, func(v ViewStatus) bool { return !v.InProgress })
	})
	checks := e.healthChecks()
	waitFor(t, 3*time.Second, "two health checks during the refreshes", func() bool { return e.healthChecks() >= checks+2 })
	if st := e.Status(); slices.ContainsFunc(st.Views, func(v ViewStatus) bool { return !v.InProgress }) {
		t.Fatal("a refresh ended before the health checks: the test proves nothing; make the views slower")
	}
	if err := e.Ready(); err != nil {
		t.Fatalf("not ready while refreshes fill the pool: %v", err)
	}
}

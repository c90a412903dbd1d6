package refresh

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/metrics"
	dbsql "github.com/refresherd/refresherd/sql"
)

// newTestEngine builds an engine over views with fast timings; pool may be
// nil for tests that never run it.
func newTestEngine(t *testing.T, pool *pgxpool.Pool, views ...config.View) *Engine {
	t.Helper()
	return buildTestEngine(t, pool, testEngineSetup{}, views...)
}

// testEngineSetup varies a test engine; zero values take the defaults.
type testEngineSetup struct {
	identity       string          // "test"
	maxConcurrent  int             // 4
	sessionCfg     *pgx.ConnConfig // the pool's
	healthEvery    time.Duration
	leaderCheckEvr time.Duration // 100ms
}

// buildTestEngine builds an engine with fast timings.
func buildTestEngine(t *testing.T, pool *pgxpool.Pool, s testEngineSetup, views ...config.View) *Engine {
	t.Helper()
	if s.identity == "" {
		s.identity = "test"
	}
	if s.maxConcurrent == 0 {
		s.maxConcurrent = 4
	}
	if s.leaderCheckEvr == 0 {
		s.leaderCheckEvr = 100 * time.Millisecond
	}
	cfg := &config.Config{
		Leader:                 config.Leader{Name: "test"},
		Shutdown:               config.Shutdown{GracePeriod: 5 * time.Second},
		MaxConcurrentRefreshes: s.maxConcurrent,
		Views:                  views,
	}
	if s.sessionCfg == nil && pool != nil {
		s.sessionCfg = pool.Config().ConnConfig.Copy()
	}
	fast := Backoff{Base: 50 * time.Millisecond, Max: 200 * time.Millisecond}
	return New(cfg, pool, s.sessionCfg, metrics.New("test"), zaptest.NewLogger(t).Named(s.identity), Options{
		Identity:         s.identity,
		LeaderRetryEvery: 100 * time.Millisecond,
		LeaderCheckEvery: s.leaderCheckEvr,
		HealthEvery:      s.healthEvery,
		ConnectBackoff:   fast,
		RetryBackoff:     fast,
		SetupBackoff:     fast,
	})
}

// runEngine runs e until the test ends.
func runEngine(t *testing.T, e *Engine) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := e.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// writeAndFlush runs sql in a transaction that makes its backend flush its
// table statistics at commit, so the stats detector sees it at once instead
// of within ~10 s. With rollback set, the transaction is rolled back.
func writeAndFlush(t *testing.T, pool *pgxpool.Pool, sql string, rollback bool) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_stat_force_next_flush()`); err != nil {
		t.Fatal(err)
	}
	if rollback {
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// settled waits until every detector of e has looked past this moment and
// every view is idle with nothing owed: whatever the writes before it cause
// has happened. Notify: a notification naming no watched table, sent now,
// is counted as ignored once the listener got every ring before it. The
// pollers (notify's doorbell poller too): two more successful polls (the
// first may have started before now). Stats changes show in the counters only once the writer flushed
// them, which writeAndFlush forces at commit.
func settled(t *testing.T, e *Engine, pool *pgxpool.Pool) {
	t.Helper()
	ignored := testutil.ToFloat64(e.m.NotificationsIgnored)
	mustExec(t, pool, `SELECT pg_notify($1, '{"schema":"public","table":"settle_marker","ts":0}')`, dbsql.NotifyChannel)
	polls := map[string]int{}
	for _, m := range []string{config.DetectNotify, config.DetectChangelog, config.DetectStats} {
		polls[m] = e.pollCount(m)
	}
	waitFor(t, 10*time.Second, "detectors to see past now and the views to be idle", func() bool {
		if testutil.ToFloat64(e.m.NotificationsIgnored) <= ignored {
			return false
		}
		for m, n := range polls {
			if e.pollCount(m) < n+2 {
				return false
			}
		}
		for _, v := range e.Status().Views {
			if v.InProgress || v.PendingChanges > 0 {
				return false
			}
		}
		return true
	})
}

// refreshCounts returns the successful refreshes per view and trigger.
func refreshCounts(t *testing.T, pool *pgxpool.Pool) map[string]map[string]int {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT view_name, trigger, count(*)::int FROM refresherd.refresh_log
		WHERE result = 'success' GROUP BY 1, 2`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]map[string]int{}
	for rows.Next() {
		var view, trigger string
		var n int
		if err := rows.Scan(&view, &trigger, &n); err != nil {
			t.Fatal(err)
		}
		if out[view] == nil {
			out[view] = map[string]int{}
		}
		out[view][trigger] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// daemonTriggers returns the daemon's triggers on table, sorted.
func daemonTriggers(t *testing.T, pool *pgxpool.Pool, table string) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT tgname::text FROM pg_trigger
		WHERE tgrelid = to_regclass($1) AND NOT tgisinternal AND tgname LIKE 'refresherd%' ORDER BY 1`, table)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// modeView is a view over its own source table, watched with mode.
func modeView(t *testing.T, mode string) config.View {
	t.Helper()
	v := testView(t, "public.sum_"+mode, `SELECT k, sum(v)::bigint AS total, count(*) AS n FROM public.src_`+mode+` GROUP BY k`)
	v.Sources = []config.QualifiedName{{Schema: "public", Name: "src_" + mode}}
	v.ChangeDetection = mode
	v.Debounce, v.MaxDelay = 0, time.Second
	v.PollInterval = 20 * time.Millisecond
	return *v
}

// TestDetectionModes runs the engine with one view per mode and checks, per
// kind of write, which views refresh: changelog and stats once per
// committed write, notify once or twice; none never. A rolled-back write refreshes no changelog
// view, once the notify view and at most once the stats view. It also checks that the
// term start leaves each table exactly the triggers its mode needs, although
// an earlier configuration left other ones.
func TestDetectionModes(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t)
	modes := []string{config.DetectNotify, config.DetectChangelog, config.DetectStats, config.DetectNone}
	var views []config.View
	for _, m := range modes {
		mustExec(t, pool, `CREATE TABLE public.src_`+m+` (k int NOT NULL, v int NOT NULL)`)
		writeAndFlush(t, pool, `INSERT INTO public.src_`+m+` SELECT g % 10, g FROM generate_series(1, 100) g`, false)
		views = append(views, modeView(t, m))
	}
	// An earlier configuration watched every table with notify, and the
	// stats table also with changelog.
	var old []config.View
	for _, v := range views {
		o := v
		o.ChangeDetection = config.DetectNotify
		old = append(old, o)
	}
	o := views[2]
	o.Name.Name += "_old"
	o.ChangeDetection = config.DetectChangelog
	old = append(old, o)
	if err := EnsureTriggers(ctx, pool, old); err != nil {
		t.Fatal(err)
	}

	e := newTestEngine(t, pool, views...)
	runEngine(t, e)
	waitFor(t, 10*time.Second, "start-up refreshes", func() bool {
		c := refreshCounts(t, pool)
		for _, v := range views {
			if c[v.Name.String()][metrics.TriggerStartup] != 1 {
				return false
			}
		}
		return true
	})
	wantTriggers := map[string][]string{
		config.DetectNotify:    {"refresherd_notify"},
		config.DetectChangelog: {"refresherd_changelog"},
		config.DetectStats:     nil,
		config.DetectNone:      nil,
	}
	for _, m := range modes {
		if got := daemonTriggers(t, pool, "public.src_"+m); !slices.Equal(got, wantTriggers[m]) {
			t.Errorf("src_%s triggers %v, want %v", m, got, wantTriggers[m])
		}
	}

	changes := func() map[string]int {
		c := refreshCounts(t, pool)
		out := map[string]int{}
		for _, m := range modes {
			out[m] = c["public.sum_"+m][metrics.TriggerChange]
		}
		return out
	}
	// Each write, to every table; each detecting view refreshes once.
	writes := []struct{ name, sql string }{
		{"insert", `INSERT INTO public.src_%s VALUES (1, 1000)`},
		{"update", `UPDATE public.src_%s SET v = v + 1 WHERE k = 2`},
		{"delete", `DELETE FROM public.src_%s WHERE k = 3`},
		{"truncate", `TRUNCATE public.src_%s`},
	}
	for i, w := range writes {
		for _, m := range modes {
			writeAndFlush(t, pool, fmt.Sprintf(w.sql, m), false)
		}
		waitFor(t, 5*time.Second, w.name+" refreshes", func() bool {
			c := changes()
			return c[config.DetectNotify] > i && c[config.DetectChangelog] > i && c[config.DetectStats] > i
		})
		// Totals: data must match too, not just counts.
		for _, m := range modes[:3] {
			v := views[slices.Index(modes, m)]
			waitFor(t, 5*time.Second, "sum_"+m+" to reflect the "+w.name, func() bool {
				var want int64
				if err := pool.QueryRow(ctx, `SELECT coalesce(sum(v), 0)::bigint FROM public.src_`+m).Scan(&want); err != nil {
					t.Fatal(err)
				}
				return viewTotal(t, pool, &v) == want
			})
		}
	}
	// Once every detector has seen past the writes and the views are idle,
	// any spurious follow-up would have shown: count exactly.
	settled(t, e, pool)
	got := changes()
	// A notify poll that finds the doorbell disarmed while its ringer is
	// still committing (the fallback poll here is every 20 ms) reports the
	// table then, and again after the commit: with no debounce, that is one
	// more refresh for that write.
	notified := got[config.DetectNotify]
	if notified >= 4 && notified <= 8 {
		got[config.DetectNotify] = 4
	}
	want := map[string]int{config.DetectNotify: 4, config.DetectChangelog: 4, config.DetectStats: 4, config.DetectNone: 0}
	if !maps.Equal(got, want) {
		t.Fatalf("change refreshes after 4 writes: %v (notify %d), want %v (notify 4 to 8)", got, notified, want)
	}

	// Rolled back: no trace for changelog; counted work for stats; for
	// notify, the ringer's disarm of the doorbell stays (a sequence is not
	// transactional), which the next poll reports: one spurious refresh.
	for _, m := range modes {
		writeAndFlush(t, pool, fmt.Sprintf(`INSERT INTO public.src_%s VALUES (4, 4)`, m), true)
	}
	settled(t, e, pool)
	got = changes()
	if got[config.DetectNotify] != notified+1 || got[config.DetectChangelog] != 4 || got[config.DetectNone] != 0 || got[config.DetectStats] > 5 {
		t.Errorf("change refreshes after a rolled-back write: %v, want notify %d, changelog 4, stats 4 or 5, none 0", got, notified+1)
	}
	var logged int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM refresherd.changelog`).Scan(&logged); err != nil || logged != 0 {
		t.Errorf("change log holds %d rows (%v), want it drained", logged, err)
	}
	c := refreshCounts(t, pool)
	if n := c["public.sum_none"]; len(n) != 1 {
		t.Errorf("none view refreshes by trigger: %v, want only the start-up one", n)
	}
}

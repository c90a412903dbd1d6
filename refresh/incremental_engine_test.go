package refresh

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/refresh/incremental"
)

// The incremental strategy driven by the engine, against real PostgreSQL:
// concurrent writers, rebuilds, switching strategies under readers.

const chargeSchema = `
CREATE TABLE public.app_charge (
	id serial PRIMARY KEY,
	type varchar(2) NOT NULL,
	amount numeric(8,2) NOT NULL,
	month date NOT NULL,
	user_id int NOT NULL,
	job_id int NULL
);
CREATE INDEX ON public.app_charge (user_id, month);
INSERT INTO public.app_charge (type, amount, month, user_id, job_id)
SELECT CASE WHEN g % 2 = 0 THEN 'hw' ELSE 'sw' END, (g % 97) + 0.25,
	date '2026-01-01' + ((g % 6) * interval '1 month'), g % 40,
	CASE WHEN g % 5 = 0 THEN NULL ELSE g % 7 END
FROM generate_series(1, 5000) g`

const chargeSummaryQuery = `SELECT c.user_id::text || ':' || coalesce(c.job_id::text, '-') || ':' || c.month::text AS id,
	c.user_id, c.job_id, c.month,
	coalesce(sum(c.amount) FILTER (WHERE c.type = 'hw'), 0)::numeric(19,2) AS hardware,
	coalesce(sum(c.amount) FILTER (WHERE c.type = 'sw'), 0)::numeric(19,2) AS software
FROM public.app_charge c
GROUP BY c.user_id, c.job_id, c.month`

// chargeDB is a database with the charge table and a summary view config.
func chargeDB(t *testing.T, strategy string) (*pgxpool.Pool, config.View) {
	t.Helper()
	pool := testPool(t)
	mustExec(t, pool, chargeSchema)
	v := testView(t, "public.app_chargesummary", chargeSummaryQuery)
	v.UniqueKey = []string{"id"}
	v.Sources = []config.QualifiedName{{Schema: "public", Name: "app_charge"}}
	v.Strategy = strategy
	v.Debounce, v.MaxDelay = 50*time.Millisecond, 2*time.Second
	v.PollInterval = 50 * time.Millisecond
	if strategy == config.StrategyIncremental {
		v.ChangeDetection = config.DetectCapture
	}
	return pool, *v
}

// randomTx runs one random writer transaction: inserts with and without a
// job, amount updates, moves to another user, job (to and from NULL) or
// month, deletes, several statements, and sometimes a rollback.
func randomTx(ctx context.Context, pool *pgxpool.Pool, r *rand.Rand) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for range 1 + r.IntN(3) {
			var err error
			id := 1 + r.IntN(5500)
			switch r.IntN(8) {
			case 0, 1:
				job := any(nil)
				if r.IntN(3) > 0 {
					job = r.IntN(7)
				}
				_, err = tx.Exec(ctx, `INSERT INTO public.app_charge (type, amount, month, user_id, job_id)
					VALUES ($1, $2, date '2026-01-01' + make_interval(months => $3), $4, $5)`,
					[]string{"hw", "sw"}[r.IntN(2)], float64(r.IntN(10000))/100, r.IntN(6), r.IntN(40), job)
			case 2:
				_, err = tx.Exec(ctx, `UPDATE public.app_charge SET amount = amount + 1 WHERE id = $1`, id)
			case 3:
				_, err = tx.Exec(ctx, `UPDATE public.app_charge SET user_id = $2 WHERE id = $1`, id, r.IntN(40))
			case 4:
				_, err = tx.Exec(ctx, `UPDATE public.app_charge SET job_id = CASE WHEN job_id IS NULL THEN $2::int ELSE NULL END WHERE id = $1`, id, r.IntN(7))
			case 5:
				_, err = tx.Exec(ctx, `UPDATE public.app_charge SET month = month + interval '1 month' WHERE id = $1`, id)
			case 6:
				_, err = tx.Exec(ctx, `DELETE FROM public.app_charge WHERE id = $1`, id)
			case 7:
				_, err = tx.Exec(ctx, `UPDATE public.app_charge SET amount = amount * 2 WHERE user_id = $1 AND month = date '2026-02-01'`, r.IntN(40))
			}
			if err != nil {
				return err
			}
		}
		if r.IntN(10) == 0 {
			return errRollback
		}
		return nil
	})
}

var errRollback = errors.New("rollback on purpose")

// writeRandomly runs writers concurrent writers of n transactions each.
func writeRandomly(t *testing.T, pool *pgxpool.Pool, writers, n int, seed uint64) {
	t.Helper()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range writers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			for range n {
				if err := randomTx(context.Background(), pool, r); err != nil && !errors.Is(err, errRollback) {
					if failed.Add(1) == 1 {
						t.Errorf("writer: %v", err)
					}
				}
			}
		})
	}
	wg.Wait()
}

// settledIncrementalEngine runs an engine on a charge database with an
// incremental summary and waits until the summary is built and exact.
func settledIncrementalEngine(t *testing.T) (*pgxpool.Pool, config.View, *Engine) {
	t.Helper()
	pool, v := chargeDB(t, config.StrategyIncremental)
	e := newTestEngine(t, pool, v)
	runEngine(t, e)
	incrementalSettled(t, e, pool, &v)
	return pool, v, e
}

// incrementalSettled waits until the summary equals its query and the
// engine owes nothing.
func incrementalSettled(t *testing.T, e *Engine, pool *pgxpool.Pool, v *config.View) {
	t.Helper()
	waitFor(t, 30*time.Second, v.Name.String()+" to equal its query", func() bool {
		st := e.Status().Views[0]
		return !st.InProgress && st.PendingChanges == 0 && st.LastResult == string(ResultSuccess) && viewDiff(t, pool, v) == 0
	})
	res, err := Verify(context.Background(), pool, v, 5)
	if err != nil {
		t.Fatal(err)
	}
	if res.Mismatched != 0 {
		t.Fatalf("verify: %d mismatched rows: %v", res.Mismatched, res.Rows)
	}
}

func rebuilds(e *Engine, view, reason string) float64 {
	return testutil.ToFloat64(e.m.Rebuilds.WithLabelValues(view, reason))
}

// TestIncrementalUnderConcurrentWriters is the property test: several
// writers run random transactions while the engine applies rounds; after
// each settle the summary equals the full aggregate exactly. Then a
// TRUNCATE and a lost key log (its sentinel gone, as after crash recovery)
// each force a rebuild, counted with its reason, and it is exact again.
func TestIncrementalUnderConcurrentWriters(t *testing.T) {
	t.Parallel()
	pool, v, e := settledIncrementalEngine(t)
	if n := rebuilds(e, v.Name.String(), RebuildInitial); n != 1 {
		t.Fatalf("initial rebuilds = %v, want 1", n)
	}
	if st := e.Status().Views[0]; st.Strategy != config.StrategyIncremental || st.ChangeDetection != config.DetectCapture {
		t.Fatalf("status strategy %q detection %q", st.Strategy, st.ChangeDetection)
	}

	for round := range 3 {
		writeRandomly(t, pool, 4, 60, uint64(round))
		incrementalSettled(t, e, pool, &v)
	}

	mustExec(t, pool, `TRUNCATE public.app_charge`)
	mustExec(t, pool, `INSERT INTO public.app_charge (type, amount, month, user_id) VALUES ('hw', 1, '2026-01-01', 1)`)
	waitFor(t, 20*time.Second, "a rebuild after TRUNCATE", func() bool { return rebuilds(e, v.Name.String(), RebuildTruncate) == 1 })
	incrementalSettled(t, e, pool, &v)

	mustExec(t, pool, `DELETE FROM refresherd.incremental_sentinel`)
	writeRandomly(t, pool, 2, 20, 99)
	waitFor(t, 20*time.Second, "a rebuild after the log was lost", func() bool { return rebuilds(e, v.Name.String(), RebuildLogLost) == 1 })
	incrementalSettled(t, e, pool, &v)
}

// TestSwitchStrategyUnderReaders switches a view from full to incremental,
// to another incremental definition and back to full by reloads while
// readers query it: no reader error, no empty result, and the data equals
// the query after each switch (a changed definition is rebuilt at once, not
// at the next change). Only the capture in use stays installed, and the
// app's own index on the summary is carried over each rebuild.
func TestSwitchStrategyUnderReaders(t *testing.T) {
	t.Parallel()
	pool, full := chargeDB(t, config.StrategyFull)
	e := newTestEngine(t, pool, full)
	runEngine(t, e)
	waitFor(t, 20*time.Second, "the materialized view", func() bool { return viewDiff(t, pool, &full) == 0 })
	// The app's own index for its reads: it survives every rebuild.
	mustExec(t, pool, `CREATE INDEX app_chargesummary_month_idx ON public.app_chargesummary (month) WHERE user_id > 0`)

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var reads, empties atomic.Int64
	var readErr atomic.Value
	for range 2 {
		wg.Go(func() {
			for ctx.Err() == nil {
				var n int64
				err := pool.QueryRow(ctx, `SELECT count(*) FROM public.app_chargesummary WHERE month = '2026-02-01'`).Scan(&n)
				switch {
				case ctx.Err() != nil:
					return
				case err != nil:
					readErr.Store(err)
				case n == 0:
					empties.Add(1)
				}
				reads.Add(1)
			}
		})
	}
	inc := full
	inc.Strategy, inc.ChangeDetection = config.StrategyIncremental, config.DetectCapture
	// A changed definition (the same groups): its own capture replaces the
	// first one's.
	inc2 := inc
	inc2.Query = strings.Replace(inc.Query, "GROUP BY c.user_id, c.job_id, c.month", "GROUP BY c.month, c.user_id, c.job_id", 1)
	if inc2.Query == inc.Query {
		t.Fatal("the query did not change")
	}
	var logs []string
	for i, v := range []config.View{inc, inc2, full} {
		cfg := *e.cfg
		cfg.Views = []config.View{v}
		if _, err := e.Reload(&cfg); err != nil {
			t.Fatal(err)
		}
		want := "r"
		if v.Strategy == config.StrategyFull {
			want = "m"
		}
		waitFor(t, 30*time.Second, fmt.Sprintf("switch %d to %s", i, v.Strategy), func() bool {
			var kind string
			if err := pool.QueryRow(ctx, `SELECT coalesce((SELECT relkind::text FROM pg_class WHERE oid = to_regclass('public.app_chargesummary')), '')`).Scan(&kind); err != nil {
				t.Fatal(err)
			}
			return kind == want && e.Status().Views[0].Strategy == v.Strategy
		})
		mustExec(t, pool, `INSERT INTO public.app_charge (type, amount, month, user_id) VALUES ('sw', 3, '2026-02-01', 2)`)
		waitFor(t, 20*time.Second, "the switched view to equal its query", func() bool { return viewDiff(t, pool, &v) == 0 })
		// Only the capture in use is installed: four triggers, one key
		// log (a new one per definition) and the round lock; none at all
		// once the view runs full again.
		wantCap := captureState{triggers: 4, logs: 1, locks: 1}
		if v.Strategy == config.StrategyFull {
			wantCap = captureState{}
		}
		var got captureState
		waitFor(t, 10*time.Second, fmt.Sprintf("capture objects %+v", wantCap), func() bool {
			got = captureObjects(t, pool)
			return got.triggers == wantCap.triggers && got.logs == wantCap.logs && got.locks == wantCap.locks
		})
		logs = append(logs, got.logNames...)
		var def string
		if err := pool.QueryRow(ctx, `SELECT coalesce((SELECT pg_get_indexdef(indexrelid) FROM pg_index
				WHERE indrelid = 'public.app_chargesummary'::regclass AND indexrelid = to_regclass('public.app_chargesummary_month_idx')), '')`).Scan(&def); err != nil {
			t.Fatal(err)
		}
		if want := "CREATE INDEX app_chargesummary_month_idx ON public.app_chargesummary USING btree (month) WHERE (user_id > 0)"; def != want {
			t.Fatalf("after switch %d to %s: the app's index is %q, want %q", i, v.Strategy, def, want)
		}
	}
	if len(logs) != 2 || logs[0] == logs[1] {
		t.Fatalf("key logs of the two incremental definitions: %v, want two different ones", logs)
	}
	stop()
	wg.Wait()
	if err, _ := readErr.Load().(error); err != nil {
		t.Fatalf("a reader failed during the switches: %v", err)
	}
	if empties.Load() > 0 || reads.Load() < 10 {
		t.Fatalf("%d empty reads of %d", empties.Load(), reads.Load())
	}
}

// captureState counts the incremental capture objects in the database.
type captureState struct {
	triggers, logs, locks int
	logNames              []string
}

func captureObjects(t *testing.T, pool *pgxpool.Pool) captureState {
	t.Helper()
	var c captureState
	err := pool.QueryRow(context.Background(), `SELECT
			(SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.app_charge'::regclass AND tgname LIKE 'refresherd\_inc\_%'),
			(SELECT count(*) FROM pg_class WHERE relnamespace = 'refresherd'::regnamespace AND relname LIKE 'refresherd\_inc\_%\_log'),
			(SELECT count(*) FROM pg_class WHERE relnamespace = 'refresherd'::regnamespace AND relname LIKE 'refresherd\_inc\_%\_lock'),
			(SELECT coalesce(array_agg(relname::text), '{}') FROM pg_class WHERE relnamespace = 'refresherd'::regnamespace AND relname LIKE 'refresherd\_inc\_%\_log')`).
		Scan(&c.triggers, &c.logs, &c.locks, &c.logNames)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestConcurrentRoundsRetry: two refreshers (the daemon and a one-shot
// `refresherd refresh`, or two replicas in a hand-over) run rounds of one
// view at the same time while writes go on. The view lock serialises them,
// but the waiting round's snapshot predates the other's commit: it must
// run again instead of failing with a serialization error.
func TestConcurrentRoundsRetry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, v := chargeDB(t, config.StrategyIncremental)
	a, b := NewIncrementalStrategy(pool, "a"), NewIncrementalStrategy(pool, "b")
	for _, s := range []*IncrementalStrategy{a, b} {
		if _, err := s.Setup(ctx, &v, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Refresh(ctx, &v, TriggerStartup, nil); err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		mustExec(t, pool, `UPDATE public.app_charge SET amount = amount + 1 WHERE user_id % 4 = $1`, i%4)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for j, s := range []*IncrementalStrategy{a, b} {
			wg.Go(func() { _, errs[j] = s.Refresh(ctx, &v, TriggerChange, nil) })
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
		}
	}
	if n := viewDiff(t, pool, &v); n != 0 {
		t.Fatalf("summary differs from its query in %d rows", n)
	}
}

// TestConcurrentInitialRounds: two refreshers (a daemon and a one-shot
// `refresherd refresh`) start on a summary that does not exist yet. The
// second waits for the first's rebuild and then sees the table it built:
// it must not build it again ("already exists") from a snapshot taken
// before the first committed.
func TestConcurrentInitialRounds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for i := range 5 {
		pool, v := chargeDB(t, config.StrategyIncremental)
		v.Name.Name = fmt.Sprintf("app_chargesummary_%d", i)
		a, b := NewIncrementalStrategy(pool, "a"), NewIncrementalStrategy(pool, "b")
		for _, s := range []*IncrementalStrategy{a, b} {
			if _, err := s.Setup(ctx, &v, nil); err != nil {
				t.Fatal(err)
			}
		}
		var wg sync.WaitGroup
		outs := make([]Outcome, 2)
		errs := make([]error, 2)
		for j, s := range []*IncrementalStrategy{a, b} {
			wg.Go(func() { outs[j], errs[j] = s.Refresh(ctx, &v, TriggerStartup, nil) })
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("try %d: %v", i, err)
			}
		}
		if (outs[0].Rebuilt == RebuildInitial) == (outs[1].Rebuilt == RebuildInitial) {
			t.Fatalf("try %d: rebuilt %q and %q, want exactly one initial rebuild", i, outs[0].Rebuilt, outs[1].Rebuilt)
		}
		if n := viewDiff(t, pool, &v); n != 0 {
			t.Fatalf("try %d: summary differs from its query in %d rows", i, n)
		}
	}
}

// TestRoundSnapshotAfterLock: a round that waits for the round lock takes
// its snapshot after getting it, so a charge committed while it waited is
// in the summary, and its as-of is not later than its snapshot.
func TestRoundSnapshotAfterLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, v := chargeDB(t, config.StrategyIncremental)
	s := NewIncrementalStrategy(pool, "a")
	if _, err := s.Setup(ctx, &v, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Refresh(ctx, &v, TriggerStartup, nil); err != nil {
		t.Fatal(err)
	}
	// Another refresher holds the round lock.
	release := holdRoundLock(t, pool, v.Name)
	mustExec(t, pool, `INSERT INTO public.app_charge (type, amount, month, user_id) VALUES ('hw', 1, '2026-01-01', 1)`)
	type result struct {
		out Outcome
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := s.Refresh(ctx, &v, TriggerChange, nil)
		done <- result{out, err}
	}()
	time.Sleep(300 * time.Millisecond) // the round waits for the lock
	var committed time.Time
	mustExec(t, pool, `INSERT INTO public.app_charge (type, amount, month, user_id) VALUES ('sw', 1000, '2026-01-01', 2)`)
	if err := pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&committed); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	release()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !r.out.AsOf.After(committed) {
		t.Fatalf("as-of %v not after the charge committed while the round waited (%v)", r.out.AsOf, committed)
	}
	if n := viewDiff(t, pool, &v); n != 0 {
		t.Fatalf("the charge committed while the round waited for its lock is missing: summary differs from its query in %d rows", n)
	}
	if r.out.Backlog == nil || r.out.Backlog.Owed {
		t.Fatalf("backlog after the round = %+v, want read and empty", r.out.Backlog)
	}
}

// TestNoEmptyRoundAfterSlowRound: keys a round drains stay visible to the
// change-log poll until it commits; a poll during a slow round must not
// make the view owe another round (an empty one, with staleness growing
// from the drained keys' time).
func TestNoEmptyRoundAfterSlowRound(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, v, e := settledIncrementalEngine(t)
	rounds := func() int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM refresherd.refresh_log WHERE view_name = $1`, v.Name.String()).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := rounds()

	release := holdRoundLock(t, pool, v.Name)
	mustExec(t, pool, `INSERT INTO public.app_charge (type, amount, month, user_id) VALUES ('hw', 1, '2026-01-01', 1)`)
	waitFor(t, 10*time.Second, "the round to start", func() bool { return e.Status().Views[0].InProgress })
	polled := func(n int) {
		t.Helper()
		from := e.pollCount(config.DetectCapture)
		waitFor(t, 10*time.Second, fmt.Sprintf("%d polls of the key log", n), func() bool { return e.pollCount(config.DetectCapture) >= from+n })
	}
	polled(3) // polls while the round waits see the key
	release()
	incrementalSettled(t, e, pool, &v)
	polled(3) // a spurious round would be due after these
	waitIdle := func() bool { st := e.Status().Views[0]; return !st.InProgress }
	waitFor(t, 10*time.Second, "idle", waitIdle)
	if st := e.Status().Views[0]; st.InProgress || st.PendingChanges != 0 {
		t.Fatalf("after the round: in progress %v, pending changes %d; want idle", st.InProgress, st.PendingChanges)
	}
	if n := rounds() - before; n != 1 {
		t.Fatalf("%d rounds for one charge, want 1", n)
	}
}

// TestRemovedViewLosesCapture: a view removed from the configuration keeps
// its summary but loses its capture (triggers, key log, round lock), which
// would otherwise tax writers and fill a log no round drains.
func TestRemovedViewLosesCapture(t *testing.T) {
	t.Parallel()
	pool, _, e := settledIncrementalEngine(t)
	if c := captureObjects(t, pool); c.triggers != 4 || c.logs != 1 || c.locks != 1 {
		t.Fatalf("capture objects %+v while incremental", c)
	}
	other := testView(t, "public.other_summary", `SELECT user_id, count(*) AS n FROM public.app_charge GROUP BY user_id`)
	other.UniqueKey = []string{"user_id"}
	cfg := *e.cfg
	cfg.Views = []config.View{*other}
	if _, err := e.Reload(&cfg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the removed view's capture to go", func() bool {
		c := captureObjects(t, pool)
		return c.triggers == 0 && c.logs == 0 && c.locks == 0
	})
	var kind string
	if err := pool.QueryRow(context.Background(), `SELECT coalesce((SELECT relkind::text FROM pg_class WHERE oid = to_regclass('public.app_chargesummary')), '')`).Scan(&kind); err != nil {
		t.Fatal(err)
	}
	if kind != "r" {
		t.Fatalf("the removed view's summary: relkind %q, want it kept (r)", kind)
	}
}

// holdRoundLock takes view's round lock in a transaction of its own, as
// another refresher would, until release (or the test's end).
func holdRoundLock(t *testing.T, pool *pgxpool.Pool, view config.QualifiedName) (release func()) {
	t.Helper()
	ctx := context.Background()
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Rollback(ctx) })
	if _, err := holder.Exec(ctx, "LOCK TABLE "+incremental.RoundLock(view).Sanitized()+" IN EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := holder.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

package refresh

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap/zaptest"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/internal/pgcluster"
	"github.com/refresherd/refresherd/internal/pgtest"
)

var srcName = config.QualifiedName{Schema: "public", Name: "src"}

// changelogSetup gives a database whose public.src carries the changelog
// trigger, and a detector on it.
func changelogSetup(t *testing.T) (*pgxpool.Pool, *changelogDetector) {
	t.Helper()
	pool := triggerSetup(t, config.DetectChangelog)
	return pool, newChangelogDetector(pool, zaptest.NewLogger(t))
}

// triggerSetup gives a database whose public.src carries the trigger of mode.
func triggerSetup(t *testing.T, mode string) *pgxpool.Pool {
	t.Helper()
	pool := testPool(t)
	v := testView(t, "public.sums", sumQuery)
	v.ChangeDetection = mode
	if err := EnsureTriggers(context.Background(), pool, []config.View{*v}); err != nil {
		t.Fatal(err)
	}
	return pool
}

// logSetup gives a database whose public.src carries the trigger of mode,
// notify or changelog, and mode's detector on it: the changelog poller's,
// or notify's doorbell poll.
func logSetup(t *testing.T, mode string) (*pgxpool.Pool, detector) {
	t.Helper()
	pool := triggerSetup(t, mode)
	if mode == config.DetectNotify {
		return pool, newDoorbellDetector(pool, zaptest.NewLogger(t))
	}
	return pool, newChangelogDetector(pool, zaptest.NewLogger(t))
}

// forLogModes runs test once per mode whose trigger appends to the change
// log: what it checks of the log holds for both.
func forLogModes(t *testing.T, test func(t *testing.T, mode string)) {
	for _, mode := range logModes {
		t.Run(mode, func(t *testing.T) { test(t, mode) })
	}
}

// pollOnce polls d once as the poller would after a poll at prev.
func pollOnce(t *testing.T, d detector, prev time.Time) (pollResult, []sinkEvent, time.Time) {
	t.Helper()
	sink := &recordingSink{}
	start := time.Now()
	res, err := d.poll(context.Background(), pollRound{start: start, prev: prev, sources: []config.QualifiedName{srcName}}, sink)
	if err != nil {
		t.Fatalf("poll: %v", err)
	}
	return res, sink.take(), start
}

func logRows(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM refresherd.changelog`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestChangelogDetectsWrites(t *testing.T) { forLogModes(t, testLogDetectsWrites) }

func testLogDetectsWrites(t *testing.T, mode string) {
	ctx := context.Background()
	pool, d := logSetup(t, mode)

	// First poll: the sentinel is not there yet (a fresh database looks like
	// one after a crash), nothing is logged.
	res, evs, prev := pollOnce(t, d, time.Time{})
	if !res.lost || len(evs) != 0 {
		t.Fatalf("first poll: %+v, events %v; want lost and no events", res, kindsOf(evs))
	}

	for _, sql := range []string{
		`INSERT INTO public.src VALUES (1, 1)`,
		`UPDATE public.src SET v = v + 1 WHERE k = 2`,
		`DELETE FROM public.src WHERE k = 3`,
		`TRUNCATE public.src`,
	} {
		var txStart time.Time
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if err := tx.QueryRow(ctx, `SELECT now()`).Scan(&txStart); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, sql)
			return err
		}); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		committed := time.Now()
		res, evs, start := pollOnce(t, d, prev)
		prev = start
		if res.lost || len(evs) != 1 {
			t.Fatalf("%s: %+v, events %+v; want one change", sql, res, evs)
		}
		ev := evs[0]
		if ev.kind != "changed" || ev.mode != mode || ev.src != srcName {
			t.Errorf("%s: event %+v", sql, ev)
		}
		// Dated at the transaction's start: never after the commit.
		if !ev.at.Equal(txStart) || ev.at.After(committed) {
			t.Errorf("%s: dated %v, want the transaction start %v (committed by %v)", sql, ev.at, txStart, committed)
		}
		if res, evs, start := pollOnce(t, d, prev); res.lost || len(evs) != 0 {
			t.Errorf("%s: second poll %+v, events %v; want nothing", sql, res, kindsOf(evs))
		} else {
			prev = start
		}
	}
}

func TestChangelogTransactions(t *testing.T) { forLogModes(t, testLogTransactions) }

func testLogTransactions(t *testing.T, mode string) {
	ctx := context.Background()
	pool, d := logSetup(t, mode)
	_, _, prev := pollOnce(t, d, time.Time{})

	exec := func(sqls ...string) {
		t.Helper()
		conn, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Release()
		for _, s := range sqls {
			if _, err := conn.Exec(ctx, s); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
		}
	}
	// rows: what changelog's trigger logs (one per statement that
	// committed; notify's logs nothing); changes: what the poll reports
	// (one per table). notify's differ where a ringer rolled back: the
	// doorbell it disarmed stays disarmed, which the poll reports.
	tests := []struct {
		name                         string
		sqls                         []string
		rows, changes, notifyChanges int
	}{
		{"rolled back", []string{"BEGIN", "INSERT INTO public.src VALUES (1, 1)", "ROLLBACK"}, 0, 0, 1},
		{"several statements, one change", []string{"BEGIN", "INSERT INTO public.src VALUES (1, 1)", "UPDATE public.src SET v = 0 WHERE k = 1", "DELETE FROM public.src WHERE k = 2", "COMMIT"}, 3, 1, 1},
		{"rolled back to a savepoint", []string{"BEGIN", "SAVEPOINT a", "INSERT INTO public.src VALUES (1, 1)", "ROLLBACK TO a", "COMMIT"}, 0, 0, 1},
		{"written again after a savepoint's rollback", []string{"BEGIN", "SAVEPOINT a", "INSERT INTO public.src VALUES (1, 1)", "ROLLBACK TO a", "INSERT INTO public.src VALUES (1, 2)", "COMMIT"}, 1, 1, 1},
		{"statement that changes no row", []string{"UPDATE public.src SET v = 0 WHERE false"}, 1, 1, 1},
		{"nothing written", []string{"SELECT count(*) FROM public.src"}, 0, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exec(tt.sqls...)
			rows, changes := tt.rows, tt.changes
			if mode == config.DetectNotify {
				rows, changes = 0, tt.notifyChanges
			}
			if n := logRows(t, pool); n != rows {
				t.Errorf("log rows = %d, want %d", n, rows)
			}
			_, evs, start := pollOnce(t, d, prev)
			prev = start
			if len(evs) != changes {
				t.Errorf("events %v, want %d change(s)", kindsOf(evs), changes)
			}
			if n := logRows(t, pool); n != 0 {
				t.Errorf("log rows after the poll = %d, want 0", n)
			}
		})
	}

	// notify's poll reports the doorbell disarmed by the running ringer at
	// once, then its commit; changelog's only the commit.
	t.Run("committed after the poll's snapshot: seen by the next poll", func(t *testing.T) {
		tx := openTx(t, pool, `INSERT INTO public.src VALUES (7, 7)`)
		early := 0
		if mode == config.DetectNotify {
			early = 1
		}
		_, evs, start := pollOnce(t, d, prev)
		prev = start
		if len(evs) != early {
			t.Fatalf("before the commit: events %v, want %d", kindsOf(evs), early)
		}
		_, evs, start = pollOnce(t, d, prev)
		prev = start
		if len(evs) != 0 {
			t.Fatalf("still before the commit: events %v, want none", kindsOf(evs))
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		_, evs, start = pollOnce(t, d, prev)
		prev = start
		if len(evs) != 1 {
			t.Fatalf("events after commit %v, want one change", kindsOf(evs))
		}
		if _, evs, _ := pollOnce(t, d, prev); len(evs) != 0 {
			t.Fatalf("events after that %v, want none", kindsOf(evs))
		}
	})
}

// TestChangelogWriterNeedsNoPrivileges: the app's role writes through the
// trigger without any grant on the refresherd schema; with notify's, it
// also reads and disarms the doorbell and rings it.
func TestChangelogWriterNeedsNoPrivileges(t *testing.T) {
	forLogModes(t, testLogWriterNeedsNoPrivileges)
}

func testLogWriterNeedsNoPrivileges(t *testing.T, mode string) {
	ctx := context.Background()
	pool, d := logSetup(t, mode)
	b := listenBell(t, pool)
	_, _, prev := pollOnce(t, d, time.Time{}) // arms the doorbell
	rb := make([]byte, 4)
	if _, err := rand.Read(rb); err != nil {
		t.Fatal(err)
	}
	role := pgx.Identifier{"rd_app_" + hex.EncodeToString(rb)}.Sanitize()
	mustExec(t, pool, `CREATE ROLE `+role)
	t.Cleanup(func() {
		mustExec(t, pool, `REVOKE ALL ON public.src FROM `+role)
		mustExec(t, pool, `DROP ROLE `+role)
	})
	mustExec(t, pool, `GRANT SELECT, INSERT, UPDATE, DELETE ON public.src TO `+role)
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL ROLE `+role); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO public.src VALUES (1, 1)`)
		return err
	}); err != nil {
		t.Fatalf("write as an unprivileged role: %v", err)
	}
	if got, want := b.rings(), ringsFor(mode); got != want {
		t.Errorf("doorbell rang %d times, want %d", got, want)
	}
	if _, evs, _ := pollOnce(t, d, prev); len(evs) != 1 {
		t.Fatalf("events %v, want one change", kindsOf(evs))
	}
}

// ringsFor is how often a write rings an armed doorbell with mode's trigger.
func ringsFor(mode string) int {
	if mode == config.DetectNotify {
		return 1
	}
	return 0
}

// TestChangelogIgnoresWriterSearchPath: the trigger functions have no SET
// search_path (see sql/schema.sql), so they must resolve nothing through the
// writer's: a writer whose search_path is empty, or puts a schema with look-
// alike objects first, still logs into refresherd.changelog and nowhere
// else, and notify's rings the doorbell once, through pg_catalog's
// functions, not look-alikes that would record the call (or, for the
// doorbell's read, say "armed" every time).
func TestChangelogIgnoresWriterSearchPath(t *testing.T) {
	forLogModes(t, testLogIgnoresWriterSearchPath)
}

func testLogIgnoresWriterSearchPath(t *testing.T, mode string) {
	ctx := context.Background()
	pool, d := logSetup(t, mode)
	b := listenBell(t, pool)
	_, _, prev := pollOnce(t, d, time.Time{})
	mustExec(t, pool, `CREATE SCHEMA IF NOT EXISTS lookalike`)
	t.Cleanup(func() { mustExec(t, pool, `DROP SCHEMA lookalike CASCADE`) })
	mustExec(t, pool, `CREATE TABLE lookalike.changelog (source_schema text, source_table text, changed_at timestamptz)`)
	mustExec(t, pool, `CREATE FUNCTION lookalike.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'epoch'::timestamptz $$`)
	mustExec(t, pool, `CREATE SEQUENCE lookalike.doorbell`)
	mustExec(t, pool, `CREATE TABLE lookalike.calls (fn text)`)
	for _, fn := range []struct{ name, args, ret string }{
		{"pg_sequence_last_value", "regclass", "bigint"}, // NULL: armed
		{"nextval", "regclass", "bigint"},
		{"setval", "regclass, bigint", "bigint"},
		{"to_regclass", "text", "regclass"},
		{"date_part", "text, timestamptz", "float8"},
		{"float8mul", "float8, float8", "float8"},
		{"pg_notify", "text, text", "void"},
	} {
		ret := "RETURN NULL;"
		if fn.ret == "void" {
			ret = "RETURN;"
		}
		mustExec(t, pool, `CREATE FUNCTION lookalike.`+fn.name+`(`+fn.args+`) RETURNS `+fn.ret+` LANGUAGE plpgsql AS $$
			BEGIN INSERT INTO lookalike.calls VALUES ('`+fn.name+`'); `+ret+` END $$`)
	}

	for _, path := range []string{`''`, `lookalike, pg_catalog, public`, `pg_temp, lookalike, public`} {
		t.Run(path, func(t *testing.T) {
			if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `SET LOCAL search_path = `+path); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, `INSERT INTO public.src VALUES (1, 1)`)
				return err
			}); err != nil {
				t.Fatalf("write with search_path %s: %v", path, err)
			}
			var n int
			var recent bool
			if err := pool.QueryRow(ctx, `SELECT count(*), coalesce(bool_and(changed_at > now() - interval '1 hour'), true) FROM refresherd.changelog`).Scan(&n, &recent); err != nil {
				t.Fatal(err)
			}
			if want := 1 - ringsFor(mode); n != want || !recent { // notify's logs nothing
				t.Errorf("refresherd.changelog: %d rows (want %d), all recent: %v", n, want, recent)
			}
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM lookalike.changelog`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Errorf("lookalike.changelog: %d rows, want 0", n)
			}
			var calls []string
			if err := pool.QueryRow(ctx, `SELECT coalesce(array_agg(fn), '{}') FROM lookalike.calls`).Scan(&calls); err != nil {
				t.Fatal(err)
			}
			if len(calls) != 0 {
				t.Errorf("look-alike functions called: %v", calls)
			}
			if got, want := b.rings(), ringsFor(mode); got != want {
				t.Errorf("doorbell rang %d times, want %d", got, want)
			}
			var evs []sinkEvent
			_, evs, prev = pollOnce(t, d, prev)
			if len(evs) != 1 || time.Since(evs[0].at) > time.Hour {
				t.Errorf("events %+v, want one recent change", evs)
			}
		})
	}
}

// TestChangelogVacuum: the detector vacuums what it drained.
func TestChangelogVacuum(t *testing.T) {
	ctx := context.Background()
	pool, d := changelogSetup(t)
	for range 20 {
		mustExec(t, pool, `INSERT INTO public.src VALUES (1, 1)`)
	}
	d.lastVacuum = time.Now() // not due yet
	_, evs, prev := pollOnce(t, d, time.Time{})
	if len(evs) != 1 || d.drainedSinceVacuum != 20 {
		t.Fatalf("events %v, drained %d; want one change of 20 rows", kindsOf(evs), d.drainedSinceVacuum)
	}
	vacuums := func() (n, dead int64) {
		if err := pool.QueryRow(ctx, `SELECT vacuum_count, n_dead_tup FROM pg_stat_user_tables WHERE relid = 'refresherd.changelog'::regclass`).Scan(&n, &dead); err != nil {
			t.Fatal(err)
		}
		return n, dead
	}
	if n, _ := vacuums(); n != 0 {
		t.Fatalf("vacuumed %d times before it was due", n)
	}
	d.lastVacuum = time.Now().Add(-changelogVacuumEvery)
	mustExec(t, pool, `INSERT INTO public.src VALUES (1, 1)`)
	pollOnce(t, d, prev)
	if n, dead := vacuums(); n != 1 || dead != 0 {
		t.Fatalf("vacuum_count %d, n_dead_tup %d; want 1 and 0", n, dead)
	}
	if d.drainedSinceVacuum != 0 || d.vacuumFailing {
		t.Errorf("after vacuum: drained %d, failing %v", d.drainedSinceVacuum, d.vacuumFailing)
	}
}

// TestChangelogCrash: crash recovery empties the unlogged log, losing a
// committed change; the detector notices through its sentinel.
func TestChangelogCrash(t *testing.T) {
	ctx := context.Background()
	c := pgtest.NewCluster(t, pgcluster.Options{})
	if err := c.CreateDatabase(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	open := func() *pgxpool.Pool {
		pool, err := pgxpool.New(ctx, c.URL("app"))
		if err != nil {
			t.Fatal(err)
		}
		return pool
	}
	pool := open()
	defer func() { pool.Close() }()
	if err := EnsureSchema(ctx, pool); err != nil {
		t.Fatal(err)
	}
	mustExec(t, pool, `CREATE TABLE public.src (k int NOT NULL, v int NOT NULL)`)
	v := testView(t, "public.sums", sumQuery)
	v.ChangeDetection = config.DetectChangelog
	if err := EnsureTriggers(ctx, pool, []config.View{*v}); err != nil {
		t.Fatal(err)
	}
	d := newChangelogDetector(pool, zaptest.NewLogger(t))
	_, _, prev := pollOnce(t, d, time.Time{})
	if res, _, start := pollOnce(t, d, prev); res.lost {
		t.Fatal("sentinel lost without a crash")
	} else {
		prev = start
	}

	mustExec(t, pool, `INSERT INTO public.src VALUES (1, 1)`)
	if n := logRows(t, pool); n != 1 {
		t.Fatalf("log rows = %d, want 1", n)
	}
	pool.Close()
	if err := c.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	if err := c.StartAgain(ctx); err != nil {
		t.Fatal(err)
	}
	pool = open()
	d.pool = pool
	res, evs, start := pollOnce(t, d, prev)
	if !res.lost || len(evs) != 0 {
		t.Fatalf("after the crash: %+v, events %v; want lost (the committed change's row is gone)", res, kindsOf(evs))
	}
	if res, _, _ := pollOnce(t, d, start); res.lost {
		t.Error("sentinel not restored after the crash")
	}
}

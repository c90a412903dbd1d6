package refresh

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
)

// statsSetup gives a database whose public.src's counters are flushed, and a
// stats detector with its baseline taken.
func statsSetup(t *testing.T) (*pgxpool.Pool, *statsDetector, time.Time) {
	t.Helper()
	pool := testPool(t)
	// testPool's insert may still sit in its backend's pending counters.
	writeAndFlush(t, pool, `SELECT 1`, false)
	d := newStatsDetector(pool)
	res, evs, prev := pollOnce(t, d, time.Time{})
	if !res.lost || len(evs) != 0 {
		t.Fatalf("baseline poll: %+v, events %v; want lost (a baseline hides the past) and no events", res, kindsOf(evs))
	}
	return pool, d, prev
}

// expectChange polls once and checks for exactly one change of public.src,
// dated the flush delay before the previous poll.
func expectChange(t *testing.T, d *statsDetector, prev time.Time, what string) time.Time {
	t.Helper()
	res, evs, start := pollOnce(t, d, prev)
	if res.lost || len(evs) != 1 {
		t.Fatalf("%s: %+v, events %+v; want one change", what, res, evs)
	}
	ev := evs[0]
	if ev.kind != "changed" || ev.mode != config.DetectStats || ev.src != srcName {
		t.Errorf("%s: event %+v", what, ev)
	}
	if want := prev.Add(-statsFlushDelay); !ev.at.Equal(want) {
		t.Errorf("%s: dated %v, want the previous poll minus the flush delay, %v", what, ev.at, want)
	}
	return start
}

// expectNothing polls d once and checks that it reports nothing.
func expectNothing(t *testing.T, d detector, prev time.Time, what string) time.Time {
	t.Helper()
	res, evs, start := pollOnce(t, d, prev)
	if res.lost || len(evs) != 0 {
		t.Fatalf("%s: %+v, events %v; want nothing", what, res, kindsOf(evs))
	}
	return start
}

func TestStatsDetectsWrites(t *testing.T) {
	pool, d, prev := statsSetup(t)
	prev = expectNothing(t, d, prev, "no write")
	for _, w := range []struct{ name, sql string }{
		{"insert", `INSERT INTO public.src VALUES (1, 1)`},
		{"update", `UPDATE public.src SET v = v + 1 WHERE k = 2`},
		{"delete", `DELETE FROM public.src WHERE k = 3`},
		{"truncate", `TRUNCATE public.src`},
	} {
		writeAndFlush(t, pool, w.sql, false)
		prev = expectChange(t, d, prev, w.name)
		prev = expectNothing(t, d, prev, "after "+w.name)
	}
	// A statement that changes nothing moves no counter.
	writeAndFlush(t, pool, `UPDATE public.src SET v = 0 WHERE false`, false)
	prev = expectNothing(t, d, prev, "update of no row")
	// Rolled-back work is counted: at most (here exactly) one change.
	writeAndFlush(t, pool, `INSERT INTO public.src VALUES (1, 1)`, true)
	prev = expectChange(t, d, prev, "rolled-back insert")
	expectNothing(t, d, prev, "after the rolled-back insert")
}

// TestStatsTruncateNeedsNoFlush: TRUNCATE moves no n_tup_* counter in
// PostgreSQL 15, but the new relfilenode shows at commit, with no flush.
func TestStatsTruncateNeedsNoFlush(t *testing.T) {
	pool, d, prev := statsSetup(t)
	// The same backend flushes at most once a second; flush now so that
	// its TRUNCATE's statistics are surely still pending below.
	conn, err := pool.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, sql := range []string{`BEGIN`, `SELECT pg_stat_force_next_flush()`, `COMMIT`, `TRUNCATE public.src`} {
		if _, err := conn.Exec(context.Background(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	expectChange(t, d, prev, "truncate")
}

func TestStatsReset(t *testing.T) {
	ctx := context.Background()
	pool, d, _ := statsSetup(t)
	mustExec(t, pool, `CREATE TABLE public.one (k int)`)
	one := config.QualifiedName{Schema: "public", Name: "one"}
	sources := []config.QualifiedName{one}
	poll := func(prev time.Time) ([]sinkEvent, time.Time) {
		t.Helper()
		sink := &recordingSink{}
		start := time.Now()
		if _, err := d.poll(ctx, pollRound{start: start, prev: prev, sources: sources}, sink); err != nil {
			t.Fatal(err)
		}
		return sink.take(), start
	}
	d.reset()
	writeAndFlush(t, pool, `INSERT INTO public.one VALUES (1)`, false)
	_, prev := poll(time.Time{}) // baseline: n_tup_ins = 1

	// Reset, then one insert: n_tup_ins is 1 again, as at the last poll.
	// Only the reset time tells the change.
	mustExec(t, pool, `SELECT pg_stat_reset()`)
	writeAndFlush(t, pool, `INSERT INTO public.one VALUES (2)`, false)
	var ins int64
	if err := pool.QueryRow(ctx, `SELECT n_tup_ins FROM pg_stat_user_tables WHERE relid = 'public.one'::regclass`).Scan(&ins); err != nil || ins != 1 {
		t.Fatalf("n_tup_ins = %d (%v); the test needs the counter back at 1", ins, err)
	}
	evs, prev := poll(prev)
	if len(evs) != 1 || evs[0].src != one {
		t.Fatalf("after pg_stat_reset and an insert: events %+v, want one change of public.one", evs)
	}
	evs, prev = poll(prev)
	if len(evs) != 0 {
		t.Fatalf("events %v after the reset was seen, want none", kindsOf(evs))
	}

	// A single table's reset: its counters drop.
	mustExec(t, pool, `SELECT pg_stat_reset_single_table_counters('public.one'::regclass)`)
	evs, prev = poll(prev)
	if len(evs) != 1 || evs[0].src != one {
		t.Fatalf("after pg_stat_reset_single_table_counters: events %+v, want one change", evs)
	}
	if evs, _ = poll(prev); len(evs) != 0 {
		t.Fatalf("events %v after the single reset was seen, want none", kindsOf(evs))
	}
}

func TestStatsPartitionedSource(t *testing.T) {
	ctx := context.Background()
	pool, d, _ := statsSetup(t)
	mustExec(t, pool, `CREATE TABLE public.parted (k int NOT NULL, v int) PARTITION BY LIST (k)`)
	mustExec(t, pool, `CREATE TABLE public.parted_1 PARTITION OF public.parted FOR VALUES IN (1)`)
	mustExec(t, pool, `CREATE TABLE public.parted_2 PARTITION OF public.parted FOR VALUES IN (2)`)
	parted := config.QualifiedName{Schema: "public", Name: "parted"}
	poll := func(prev time.Time) ([]sinkEvent, time.Time) {
		t.Helper()
		sink := &recordingSink{}
		start := time.Now()
		if _, err := d.poll(ctx, pollRound{start: start, prev: prev, sources: []config.QualifiedName{parted}}, sink); err != nil {
			t.Fatal(err)
		}
		return sink.take(), start
	}
	d.reset()
	_, prev := poll(time.Time{})
	steps := []struct {
		name, sql string
		change    bool
	}{
		{"insert through the parent", `INSERT INTO public.parted VALUES (1, 1)`, true},
		{"insert into a partition", `INSERT INTO public.parted_2 VALUES (2, 2)`, true},
		{"nothing", `SELECT 1`, false},
		{"detach a partition", `ALTER TABLE public.parted DETACH PARTITION public.parted_2`, true},
		{"write to the detached table", `INSERT INTO public.parted_2 VALUES (2, 3)`, false},
		{"truncate a partition", `TRUNCATE public.parted_1`, true},
	}
	for _, s := range steps {
		writeAndFlush(t, pool, s.sql, false)
		var evs []sinkEvent
		evs, prev = poll(prev)
		if got := len(evs) == 1; got != s.change || len(evs) > 1 {
			t.Errorf("%s: events %v, want change %v", s.name, kindsOf(evs), s.change)
		}
	}
}

// TestStatsSourceGone: a dropped source counts as a change once, and the
// poll keeps working.
func TestStatsSourceGone(t *testing.T) {
	pool, d, prev := statsSetup(t)
	mustExec(t, pool, `DROP TABLE public.src`)
	prev = expectChange(t, d, prev, "drop")
	expectNothing(t, d, prev, "after the drop")
}

func TestStatsTrackCountsOff(t *testing.T) {
	ctx := context.Background()
	pool, d, prev := statsSetup(t)
	var db string
	if err := pool.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		t.Fatal(err)
	}
	mustExec(t, pool, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` SET track_counts = off`)
	pool.Reset() // new connections pick the setting up
	sink := &recordingSink{}
	_, err := d.poll(ctx, pollRound{start: time.Now(), prev: prev, sources: []config.QualifiedName{srcName}}, sink)
	if err == nil || !strings.Contains(err.Error(), "track_counts is off") {
		t.Fatalf("poll with track_counts off: %v; want an error, so that the views show as blind", err)
	}
}

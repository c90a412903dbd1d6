package refresh

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
	dbsql "github.com/refresherd/refresherd/sql"
)

// doorbellPayload is what notify's trigger sends when it rings.
var doorbellPayload = fmt.Sprintf(`{"op":%q}`, dbsql.DoorbellOp)

// bell is the test's own LISTEN connection on the daemon's channel: it
// counts the doorbell's rings.
type bell struct {
	t    *testing.T
	pool *pgxpool.Pool
	conn *pgx.Conn
	seq  int
}

func listenBell(t *testing.T, pool *pgxpool.Pool) *bell {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{dbsql.NotifyChannel}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	return &bell{t: t, pool: pool, conn: conn}
}

// rings returns how often the doorbell rang since the last call (or the
// LISTEN). It sends a marker and reads up to it: notifications of different
// transactions arrive in commit order, so every ring committed before the
// call is counted without waiting for one that may not come.
func (b *bell) rings() int {
	b.t.Helper()
	b.seq++
	marker := fmt.Sprintf(`{"op":"test-marker","seq":%d}`, b.seq)
	mustExec(b.t, b.pool, `SELECT pg_notify($1, $2)`, dbsql.NotifyChannel, marker)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := 0
	for {
		nt, err := b.conn.WaitForNotification(ctx)
		if err != nil {
			b.t.Fatalf("read the doorbell's rings: %v", err)
		}
		switch nt.Payload {
		case marker:
			return n
		case doorbellPayload:
			n++
		}
	}
}

// armed reports whether table's doorbell is armed.
func armed(t *testing.T, pool *pgxpool.Pool, table string) bool {
	t.Helper()
	var a bool
	bell := doorbellName(config.QualifiedName{Schema: "public", Name: table}).Sanitize()
	if err := pool.QueryRow(context.Background(), `SELECT pg_sequence_last_value($1::regclass) IS NULL`, bell).Scan(&a); err != nil {
		t.Fatal(err)
	}
	return a
}

// insert writes one row to table in an autocommit statement and returns the
// transaction's start, which a ringer dates the write at.
func insert(ctx context.Context, pool *pgxpool.Pool, table string) (time.Time, error) {
	var start time.Time
	err := pool.QueryRow(ctx, `INSERT INTO `+pgx.Identifier{"public", table}.Sanitize()+` VALUES (1, 1) RETURNING now()`).Scan(&start)
	if err != nil {
		return start, fmt.Errorf("insert into %s: %w", table, err)
	}
	return start, nil
}

func mustInsert(t *testing.T, pool *pgxpool.Pool, table string) time.Time {
	t.Helper()
	start, err := insert(context.Background(), pool, table)
	if err != nil {
		t.Fatal(err)
	}
	return start
}

// openTx begins a transaction on pool and runs sql in it, leaving it open
// (a writer or lock holder still running); it is rolled back at the end of
// the test unless ended before.
func openTx(t *testing.T, pool *pgxpool.Pool, sql string) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	if _, err := tx.Exec(ctx, sql); err != nil {
		t.Fatal(err)
	}
	return tx
}

// expectOneChange polls d once and checks that it reports exactly one change
// of public.src, dated at; it returns the poll's start.
func expectOneChange(t *testing.T, d detector, prev time.Time, at time.Time, what string) time.Time {
	t.Helper()
	_, evs, start := pollOnce(t, d, prev)
	if len(evs) != 1 || evs[0].kind != "changed" || evs[0].src != srcName || !evs[0].at.Equal(at) {
		t.Fatalf("%s: events %+v, want one change of public.src dated %v", what, evs, at)
	}
	return start
}

// TestDoorbell follows notify's trigger and its poll step by step, with
// the races of the doorbell played in a fixed order: only a writer that
// finds it armed rings; a poll reports a doorbell it finds disarmed, dated
// at the ringer's transaction start, and re-arms it; a writer that found
// it disarmed is reported by the next poll if it committed before it, and
// once it commits otherwise; a ringer that rolls back costs one spurious
// change. Nothing goes through the change log.
func TestDoorbell(t *testing.T) {
	ctx := context.Background()
	pool, d := logSetup(t, config.DetectNotify)
	b := listenBell(t, pool)
	if !armed(t, pool, "src") {
		t.Fatal("a new doorbell is not armed")
	}
	res, evs, prev := pollOnce(t, d, time.Time{})
	if !res.lost || len(evs) != 0 {
		t.Fatalf("first poll: %+v, events %v; want lost (the watch starts) and no events", res, kindsOf(evs))
	}

	// Armed: the first writer rings and disarms it; the next ones do not.
	first := mustInsert(t, pool, "src")
	if got := b.rings(); got != 1 || armed(t, pool, "src") {
		t.Fatalf("first write: %d rings, armed %v; want 1 ring and the doorbell disarmed", got, armed(t, pool, "src"))
	}
	mustInsert(t, pool, "src")
	mustExec(t, pool, `UPDATE public.src SET v = v + 1 WHERE k = 1`)
	if got := b.rings(); got != 0 {
		t.Fatalf("writes to a disarmed doorbell: %d rings, want 0", got)
	}
	prev = expectOneChange(t, d, prev, first, "poll after a ring")
	if got := b.rings(); got != 0 || !armed(t, pool, "src") || logRows(t, pool) != 0 {
		t.Fatalf("after the poll: %d rings, armed %v, %d log rows; want 0, armed, 0", got, armed(t, pool, "src"), logRows(t, pool))
	}
	prev = expectNothing(t, d, prev, "poll with no write")

	// A transaction that found the doorbell disarmed and is still running
	// at the poll: it did not ring, and the poll cannot see its write; it
	// is watched, and reported by the first poll after its commit, dated at
	// the start of the poll that first saw it running.
	ringer := mustInsert(t, pool, "src")
	tx := openTx(t, pool, `INSERT INTO public.src VALUES (2, 2)`)
	if got := b.rings(); got != 1 {
		t.Fatalf("%d rings, want 1", got)
	}
	sawRunning := expectOneChange(t, d, prev, ringer, "poll while a writer is in flight")
	prev = expectNothing(t, d, sawRunning, "poll while the writer still runs")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := b.rings(); got != 0 || !armed(t, pool, "src") {
		t.Fatalf("in-flight writer committed: %d rings (want 0), armed %v (want true)", got, armed(t, pool, "src"))
	}
	prev = expectOneChange(t, d, prev, sawRunning, "poll after the in-flight writer's commit")
	prev = expectNothing(t, d, prev, "poll after that")

	// The same, rolled back: nothing to report.
	mustInsert(t, pool, "src")
	tx = openTx(t, pool, `INSERT INTO public.src VALUES (2, 2)`)
	_, _, prev = pollOnce(t, d, prev)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	prev = expectNothing(t, d, prev, "poll after the in-flight writer's rollback")
	if got := b.rings(); got != 1 {
		t.Fatalf("%d rings, want 1", got)
	}

	// The ringer rolls back: its NOTIFY is never sent, but its disarm stays
	// (a sequence is not transactional). The next writer does not ring; the
	// fallback poll reports the table, dated at the rolled-back ringer's
	// start, and re-arms; the writer after that rings again.
	var rolledBack time.Time
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, `INSERT INTO public.src VALUES (3, 3) RETURNING now()`).Scan(&rolledBack); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := b.rings(); got != 0 || armed(t, pool, "src") {
		t.Fatalf("rolled-back ringer: %d rings, armed %v; want 0, disarmed", got, armed(t, pool, "src"))
	}
	mustInsert(t, pool, "src")
	if got := b.rings(); got != 0 {
		t.Fatalf("write after a rolled-back ring: %d rings, want 0 (disarmed)", got)
	}
	prev = expectOneChange(t, d, prev, rolledBack, "fallback poll after a rolled-back ring")
	mustInsert(t, pool, "src")
	if got := b.rings(); got != 1 {
		t.Fatalf("write after the fallback poll: %d rings, want 1", got)
	}
	_, _, prev = pollOnce(t, d, prev)

	// Several statements in one transaction: one ring, one change.
	var start time.Time
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT now()`).Scan(&start); err != nil {
			return err
		}
		for _, sql := range []string{`INSERT INTO public.src VALUES (4, 4)`, `UPDATE public.src SET v = 0 WHERE k = 4`, `DELETE FROM public.src WHERE k = 4`} {
			if _, err := tx.Exec(ctx, sql); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := b.rings(); got != 1 {
		t.Fatalf("transaction of three statements: %d rings, want 1", got)
	}
	prev = expectOneChange(t, d, prev, start, "transaction of three statements")

	// A transaction of another database is never watched: transaction IDs
	// are the cluster's.
	other := pool.Config().ConnConfig.Copy()
	other.Database = "postgres"
	oconn, err := pgx.ConnectConfig(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = oconn.Close(ctx) }()
	otx, err := oconn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := otx.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	at := mustInsert(t, pool, "src")
	prev = expectOneChange(t, d, prev, at, "ring while another database's transaction runs")
	if err := otx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	prev = expectNothing(t, d, prev, "poll after the other database's commit")

	// The trigger's condition depends on the doorbell: it cannot be
	// dropped alone. Dropped with the trigger, the next poll reports the
	// table (anything may have been written meanwhile) and recreates the
	// doorbell, armed; the poll after that reports nothing.
	if _, err := pool.Exec(ctx, `DROP SEQUENCE `+doorbellName(srcName).Sanitize()); err == nil {
		t.Fatal("dropped the doorbell under its trigger")
	}
	mustExec(t, pool, `DROP SEQUENCE `+doorbellName(srcName).Sanitize()+` CASCADE`)
	_, evs, prev = pollOnce(t, d, prev)
	if len(evs) != 1 || evs[0].src != srcName || !armed(t, pool, "src") {
		t.Fatalf("poll with no doorbell: events %+v, want one change of public.src, and the doorbell back, armed", evs)
	}
	expectNothing(t, d, prev, "poll after the doorbell was recreated")
}

// TestDoorbellWatchStartsBlind: a writer found the doorbell disarmed before
// this detector's watch began, and an earlier leader re-armed it since
// (its watch gone with it). The first poll finds the doorbell armed, so it
// says the watch starts blind (lost: the poller catches up) and watches
// every running transaction: the writer's commit is reported.
func TestDoorbellWatchStartsBlind(t *testing.T) {
	ctx := context.Background()
	pool, d := logSetup(t, config.DetectNotify)
	bell := doorbellName(srcName).Sanitize()
	mustExec(t, pool, `SELECT setval($1::regclass, 1)`, bell) // disarmed
	tx := openTx(t, pool, `INSERT INTO public.src VALUES (1, 1)`)
	mustExec(t, pool, `SELECT setval($1::regclass, 1, false)`, bell) // the earlier leader's arm
	res, evs, start := pollOnce(t, d, time.Time{})
	if !res.lost || len(evs) != 0 {
		t.Fatalf("first poll: %+v, events %v; want lost and no events", res, kindsOf(evs))
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	expectOneChange(t, d, start, start, "the writer's commit")
}

// TestDoorbellPollFailsAfterItsArm: a poll whose arm ran but whose batch
// then failed (here its change-log drain waits on a row lock past the
// poll's deadline; a sequence is not transactional, so the arm stays)
// loses what it found: the ringer, and the writer that found the doorbell
// disarmed and still runs. The ringer is the poller's to catch up (it
// declares the views blind from the last good poll). The writer is this
// detector's: the next poll, which finds the doorbell armed, still watches
// every writer of the table, so the writer's commit is reported.
func TestDoorbellPollFailsAfterItsArm(t *testing.T) {
	ctx := context.Background()
	pool, d := logSetup(t, config.DetectNotify)
	_, _, prev := pollOnce(t, d, time.Time{})
	mustInsert(t, pool, "src") // rings, disarms
	writer := openTx(t, pool, `INSERT INTO public.src VALUES (1, 1)`)

	// A log row of a table no view reads, locked: the drain's DELETE
	// waits for it when it runs, after the arm (a table lock would stop a
	// new connection earlier, when it prepares the DELETE).
	mustExec(t, pool, `INSERT INTO refresherd.changelog (source_schema, source_table) VALUES ('public', 'other')`)
	locker := openTx(t, pool, `SELECT FROM refresherd.changelog FOR UPDATE`)
	pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	sink := &recordingSink{}
	_, err := d.poll(pctx, pollRound{start: time.Now(), prev: prev, sources: []config.QualifiedName{srcName}}, sink)
	cancel()
	if err == nil {
		t.Fatal("the poll succeeded with the change log locked")
	}
	if evs := sink.take(); len(evs) != 0 || !armed(t, pool, "src") {
		t.Fatalf("failed poll: events %v, armed %v; want none and the doorbell armed (the arm ran)", kindsOf(evs), armed(t, pool, "src"))
	}
	if err := locker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	srcEvents := func(evs []sinkEvent) []sinkEvent {
		var out []sinkEvent
		for _, ev := range evs {
			if ev.src == srcName {
				out = append(out, ev)
			}
		}
		return out
	}
	_, evs, sawRunning := pollOnce(t, d, prev) // also drains the other table's row
	if evs = srcEvents(evs); len(evs) != 0 {
		t.Fatalf("poll after the failed one, the writer still running: events %+v, want none of public.src", evs)
	}
	if err := writer.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	prev = expectOneChange(t, d, sawRunning, sawRunning, "the writer's commit")
	expectNothing(t, d, prev, "poll after that")
}

// TestDoorbellWritersNeverConflict: the doorbell is a sequence, read and
// advanced outside any snapshot, so writers at REPEATABLE READ and
// SERIALIZABLE never fail on it. A flag row would: a transaction whose
// snapshot still shows it armed would update a row changed since.
func TestDoorbellWritersNeverConflict(t *testing.T) {
	ctx := context.Background()
	pool, d := logSetup(t, config.DetectNotify)
	b := listenBell(t, pool)
	_, _, prev := pollOnce(t, d, time.Time{})

	begin := func(level pgx.TxIsoLevel) pgx.Tx {
		t.Helper()
		tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: level})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tx.Rollback(ctx) })
		return tx
	}
	exec := func(tx pgx.Tx, sql string) {
		t.Helper()
		if _, err := tx.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	commit := func(tx pgx.Tx, what string) {
		t.Helper()
		if err := tx.Commit(ctx); err != nil {
			t.Fatalf("%s: commit: %v", what, err)
		}
	}

	// A REPEATABLE READ snapshot taken while armed; meanwhile another writer
	// rings, the daemon re-arms, a third writer rings: the old snapshot's
	// write finds the doorbell as it is now (disarmed), and commits.
	rr := begin(pgx.RepeatableRead)
	exec(rr, `SELECT count(*) FROM public.src`)
	mustInsert(t, pool, "src")
	_, _, prev = pollOnce(t, d, prev)
	mustInsert(t, pool, "src")
	exec(rr, `INSERT INTO public.src VALUES (5, 5)`)
	commit(rr, "repeatable read writer")
	if got := b.rings(); got != 2 {
		t.Errorf("%d rings, want 2 (the old snapshot's writer found it disarmed)", got)
	}
	_, _, prev = pollOnce(t, d, prev)

	// Two SERIALIZABLE writers at once: the first disarms, the second finds
	// it disarmed; both commit, in either order.
	for _, firstCommits := range []bool{true, false} {
		s1, s2 := begin(pgx.Serializable), begin(pgx.Serializable)
		exec(s1, `INSERT INTO public.src VALUES (6, 6)`)
		exec(s2, `INSERT INTO public.src VALUES (7, 7)`)
		if firstCommits {
			commit(s1, "first serializable writer")
			commit(s2, "second serializable writer")
		} else {
			commit(s2, "second serializable writer")
			commit(s1, "first serializable writer")
		}
		if got := b.rings(); got != 1 {
			t.Errorf("two serializable writers: %d rings, want 1", got)
		}
		_, _, prev = pollOnce(t, d, prev)
	}
}

// changed reports whether the sink was told of a change of table dated at
// (for notify: logSink tells every mode of the log).
func (s *recordingSink) changed(table string, at time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.ContainsFunc(s.events, func(ev sinkEvent) bool {
		return ev.kind == "changed" && ev.mode == config.DetectNotify && ev.src.Name == table && ev.at.Equal(at)
	})
}

// reported reports whether the sink was told, after from, of a change of
// table dated no later than by: a write that started at from and whose
// commit was acknowledged at by (a poll after its commit reports it, dated
// no later than the commit; a ringer of its own or one before it, or the
// poll that first saw it running, dates it).
func (s *recordingSink) reported(table string, from, by time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.ContainsFunc(s.events, func(ev sinkEvent) bool {
		return ev.kind == "changed" && ev.mode == config.DetectNotify && ev.src.Name == table &&
			!ev.seen.Before(from) && !ev.at.After(by)
	})
}

// has reports whether the sink was told something of kind for notify.
func (s *recordingSink) has(kind string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.ContainsFunc(s.events, func(ev sinkEvent) bool { return ev.kind == kind && ev.mode == config.DetectNotify })
}

// doorbellRig is notify's detector as a term runs it (its listener and its
// doorbell poller, built by the engine), reporting to a recording sink
// instead of the engine's workers.
type doorbellRig struct {
	e   *Engine
	rec *recordingSink
}

// startDoorbell starts notify's detector over a view per table (created
// with the notify trigger), polling every `every` when no ring comes. The
// listener connects with sessionCfg (nil: the pool's).
func startDoorbell(t *testing.T, pool *pgxpool.Pool, sessionCfg *pgx.ConnConfig, every time.Duration, tables ...string) *doorbellRig {
	t.Helper()
	var views []config.View
	for _, table := range tables {
		v := testView(t, "public.sum_"+table, `SELECT k, sum(v)::bigint AS total, count(*) AS n FROM public.`+table+` GROUP BY k`)
		v.Sources = []config.QualifiedName{{Schema: "public", Name: table}}
		v.PollInterval = every
		views = append(views, *v)
	}
	if err := EnsureTriggers(context.Background(), pool, views); err != nil {
		t.Fatal(err)
	}
	r := &doorbellRig{e: buildTestEngine(t, pool, testEngineSetup{sessionCfg: sessionCfg}, views...), rec: &recordingSink{}}
	ctx, cancel := context.WithCancel(context.Background())
	d := r.e.notifyDetector(&term{ctx: ctx, cancel: cancel})
	d.sink, d.doorbell.sink = r.rec, logSink{r.rec}
	var wg sync.WaitGroup
	wg.Go(func() { d.run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	waitFor(t, 10*time.Second, "the listener to connect and the doorbell's first poll", func() bool {
		return r.e.Status().ListenerConnected && r.e.pollCount(config.DetectNotify) > 0
	})
	return r
}

// waitChanged waits until the rig was told of a change of table dated at.
func (r *doorbellRig) waitChanged(t *testing.T, table string, at time.Time, what string) {
	t.Helper()
	waitFor(t, 10*time.Second, what, func() bool { return r.rec.changed(table, at) })
}

// TestDoorbellRingsAlone: with the fallback poll out of the way (an hour),
// lone writes are reported through their rings alone, one poll each.
func TestDoorbellRingsAlone(t *testing.T) {
	pool := testPool(t)
	r := startDoorbell(t, pool, nil, time.Hour, "src")
	b := listenBell(t, pool)
	polls := r.e.pollCount(config.DetectNotify)
	const writes = 10
	for i := range writes {
		r.waitChanged(t, "src", mustInsert(t, pool, "src"), fmt.Sprintf("lone write %d to be reported", i))
	}
	if got := b.rings(); got != writes {
		t.Errorf("%d rings for %d lone writes", got, writes)
	}
	if got := r.e.pollCount(config.DetectNotify) - polls; got < writes {
		t.Errorf("%d polls for %d lone writes", got, writes)
	}
}

// TestDoorbellRolledBackNotifier: the notifier rolls back, so its ring is
// never sent and the doorbell stays disarmed; nothing is lost: the next
// writer's change is reported (by the fallback poll, unless one came
// between the two writes: TestDoorbell plays that order exactly), and the
// doorbell is armed again for the writer after it.
func TestDoorbellRolledBackNotifier(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t)
	r := startDoorbell(t, pool, nil, 100*time.Millisecond, "src")
	waitFor(t, 10*time.Second, "the doorbell to be armed", func() bool { return armed(t, pool, "src") })

	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO public.src VALUES (1, 1)`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	from := time.Now()
	mustInsert(t, pool, "src")
	by := time.Now()
	waitFor(t, 10*time.Second, "the next writer's change to be reported", func() bool { return r.rec.reported("src", from, by) })
	waitFor(t, 10*time.Second, "the doorbell to be armed again", func() bool { return armed(t, pool, "src") })
	r.waitChanged(t, "src", mustInsert(t, pool, "src"), "the writer after it")
}

// TestDoorbellEveryCommitReported: writers at once, each on its own table,
// each waiting for its last write to be reported before the next: every
// committed write is reported to SourceChanged for its table after it
// started, dated no later than its commit, through rings, the races between
// them (a poll that arms one table while another's writer runs), and
// fallback polls.
// And the doorbell rings at most a few times per poll.
func TestDoorbellEveryCommitReported(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t)
	const writers, writes = 8, 25
	var tables []string
	for i := range writers {
		table := fmt.Sprintf("w%d", i)
		mustExec(t, pool, `CREATE TABLE public.`+table+` (k int NOT NULL, v int NOT NULL)`)
		tables = append(tables, table)
	}
	r := startDoorbell(t, pool, nil, config.DefaultPollInterval, tables...)
	b := listenBell(t, pool)
	polls := r.e.pollCount(config.DetectNotify)

	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for _, table := range tables {
		wg.Go(func() {
			for i := range writes {
				from := time.Now()
				at, err := insert(ctx, pool, table)
				if err != nil {
					errs <- err
					return
				}
				by := time.Now()
				deadline := time.Now().Add(10 * time.Second)
				for !r.rec.reported(table, from, by) {
					if time.Now().After(deadline) {
						errs <- fmt.Errorf("write %d to %s, dated %v, not reported within 10 s", i, table, at)
						return
					}
					time.Sleep(2 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	rings, drains := b.rings(), r.e.pollCount(config.DetectNotify)-polls
	t.Logf("%d commits: %d rings, %d polls", writers*writes, rings, drains)
	// Each table's doorbell rings at most once per arm here: one writer
	// per table, waiting for its report before the next write.
	if rings > writers*drains {
		t.Errorf("%d rings for %d polls of %d tables: more than one per table and poll", rings, drains, writers)
	}
	if n := logRows(t, pool); n != 0 {
		t.Errorf("%d rows left in the log", n)
	}
}

// TestDoorbellListenerReconnect: the listener's connection is killed and
// kept out while a writer rings into the void, disarming the doorbell. On
// reconnect the daemon catches up and re-arms and drains at once: the
// writer's change is reported without waiting for the fallback poll (an
// hour here), and the next writer rings again.
func TestDoorbellListenerReconnect(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t)
	rb := make([]byte, 4)
	if _, err := rand.Read(rb); err != nil {
		t.Fatal(err)
	}
	role := "rd_listen_" + hex.EncodeToString(rb)
	mustExec(t, pool, `CREATE ROLE `+pgx.Identifier{role}.Sanitize()+` LOGIN`)
	t.Cleanup(func() { mustExec(t, pool, `DROP ROLE `+pgx.Identifier{role}.Sanitize()) })
	cfg := pool.Config().ConnConfig.Copy()
	cfg.User = role
	r := startDoorbell(t, pool, cfg, time.Hour, "src")
	b := listenBell(t, pool)

	r.waitChanged(t, "src", mustInsert(t, pool, "src"), "a write before the outage")
	mustExec(t, pool, `ALTER ROLE `+pgx.Identifier{role}.Sanitize()+` NOLOGIN`) // open sessions stay
	var gone bool
	if err := pool.QueryRow(ctx, `SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity
		WHERE usename = $1 AND datname = current_database()`, role).Scan(&gone); err != nil || !gone {
		t.Fatalf("terminate the listener's backend: %v, %v", gone, err)
	}
	waitFor(t, 10*time.Second, "the listener to report its outage", func() bool { return r.rec.has("unseen") })
	b.rings()
	lost := mustInsert(t, pool, "src")
	if got := b.rings(); got != 1 || armed(t, pool, "src") {
		t.Fatalf("write during the outage: %d rings, armed %v; want 1 ring (unheard) and the doorbell disarmed", got, armed(t, pool, "src"))
	}
	mustExec(t, pool, `ALTER ROLE `+pgx.Identifier{role}.Sanitize()+` LOGIN`)
	r.waitChanged(t, "src", lost, "the change written during the outage")
	waitFor(t, 10*time.Second, "the catch-up after the reconnect", func() bool { return r.rec.has("missed") })
	r.waitChanged(t, "src", mustInsert(t, pool, "src"), "a write after the reconnect")
}

// TestDoorbellSharedLog runs the engine with views of both modes that
// append to the change log: a table watched by a notify view, one by a
// changelog view, and one by one of each (it carries the notify trigger
// only). Both detectors drain the one log, so either may take a row of the
// other's table; after each burst of concurrent writes every view shows
// its table's total, so the last write to every table reached its views.
// The doorbell rings a few times per poll, far fewer than the commits.
func TestDoorbellSharedLog(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t)
	tables := []string{"src_notify", "src_changelog", "src_both"}
	var views []config.View
	view := func(name, table, mode string) config.View {
		v := testView(t, "public."+name, `SELECT k, sum(v)::bigint AS total, count(*) AS n FROM public.`+table+` GROUP BY k`)
		v.Sources = []config.QualifiedName{{Schema: "public", Name: table}}
		v.ChangeDetection = mode
		v.Debounce, v.MaxDelay = 0, time.Second
		return *v
	}
	for _, table := range tables {
		mustExec(t, pool, `CREATE TABLE public.`+table+` (k int NOT NULL, v int NOT NULL)`)
	}
	views = append(views,
		view("sum_notify", "src_notify", config.DetectNotify),
		view("sum_changelog", "src_changelog", config.DetectChangelog),
		view("sum_both_n", "src_both", config.DetectNotify),
		view("sum_both_c", "src_both", config.DetectChangelog),
	)
	e := newTestEngine(t, pool, views...)
	runEngine(t, e)
	waitFor(t, 10*time.Second, "start-up refreshes", func() bool {
		st := e.Status()
		return st.ListenerConnected && !slices.ContainsFunc(st.Views, func(v ViewStatus) bool { return v.DataAsOf == nil || v.InProgress })
	})
	for table, want := range map[string][]string{
		"src_notify": {"refresherd_notify"}, "src_changelog": {"refresherd_changelog"}, "src_both": {"refresherd_notify"},
	} {
		if got := daemonTriggers(t, pool, "public."+table); !slices.Equal(got, want) {
			t.Errorf("%s triggers %v, want %v", table, got, want)
		}
	}
	b := listenBell(t, pool)
	polls := e.pollCount(config.DetectNotify)

	const rounds, writers, writes = 3, 8, 30
	for round := range rounds {
		errs := make(chan error, writers)
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				for i := range writes {
					table := tables[(w+i)%len(tables)]
					if _, err := pool.Exec(ctx, `INSERT INTO `+pgx.Identifier{"public", table}.Sanitize()+` VALUES ($1, $2)`, i%10, round*1000+w*writes+i); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for _, v := range views {
			table := v.Sources[0].Name
			waitFor(t, 10*time.Second, fmt.Sprintf("round %d: %s to show %s's total", round, v.Name, table), func() bool {
				var want int64
				if err := pool.QueryRow(ctx, `SELECT coalesce(sum(v), 0)::bigint FROM public.`+table).Scan(&want); err != nil {
					t.Fatal(err)
				}
				return viewTotal(t, pool, &v) == want
			})
		}
	}
	rings, drains := b.rings(), e.pollCount(config.DetectNotify)-polls
	commits := rounds * writers * writes * 2 / 3 // to the two tables with the notify trigger
	t.Logf("%d commits to tables with the notify trigger: %d rings, %d doorbell polls", commits, rings, drains)
	if rings > 3*drains {
		t.Errorf("%d rings for %d polls: more than a few per poll", rings, drains)
	}
	if rings >= commits/2 {
		t.Errorf("%d rings for %d commits: the doorbell does not spare writers", rings, commits)
	}
}

// TestDoorbellReplacesOldTrigger: an install of the version before the
// per-table doorbells has the notify trigger calling notify_change(), which
// logs and rings the one doorbell. The leader's EnsureTriggers replaces it
// with notify_ring's, naming the table's doorbell. During a rolling
// upgrade a replica of the old version may put its trigger back: its
// writes still reach the views, through the log that the notify poll
// drains and the old doorbell that it arms. A notification of the format
// before that (from a replica older still) is a change too.
func TestDoorbellReplacesOldTrigger(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t)
	oldTrigger := `CREATE TRIGGER refresherd_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.src
		FOR EACH STATEMENT EXECUTE FUNCTION refresherd.notify_change()`
	mustExec(t, pool, oldTrigger)
	trigger := func() (fn string, args int) {
		t.Helper()
		if err := pool.QueryRow(ctx, `SELECT t.tgfoid::regproc::text, t.tgnargs FROM pg_trigger t
			WHERE t.tgrelid = 'public.src'::regclass AND t.tgname = 'refresherd_notify'`).Scan(&fn, &args); err != nil {
			t.Fatal(err)
		}
		return fn, args
	}
	b := listenBell(t, pool)
	r := startDoorbell(t, pool, nil, time.Hour, "src")
	if fn, args := trigger(); fn != "refresherd.notify_ring" || args != 1 {
		t.Errorf("trigger calls %s with %d argument(s), want refresherd.notify_ring with 1", fn, args)
	}
	r.waitChanged(t, "src", mustInsert(t, pool, "src"), "a write through the new trigger")
	if got, n := b.rings(), logRows(t, pool); got != 1 || n != 0 {
		t.Errorf("%d rings, %d log rows; want 1 and 0", got, n)
	}

	// An old replica's set-up puts its trigger back.
	mustExec(t, pool, `DROP TRIGGER refresherd_notify ON public.src`)
	mustExec(t, pool, oldTrigger)
	r.waitChanged(t, "src", mustInsert(t, pool, "src"), "a write through the old trigger")
	if got, n := b.rings(), logRows(t, pool); got != 1 || n != 0 {
		t.Errorf("old trigger: %d rings, %d log rows; want 1 ring and the log drained", got, n)
	}

	at := time.Now().Add(-time.Second).Truncate(time.Microsecond)
	mustExec(t, pool, `SELECT pg_notify($1, json_build_object('schema', 'public', 'table', 'src', 'ts', $2::float8)::text)`,
		dbsql.NotifyChannel, float64(at.UnixMicro())/1e6)
	waitFor(t, 10*time.Second, "an old-format notification to be a change", func() bool {
		r.rec.mu.Lock()
		defer r.rec.mu.Unlock()
		return slices.ContainsFunc(r.rec.events, func(ev sinkEvent) bool {
			return ev.kind == "changed" && ev.mode == config.DetectNotify && ev.src == srcName && ev.at.Sub(at).Abs() < time.Millisecond
		})
	})
}

package refresh

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/internal/pgcluster"
	"github.com/refresherd/refresherd/internal/pgtest"
)

// deadlineDelay is the production DeadlineDelay (internal/cli's tune()):
// how long after a context expires pgx waits for the server to act on its
// cancel request before it gives up on the socket.
const deadlineDelay = 5 * time.Second

// slack absorbs a loaded test machine; it is not part of any bound the code
// promises.
const slack = 15 * time.Second

// frozenPool is testPool on a private cluster, for a test that freezes one
// of its backends: a stopped backend never absorbs the signal barrier that
// DROP DATABASE waits for, so on the shared cluster it would hold up every
// other test's clean-up for as long as it stays frozen.
func frozenPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	c := pgtest.NewCluster(t, pgcluster.Options{})
	if err := c.CreateDatabase(context.Background(), "app"); err != nil {
		t.Fatal(err)
	}
	return testPoolAt(t, c.URL("app"))
}

// onePool opens a pool of exactly one connection to pool's database, with
// the production cancel handling, and returns it with that connection's
// backend pid: the process a test can freeze.
func onePool(t *testing.T, pool *pgxpool.Pool) (*pgxpool.Pool, uint32) {
	t.Helper()
	ctx := context.Background()
	cfg := pool.Config().Copy()
	cfg.MinConns, cfg.MaxConns = 0, 1
	cfg.ConnConfig.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: deadlineDelay}
	}
	one, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(one.Close)
	var pid uint32
	if err := one.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return one, pid
}

// freezeWhen waits until backend pid is waiting on waitEvent, then stops
// it with SIGSTOP, as a frozen host or a black-holed network would: the
// connection stays open and nothing answers, not even a cancel request. It
// is resumed on cleanup (before the pool closes and the database is
// dropped).
func freezeWhen(t *testing.T, pool *pgxpool.Pool, pid uint32, waitEvent string) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var ev string
		if err := pool.QueryRow(ctx, `SELECT coalesce(wait_event, '') FROM pg_stat_activity WHERE pid = $1`, int64(pid)).Scan(&ev); err != nil {
			t.Fatal(err)
		}
		if ev == waitEvent {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %d never waited on %s (last: %q)", pid, waitEvent, ev)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() { _ = syscall.Kill(int(pid), syscall.SIGCONT) })
	if err := syscall.Kill(int(pid), syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP backend %d: %v", pid, err)
	}
}

// returnsWithin waits for done up to bound after start; a call that hangs
// fails the test (and is released by the SIGCONT on cleanup).
func returnsWithin(t *testing.T, what string, start time.Time, bound time.Duration, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		t.Logf("%s returned after %v (bound %v): %v", what, time.Since(start).Round(time.Millisecond), bound, err)
		return err
	case <-time.After(time.Until(start.Add(bound))):
		t.Fatalf("%s still blocked %v after it started against a frozen server", what, bound)
		return nil
	}
}

// goDone runs fn in a goroutine that the test waits for on cleanup (after
// the frozen backend is resumed), so nothing leaks.
func goDone(t *testing.T, fn func() error) <-chan error {
	done := make(chan error, 1)
	finished := make(chan struct{})
	t.Cleanup(func() { <-finished })
	go func() {
		defer close(finished)
		done <- fn()
	}()
	return done
}

// TestRefreshBoundedAgainstFrozenServer: the backend of a running refresh
// stops answering (SIGSTOP) mid-REFRESH, so statement_timeout never fires
// and pgx's cancel request is ignored. Refresh must still return, failed,
// within its own bound plus pgx's DeadlineDelay, with no deadline from the
// caller.
func TestRefreshBoundedAgainstFrozenServer(t *testing.T) {
	t.Parallel() // slow by design: it waits out a bound
	ctx := context.Background()
	pool := frozenPool(t)
	v := testView(t, "public.slow", `SELECT k, sum(v)::bigint AS total, count(*) AS n FROM public.src,
		LATERAL (SELECT pg_sleep(CASE WHEN v = 999999 THEN 60 ELSE 0 END)) s GROUP BY k`)
	v.StatementTimeout = 3 * time.Second
	if _, err := EnsureView(ctx, pool, v); err != nil {
		t.Fatal(err)
	}
	one, pid := onePool(t, pool)
	r := &Refresher{Pool: one, Identity: "test"}
	if _, err := r.Refresh(ctx, v, TriggerStartup, nil); err != nil {
		t.Fatal(err)
	}
	mustExec(t, pool, `INSERT INTO public.src VALUES (3, 999999)`)

	start := time.Now()
	done := goDone(t, func() error {
		_, err := r.Refresh(ctx, v, TriggerChange, nil)
		return err
	})
	freezeWhen(t, pool, pid, "PgSleep")
	bound := RefreshBound(v) + deadlineDelay + slack
	if err := returnsWithin(t, "Refresh", start, bound, done); err == nil {
		t.Fatal("Refresh against a frozen server succeeded")
	}
}

// TestEnsureViewBoundedAgainstFrozenServer: set-up waits for the set-up
// lock (held by another session), its backend freezes there, the lock is
// released. EnsureView must return within SetupTimeout plus DeadlineDelay.
func TestEnsureViewBoundedAgainstFrozenServer(t *testing.T) {
	t.Parallel() // slow by design: it waits out a bound
	ctx := context.Background()
	pool := frozenPool(t)
	v := testView(t, "public.sums", sumQuery)
	one, pid := onePool(t, pool)
	release := holdTx(t, pool, `SELECT pg_advisory_xact_lock($1)`, lockKey("setup", ""))

	start := time.Now()
	done := goDone(t, func() error {
		_, err := EnsureView(ctx, one, v)
		return err
	})
	freezeWhen(t, pool, pid, "advisory")
	release()
	bound := SetupTimeout + deadlineDelay + slack
	if err := returnsWithin(t, "EnsureView", start, bound, done); err == nil {
		t.Fatal("EnsureView against a frozen server succeeded")
	}
}

// TestSwapBuildHonoursLockTimeout: the side build of a definition change
// waits on a source table's lock for lock_timeout, not for the whole
// statement_timeout.
func TestSwapBuildHonoursLockTimeout(t *testing.T) {
	t.Parallel() // slow by design: it waits out a bound
	ctx := context.Background()
	pool := testPool(t)
	v := testView(t, "public.sums", sumQuery)
	if _, err := EnsureView(ctx, pool, v); err != nil {
		t.Fatal(err)
	}
	nv := *v
	nv.Query = `SELECT k, (2 * sum(v))::bigint AS total, count(*) AS n FROM public.src GROUP BY k`
	nv.LockTimeout = 300 * time.Millisecond
	release := holdTx(t, pool, `LOCK TABLE public.src IN ACCESS EXCLUSIVE MODE`)
	_, err := Swap(ctx, pool, &nv, "test", nil)
	release()
	if err == nil || !strings.Contains(err.Error(), "lock timeout") {
		t.Fatalf("Swap error = %v, want a lock timeout", err)
	}
}

// TestIndexBuildStopsAtSetupDeadline: adopting a populated view without a
// usable unique index builds one while the global set-up lock is held. When
// set-up gives up and its cancel request cannot reach the server (here: no
// new connection gets through, as in a network partition), the server must
// stop the build itself, releasing that lock, and set-up must say how to
// build the index instead. The build is made slow with a range type whose
// comparisons sleep.
func TestIndexBuildStopsAtSetupDeadline(t *testing.T) {
	t.Parallel() // slow by design: it waits out a bound
	ctx := context.Background()
	pool := testPool(t)
	mustExec(t, pool, `CREATE FUNCTION public.slow_cmp(int4, int4) RETURNS int4 LANGUAGE sql IMMUTABLE AS $$
		SELECT CASE WHEN current_setting('refresherd_test.slow', true) = 'on' THEN (SELECT 0 FROM pg_sleep(0.001)) ELSE 0 END
			+ btint4cmp($1, $2) $$`)
	mustExec(t, pool, `CREATE OPERATOR CLASS public.slow_int4_ops FOR TYPE int4 USING btree AS
		OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=, OPERATOR 5 >, FUNCTION 1 public.slow_cmp(int4, int4)`)
	mustExec(t, pool, `CREATE TYPE public.slowrange AS RANGE (subtype = int4, subtype_opclass = public.slow_int4_ops)`)
	// Sorting 5000 shuffled keys takes some 60k comparisons: over a minute
	// (sorted ones would need only one pass).
	mustExec(t, pool, `CREATE MATERIALIZED VIEW public.adopted AS
		SELECT public.slowrange(g, g + 1) AS k, g AS total FROM generate_series(1, 5000) g ORDER BY md5(g::text)`)

	cfg := pool.Config().Copy()
	cfg.MinConns, cfg.MaxConns = 0, 1
	cfg.ConnConfig.RuntimeParams["refresherd_test.slow"] = "on"
	dial := cfg.ConnConfig.DialFunc
	var dials atomic.Int64
	cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if dials.Add(1) > 1 {
			return nil, errors.New("test: partitioned, no new connection gets through")
		}
		return dial(ctx, network, addr)
	}
	partitioned, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(partitioned.Close)

	v := testView(t, "public.adopted", sumQuery)
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err = EnsureView(sctx, partitioned, v)
	if err == nil {
		t.Fatal("EnsureView succeeded")
	}
	t.Logf("EnsureView: %v", err)
	// The set-up lock is free again at once (generously: within 15 s; the
	// build alone would hold it for about a minute).
	deadline := time.Now().Add(15 * time.Second)
	for {
		var got bool
		if err := pool.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1)`, lockKey("setup", "")).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the set-up lock is still held: the index build goes on after set-up gave up")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(err.Error(), "CREATE UNIQUE INDEX CONCURRENTLY") {
		t.Fatalf("EnsureView error = %v, want the advice to create the index", err)
	}
}

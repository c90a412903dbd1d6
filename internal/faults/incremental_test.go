package faults

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/refresherd/refresherd/internal/daemontest"
	"github.com/refresherd/refresherd/internal/demodata"
)

// TestIncrementalAcrossCrashes is the incremental strategy's property test
// across real faults: writers run random transactions (inserts with and
// without a job, amount updates, moves to another user, job, to and from a
// NULL job or month, deletes, several statements, rollbacks) while the
// daemon applies rounds, and the daemon is killed with SIGKILL and
// restarted, then PostgreSQL is stopped in immediate mode and started
// again (crash recovery empties the UNLOGGED key log: a rebuild with reason
// log_lost), then the source is truncated (reason truncate). After each
// fault, once the writers stop, the summary equals the full aggregate
// exactly and `refresherd verify` agrees.
func TestIncrementalAcrossCrashes(t *testing.T) {
	t.Parallel()
	const charges = 3000
	e := newEnv(t, charges)
	size := demodata.DefaultSize(charges)
	cfg := config{views: daemontest.SummaryView(demodata.SummaryQuery) + "    strategy: incremental\n"}
	path := cfg.write(t)
	env := []string{"DATABASE_URL=" + e.url}
	p := start(t, path, env...)
	e.settle(t, p)

	// writeFor runs 3 writers for d; connection errors while the server is
	// down are expected and only counted.
	writeFor := func(d time.Duration, seed uint64, during func()) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		var wg sync.WaitGroup
		var ok, failed atomic.Int64
		var firstErr atomic.Value
		for w := range 3 {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(seed, uint64(w)))
				for ctx.Err() == nil {
					err := randomChargeTx(ctx, e, r, size)
					switch {
					case err == nil, errors.Is(err, errRollback):
						ok.Add(1)
					default:
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
						time.Sleep(50 * time.Millisecond)
					}
				}
			})
		}
		if during != nil {
			time.Sleep(d / 3)
			during()
		}
		wg.Wait()
		t.Logf("writers: %d transactions, %d failed (first: %v)", ok.Load(), failed.Load(), firstErr.Load())
		if ok.Load() == 0 {
			t.Fatal("no writer transaction succeeded")
		}
	}
	settledExactly := func(what string) {
		t.Helper()
		e.mustSettle(t, 60*time.Second)
		waitIdle(t, p, 30*time.Second)
		if r := daemontest.Run(t, env, "verify", "--config", path); r.Code != 0 {
			t.Fatalf("after %s: refresherd verify exit %d:\n%s%s", what, r.Code, r.Stdout, r.Stderr)
		}
	}

	// 1. SIGKILL mid-writes, a new daemon takes over at once.
	writeFor(4*time.Second, 1, func() {
		p.Kill()
		p = start(t, path, env...)
	})
	settledExactly("a daemon kill -9")

	// 2. An immediate stop mid-writes: the key log is UNLOGGED, so crash
	// recovery empties it and the daemon must rebuild.
	before := mustMetric(t, p, "refresherd_rebuilds_total", map[string]string{"reason": "log_lost"})
	writeFor(6*time.Second, 2, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := e.cluster.Stop(ctx, "immediate"); err != nil {
			t.Error(err)
		}
		time.Sleep(time.Second)
		if err := e.cluster.StartAgain(ctx); err != nil {
			t.Error(err)
		}
		e.pool.Reset()
	})
	waitMetric(t, p, 60*time.Second, "refresherd_rebuilds_total", map[string]string{"reason": "log_lost"},
		func(v float64) bool { return v > before })
	settledExactly("a PostgreSQL immediate restart")

	// 3. TRUNCATE mid-writes.
	before = mustMetric(t, p, "refresherd_rebuilds_total", map[string]string{"reason": "truncate"})
	writeFor(3*time.Second, 3, func() { e.exec(t, `TRUNCATE app_charge`) })
	waitMetric(t, p, 60*time.Second, "refresherd_rebuilds_total", map[string]string{"reason": "truncate"},
		func(v float64) bool { return v > before })
	settledExactly("a TRUNCATE")

	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
}

var errRollback = errors.New("rollback on purpose")

// randomChargeTx runs one random writer transaction on the demo schema.
func randomChargeTx(ctx context.Context, e *env, r *rand.Rand, size demodata.Size) error {
	return pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		var maxID int64
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(id), 1) FROM app_charge`).Scan(&maxID); err != nil {
			return err
		}
		for range 1 + r.IntN(3) {
			id := 1 + r.Int64N(maxID)
			job := any(nil)
			if r.IntN(4) > 0 {
				job = 1 + r.IntN(size.Jobs)
			}
			var err error
			switch r.IntN(8) {
			case 0, 1:
				_, err = tx.Exec(ctx, `INSERT INTO app_charge (type, amount, month, user_id, job_id)
					VALUES ($1, $2, date '2026-01-01' + make_interval(months => $3), $4, $5)`,
					[]string{"hw", "sw"}[r.IntN(2)], float64(r.IntN(10000))/100, r.IntN(6), 1+r.IntN(size.Users), job)
			case 2:
				_, err = tx.Exec(ctx, `UPDATE app_charge SET amount = amount + 1 WHERE id = $1`, id)
			case 3:
				_, err = tx.Exec(ctx, `UPDATE app_charge SET user_id = $2 WHERE id = $1`, id, 1+r.IntN(size.Users))
			case 4:
				_, err = tx.Exec(ctx, `UPDATE app_charge SET job_id = $2 WHERE id = $1`, id, job)
			case 5:
				_, err = tx.Exec(ctx, `UPDATE app_charge SET month = month + interval '1 month' WHERE id = $1`, id)
			case 6:
				_, err = tx.Exec(ctx, `DELETE FROM app_charge WHERE id = $1`, id)
			case 7:
				_, err = tx.Exec(ctx, `UPDATE app_charge SET amount = round(amount / 2, 2) + 1 WHERE user_id = $1`, 1+r.IntN(size.Users))
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

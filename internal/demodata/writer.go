package demodata

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Mix weighs the writer's operations. The zero Mix means inserts only.
type Mix struct {
	Insert, Update, Delete float64
}

// Counts are the writes a Run committed, plus failures and paced writes
// skipped because the writers fell behind.
type Counts struct {
	Inserts, Updates, Deletes int64
	// Misses are updates/deletes that found no row (all ids above the random
	// pick were deleted).
	Misses  int64
	Errors  int64
	Skipped int64
}

// Writer writes single-row, autocommit charge changes, like an app's users,
// for the demo and benchmarks.
type Writer struct {
	// OnCommit, if set, is called after each insert committed, with the new
	// charge's id and the time the commit was acknowledged: an upper bound on
	// the commit time, and every transaction that starts later sees the row.
	// With Concurrency > 1 it is called from several goroutines at once.
	OnCommit func(id int64, committedAt time.Time)
	// Concurrency is how many connections write at once (default 1). A
	// single connection manages a few thousand writes per second with fsync
	// off; raise it for higher rates or when commits wait for fsync.
	Concurrency int

	pool   *pgxpool.Pool
	size   Size
	seed   int64
	logf   func(string, ...any)
	insert string
}

// NewWriter returns a writer for tables loaded with s (new charges reference
// users 1..s.Users and jobs 1..s.Jobs with Load's distribution). seed seeds
// the writer's own choices. logf may be nil.
func NewWriter(pool *pgxpool.Pool, s Size, seed int64, logf func(string, ...any)) *Writer {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	return &Writer{
		pool: pool, size: s, seed: seed, logf: logf,
		// A random g draws a charge from the same distribution as Load.
		insert: `INSERT INTO app_charge (type, amount, month, user_id, job_id)
SELECT type, amount, month, user_id, job_id FROM (` + s.chargeSelect("(SELECT $1::bigint AS g) AS s") + `) AS c
RETURNING id`,
	}
}

const (
	// The next existing id at or above a random pick: always an index probe,
	// and it still finds a row after deletes left holes.
	updateSQL = `UPDATE app_charge SET amount = $2::numeric(8,2), type = $3
WHERE id = (SELECT id FROM app_charge WHERE id >= $1 ORDER BY id LIMIT 1) RETURNING id`
	deleteSQL = `DELETE FROM app_charge
WHERE id = (SELECT id FROM app_charge WHERE id >= $1 ORDER BY id LIMIT 1) RETURNING id`
)

// Run writes at ratePerSec (<= 0: as fast as the connections go) with the
// given mix until ctx is done, and returns what it did. Writes in flight when
// ctx is done are completed (within 10 s) so the counts are exact. Write
// errors (e.g. while the server restarts) are counted and logged, not
// returned; the error is for bad arguments or a failed start.
func (w *Writer) Run(ctx context.Context, ratePerSec float64, mix Mix) (Counts, error) {
	if mix.Insert < 0 || mix.Update < 0 || mix.Delete < 0 {
		return Counts{}, fmt.Errorf("demodata: writer run: negative weight in %+v", mix)
	}
	if mix == (Mix{}) {
		mix.Insert = 1
	}
	if err := w.size.validate(); err != nil {
		return Counts{}, fmt.Errorf("demodata: writer run: %w", err)
	}
	workers := max(w.Concurrency, 1)

	var maxID atomic.Int64
	if mix.Update > 0 || mix.Delete > 0 {
		var id int64
		if err := w.pool.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM app_charge`).Scan(&id); err != nil {
			return Counts{}, fmt.Errorf("demodata: writer run: %w", err)
		}
		maxID.Store(id)
	}

	var c counters
	tokens := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { pace(ctx, ratePerSec, tokens, &c.skipped) })
	for i := range workers {
		rng := rand.New(rand.NewPCG(uint64(w.seed), uint64(i)))
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-tokens:
				}
				w.writeOne(ctx, rng, mix, &maxID, &c)
			}
		})
	}
	wg.Wait()
	return c.snapshot(), nil
}

// pace sends one token per write at the rate (back to back if rate <= 0).
// When the writers fall more than a second behind, the missed writes are
// counted as skipped rather than sent in a burst, to keep the rate steady.
func pace(ctx context.Context, rate float64, tokens chan<- struct{}, skipped *atomic.Int64) {
	start := time.Now()
	var n int64
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		if rate > 0 {
			due := start.Add(time.Duration(float64(n) / rate * float64(time.Second)))
			if lag := time.Since(due); lag > time.Second {
				behind := int64(lag.Seconds() * rate)
				skipped.Add(behind)
				n += behind
				continue
			}
			timer.Reset(time.Until(due))
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		}
		select {
		case <-ctx.Done():
			return
		case tokens <- struct{}{}:
		}
		n++
	}
}

// writeTimeout bounds one write. Writes do not stop when Run's ctx is done:
// a write cancelled in flight may still commit, and then the counts and
// OnCommit would miss it.
const writeTimeout = 10 * time.Second

func (w *Writer) writeOne(runCtx context.Context, rng *rand.Rand, mix Mix, maxID *atomic.Int64, c *counters) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(runCtx), writeTimeout)
	defer cancel()
	var (
		op  string
		err error
		id  int64
	)
	x := rng.Float64() * (mix.Insert + mix.Update + mix.Delete)
	switch {
	case x < mix.Insert || maxID.Load() == 0:
		op = "insert"
		err = w.pool.QueryRow(ctx, w.insert, rng.Int64()).Scan(&id)
		if err == nil {
			at := time.Now()
			c.inserts.Add(1)
			for old := maxID.Load(); id > old && !maxID.CompareAndSwap(old, id); old = maxID.Load() {
			}
			if w.OnCommit != nil {
				w.OnCommit(id, at)
			}
		}
	case x < mix.Insert+mix.Update:
		op = "update"
		amount := strconv.FormatFloat(float64(1+rng.IntN(99_999))/100, 'f', 2, 64)
		typ := [2]string{"hw", "sw"}[rng.IntN(2)]
		err = w.pool.QueryRow(ctx, updateSQL, 1+rng.Int64N(maxID.Load()), amount, typ).Scan(&id)
		if err == nil {
			c.updates.Add(1)
		}
	default:
		op = "delete"
		err = w.pool.QueryRow(ctx, deleteSQL, 1+rng.Int64N(maxID.Load())).Scan(&id)
		if err == nil {
			c.deletes.Add(1)
		}
	}
	switch {
	case err == nil:
	case errors.Is(err, pgx.ErrNoRows):
		c.misses.Add(1)
	default:
		if n := c.errors.Add(1); n <= 5 || n%1000 == 0 {
			w.logf("demodata: writer %s failed (%d failures so far): %v", op, n, err)
		}
		// Do not spin while the server is down.
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-runCtx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

type counters struct {
	inserts, updates, deletes, misses, errors, skipped atomic.Int64
}

func (c *counters) snapshot() Counts {
	return Counts{
		Inserts: c.inserts.Load(), Updates: c.updates.Load(), Deletes: c.deletes.Load(),
		Misses: c.misses.Load(), Errors: c.errors.Load(), Skipped: c.skipped.Load(),
	}
}

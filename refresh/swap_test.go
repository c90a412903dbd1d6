package refresh

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// TestSwapUnderConcurrentReaders: a definition change is built beside the
// old view and swapped in while readers keep reading: zero errors, never an
// empty result, old data before and new data after.
func TestSwapUnderConcurrentReaders(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t)
	mustExec(t, pool, `INSERT INTO public.src SELECT g % 10, g FROM generate_series(1, 200000) g`)
	v := testView(t, "public.sums", sumQuery)
	if _, err := EnsureView(ctx, pool, v); err != nil {
		t.Fatal(err)
	}
	if ch, err := CheckDefinition(ctx, pool, v); err != nil || ch != DefinitionSame {
		t.Fatalf("fresh view: %v, %v; want same", ch, err)
	}
	r := &Refresher{Pool: pool, Identity: "test"}
	if _, err := r.Refresh(ctx, v, "startup", nil); err != nil {
		t.Fatal(err)
	}
	mustExec(t, pool, `DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'swap_reader') THEN CREATE ROLE swap_reader; END IF; END $$`)
	mustExec(t, pool, `GRANT SELECT ON public.sums TO swap_reader`)

	// The new definition adds a column and doubles the totals.
	nv := *v
	nv.Query = `SELECT k, (2 * sum(v))::bigint AS total, count(*) AS n, max(v) AS top FROM public.src GROUP BY k`
	if ch, err := CheckDefinition(ctx, pool, &nv); err != nil || ch != DefinitionChanged {
		t.Fatalf("changed view: %v, %v; want changed", ch, err)
	}
	plan, err := PlanSwap(ctx, pool, &nv)
	if err != nil || len(plan.DependentViews) != 0 || !strings.Contains(plan.String(), "sums_rfd_new") {
		t.Fatalf("plan = %v, %v", plan, err)
	}

	readers, err := pgxpool.New(ctx, pool.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer readers.Close()
	var reads, empties atomic.Int64
	var errMu sync.Mutex
	var readErrs []error
	var sawNew atomic.Bool
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			for rctx.Err() == nil {
				var n int64
				var total int64
				err := readers.QueryRow(rctx, `SELECT count(*), coalesce(sum(total), 0)::bigint FROM public.sums`).Scan(&n, &total)
				if rctx.Err() != nil {
					return
				}
				if err != nil {
					errMu.Lock()
					readErrs = append(readErrs, err)
					errMu.Unlock()
					continue
				}
				reads.Add(1)
				if n == 0 {
					empties.Add(1)
				}
				if total > 2*200000*200001/2 {
					sawNew.Store(true)
				}
			}
		})
	}
	// The readers are at it before the swap and see the new data after it.
	waitFor(t, 10*time.Second, "readers reading", func() bool { return reads.Load() >= 10 })
	if _, err := Swap(ctx, pool, &nv, "test", nil); err != nil {
		stop()
		wg.Wait()
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "readers to see the new data", sawNew.Load)
	stop()
	wg.Wait()
	if len(readErrs) > 0 {
		t.Fatalf("%d reader errors during the swap, first: %v", len(readErrs), errors.Join(readErrs[0]))
	}
	if empties.Load() != 0 {
		t.Fatalf("%d empty reads", empties.Load())
	}
	if reads.Load() < 10 || !sawNew.Load() {
		t.Fatalf("reads = %d, saw new data = %v", reads.Load(), sawNew.Load())
	}
	if ch, err := CheckDefinition(ctx, pool, &nv); err != nil || ch != DefinitionSame {
		t.Fatalf("after swap: %v, %v; want same", ch, err)
	}
	// The swapped-in view refreshes concurrently (its unique index has the
	// canonical name) and keeps the grant.
	out, err := r.Refresh(ctx, &nv, "change", nil)
	if err != nil || !out.Concurrently {
		t.Fatalf("refresh after swap: %v (concurrently %v)", err, out.Concurrently)
	}
	var granted bool
	if err := pool.QueryRow(ctx, `SELECT has_table_privilege('swap_reader', 'public.sums', 'SELECT')`).Scan(&granted); err != nil || !granted {
		t.Fatalf("grant lost in the swap: %v", err)
	}
	var leftovers int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_class WHERE relname LIKE 'sums_rfd_%'`).Scan(&leftovers); err != nil || leftovers != 0 {
		t.Fatalf("%d leftover relations (%v)", leftovers, err)
	}
}

// TestSwapBlockedByDependentView: a plain view reading the matview blocks
// the rebuild with a clear error, and the old view stays.
func TestSwapBlockedByDependentView(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t)
	v := testView(t, "public.sums", sumQuery)
	if _, err := EnsureView(ctx, pool, v); err != nil {
		t.Fatal(err)
	}
	mustExec(t, pool, `REFRESH MATERIALIZED VIEW public.sums`)
	mustExec(t, pool, `CREATE VIEW public.top_sums AS SELECT * FROM public.sums WHERE total > 10`)
	nv := *v
	nv.Query = `SELECT k, sum(v)::bigint AS total FROM public.src GROUP BY k`
	_, err := Swap(ctx, pool, &nv, "test", nil)
	if err == nil || !strings.Contains(err.Error(), "public.top_sums") {
		t.Fatalf("err = %v, want it to name public.top_sums", err)
	}
	if got := viewTotal(t, pool, v); got != 500500 {
		t.Fatalf("old view changed: total %d", got)
	}
}

package fresh

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/internal/demodata"
	"github.com/refresherd/refresherd/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const view = `"public"."app_chargesummary"`

// TestTrackerJudgesByContent: charges written before a refresh become
// visible with it (never before it started), charges written after it stay
// unseen until the next one.
func TestTrackerJudgesByContent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url := pgtest.NewDB(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	size := demodata.DefaultSize(2000)
	if err := demodata.CreateSchema(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if err := demodata.Load(ctx, pool, size); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE MATERIALIZED VIEW public.app_chargesummary AS ` + demodata.SummaryQuery,
		`CREATE UNIQUE INDEX ON public.app_chargesummary (id)`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	var baseID int64
	if err := pool.QueryRow(ctx, `SELECT max(id) FROM app_charge`).Scan(&baseID); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	tr := New(Options{View: view, BaseID: baseID, WindowStart: start, WindowEnd: start.Add(time.Hour), Every: 5 * time.Millisecond})
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tctx, stopTracker := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- tr.Run(tctx, conn) }()
	defer func() {
		stopTracker()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	var mu sync.Mutex
	var commits []time.Time
	w := demodata.NewWriter(pool, size, 7, t.Logf)
	w.OnCommit = func(id int64, at time.Time) {
		mu.Lock()
		commits = append(commits, at)
		mu.Unlock()
		tr.Commit(id, at)
	}
	write := func(n int) {
		t.Helper()
		for c := 0; c < n; {
			wctx, stop := context.WithTimeout(ctx, 20*time.Millisecond)
			counts, err := w.Run(wctx, 0, demodata.Mix{})
			stop()
			if err != nil {
				t.Fatal(err)
			}
			c += int(counts.Inserts)
		}
	}
	// settle lets the tracker admit and check what was written: a few polls.
	settle := func() {
		t.Helper()
		if err := tr.WaitPolls(ctx, tr.Result().Polls+3); err != nil {
			t.Fatal(err)
		}
	}

	write(20)
	settle()
	mu.Lock()
	nA := len(commits)
	mu.Unlock()
	if r := tr.Result(); len(r.Lags) != 0 || r.Unseen != nA {
		t.Fatalf("before any refresh: %d seen, %d unseen; want 0 seen, %d unseen", len(r.Lags), r.Unseen, nA)
	}

	refreshStart := time.Now()
	if _, err := pool.Exec(ctx, `REFRESH MATERIALIZED VIEW CONCURRENTLY public.app_chargesummary`); err != nil {
		t.Fatal(err)
	}
	write(20)
	settle()
	mu.Lock()
	all := append([]time.Time(nil), commits...)
	mu.Unlock()
	r := tr.Result()
	if len(r.Lags) != nA || r.Unseen != len(all)-nA {
		t.Fatalf("after one refresh: %d seen, %d unseen; want %d seen, %d unseen", len(r.Lags), r.Unseen, nA, len(all)-nA)
	}
	for i, lag := range r.Lags {
		if seen := all[i].Add(lag); seen.Before(refreshStart) {
			t.Errorf("charge %d seen at %v, before the refresh that brought it started (%v)", i, seen, refreshStart)
		}
	}

	if _, err := pool.Exec(ctx, `REFRESH MATERIALIZED VIEW CONCURRENTLY public.app_chargesummary`); err != nil {
		t.Fatal(err)
	}
	settle()
	if r := tr.Result(); len(r.Lags) != len(all) || r.Unseen != 0 {
		t.Fatalf("after the second refresh: %d seen, %d unseen; want all %d seen", len(r.Lags), r.Unseen, len(all))
	}
}

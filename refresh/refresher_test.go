package refresh

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// testPool opens a pool on a fresh database with refresherd's schema and a
// source table src(k int, v int).
func testPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	return testPoolAt(t, pgtest.NewDB(t))
}

// testPoolAt is testPool on the database at url.
func testPoolAt(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := EnsureSchema(ctx, pool); err != nil {
		t.Fatal(err)
	}
	mustExec(t, pool, `CREATE TABLE public.src (k int NOT NULL, v int NOT NULL)`)
	mustExec(t, pool, `INSERT INTO public.src SELECT g % 10, g FROM generate_series(1, 1000) g`)
	return pool
}

func mustExec(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func testView(t *testing.T, name, query string) *config.View {
	t.Helper()
	q, err := config.ParseQualifiedName(name)
	if err != nil {
		t.Fatal(err)
	}
	src, _ := config.ParseQualifiedName("public.src")
	return &config.View{
		Name:      q,
		Query:     query,
		UniqueKey: []string{"k"},
		Sources:   []config.QualifiedName{src},
		Settings: config.Settings{
			Debounce: time.Second, MaxDelay: 10 * time.Second,
			StatementTimeout: 30 * time.Second, LockTimeout: 2 * time.Second,
			Concurrently: true, ChangeDetection: config.DetectNotify,
		},
	}
}

const sumQuery = `SELECT k, sum(v)::bigint AS total, count(*) AS n FROM public.src GROUP BY k`

type statusRow struct {
	asOf     *time.Time
	result   string
	failures int
	lastErr  *string
}

func readStatus(t *testing.T, pool *pgxpool.Pool, v *config.View) statusRow {
	t.Helper()
	var s statusRow
	err := pool.QueryRow(context.Background(), `SELECT data_as_of, coalesce(last_result, ''), consecutive_failures, last_error
		FROM refresherd.view_status WHERE view_name = $1`, v.Name.String()).Scan(&s.asOf, &s.result, &s.failures, &s.lastErr)
	if err != nil {
		t.Fatalf("read status of %s: %v", v.Name, err)
	}
	return s
}

func viewTotal(t *testing.T, pool *pgxpool.Pool, v *config.View) int64 {
	t.Helper()
	var total int64
	if err := pool.QueryRow(context.Background(), `SELECT coalesce(sum(total), 0)::bigint FROM `+v.Name.Sanitized()).Scan(&total); err != nil {
		t.Fatal(err)
	}
	return total
}

func TestRefreshPopulatesThenConcurrent(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t)
	v := testView(t, "public.sums", sumQuery)
	created, err := EnsureView(ctx, pool, v)
	if err != nil || !created {
		t.Fatalf("EnsureView = %v, %v; want created", created, err)
	}
	r := &Refresher{Pool: pool, Identity: "test"}

	// Never populated: CONCURRENTLY is impossible, a plain refresh populates.
	out, err := r.Refresh(ctx, v, "startup", nil)
	if err != nil {
		t.Fatal(err)
	}
	if out.Concurrently {
		t.Error("first refresh of an unpopulated view ran CONCURRENTLY")
	}
	if got := viewTotal(t, pool, v); got != 500500 {
		t.Fatalf("total = %d, want 500500", got)
	}
	st := readStatus(t, pool, v)
	if st.result != "success" || st.asOf == nil || !st.asOf.Equal(out.AsOf) {
		t.Fatalf("status = %+v, want success as of %v", st, out.AsOf)
	}

	mustExec(t, pool, `INSERT INTO public.src VALUES (1, 1000000)`)
	out2, err := r.Refresh(ctx, v, "change", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !out2.Concurrently {
		t.Error("refresh of a populated view did not run CONCURRENTLY")
	}
	if !out2.AsOf.After(out.AsOf) {
		t.Errorf("as-of did not advance: %v then %v", out.AsOf, out2.AsOf)
	}
	if got := viewTotal(t, pool, v); got != 1500500 {
		t.Fatalf("total = %d, want 1500500", got)
	}

	// concurrently: false means a plain refresh.
	v.Concurrently = false
	out3, err := r.Refresh(ctx, v, "manual", nil)
	if err != nil || out3.Concurrently {
		t.Fatalf("plain refresh: %v, concurrently %v", err, out3.Concurrently)
	}
	var logged int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM refresherd.refresh_log WHERE view_name = $1 AND result = 'success'`, v.Name.String()).Scan(&logged); err != nil || logged != 3 {
		t.Fatalf("refresh_log has %d successes (%v), want 3", logged, err)
	}
}

// TestFailedRefreshKeepsData covers a query error, a statement timeout and
// lock contention: each leaves the previous data and the previous as-of, and
// records the failure.
func TestFailedRefreshKeepsData(t *testing.T) {
	tests := []struct {
		name    string
		query   string
		prepare func(t *testing.T, pool *pgxpool.Pool, v *config.View) (release func())
		wantErr string
	}{
		{
			name:  "query error",
			query: `SELECT k, sum(v / CASE WHEN v < 0 THEN 0 ELSE 1 END)::bigint AS total, count(*) AS n FROM public.src GROUP BY k`,
			prepare: func(t *testing.T, pool *pgxpool.Pool, v *config.View) func() {
				mustExec(t, pool, `INSERT INTO public.src VALUES (3, -1)`)
				return func() {}
			},
			wantErr: "division by zero",
		},
		{
			name:  "statement timeout",
			query: `SELECT k, sum(v)::bigint AS total, count(*) AS n FROM public.src, LATERAL (SELECT pg_sleep(CASE WHEN v = 999999 THEN 5 ELSE 0 END)) s GROUP BY k`,
			prepare: func(t *testing.T, pool *pgxpool.Pool, v *config.View) func() {
				mustExec(t, pool, `INSERT INTO public.src VALUES (3, 999999)`)
				v.StatementTimeout = 300 * time.Millisecond
				return func() {}
			},
			wantErr: "statement timeout",
		},
		{
			name:  "lock held by another session",
			query: sumQuery,
			prepare: func(t *testing.T, pool *pgxpool.Pool, v *config.View) func() {
				v.LockTimeout = 300 * time.Millisecond
				// Another session's uncommitted refresh holds a lock that
				// conflicts with ours (LOCK TABLE does not take matviews).
				return holdTx(t, pool, `REFRESH MATERIALIZED VIEW `+v.Name.Sanitized())
			},
			wantErr: "lock timeout",
		},
		{
			name:  "another refresher holds the view lock",
			query: sumQuery,
			prepare: func(t *testing.T, pool *pgxpool.Pool, v *config.View) func() {
				v.LockTimeout = 300 * time.Millisecond
				return holdTx(t, pool, `SELECT pg_advisory_xact_lock($1)`, lockKey("view", v.Name.String()))
			},
			wantErr: "lock timeout",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			pool := testPool(t)
			v := testView(t, "public.sums", tt.query)
			if _, err := EnsureView(ctx, pool, v); err != nil {
				t.Fatal(err)
			}
			r := &Refresher{Pool: pool, Identity: "test"}
			good, err := r.Refresh(ctx, v, "startup", nil)
			if err != nil {
				t.Fatal(err)
			}
			before := viewTotal(t, pool, v)

			release := tt.prepare(t, pool, v)
			out, err := r.Refresh(ctx, v, "change", nil)
			release()
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Refresh error = %v, want %q", err, tt.wantErr)
			}
			if rerr := r.RecordFailure(ctx, v, "change", out.Duration, err); rerr != nil {
				t.Fatal(rerr)
			}
			if got := viewTotal(t, pool, v); got != before {
				t.Errorf("view total changed after a failed refresh: %d -> %d", before, got)
			}
			st := readStatus(t, pool, v)
			if st.result != "error" || st.failures != 1 || st.lastErr == nil || !strings.Contains(*st.lastErr, tt.wantErr) {
				t.Errorf("status = %+v, want error with %q", st, tt.wantErr)
			}
			if st.asOf == nil || !st.asOf.Equal(good.AsOf) {
				t.Errorf("as-of = %v, want unchanged %v", st.asOf, good.AsOf)
			}
		})
	}
}

// TestCancelledRefreshIsCancelledServerSide: cancelling the context stops
// the statement on the server, and the view keeps its data.
func TestCancelledRefreshIsCancelledServerSide(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t)
	v := testView(t, "public.slow", `SELECT k, sum(v)::bigint AS total, count(*) AS n FROM public.src, LATERAL (SELECT pg_sleep(CASE WHEN v = 777777 THEN 30 ELSE 0 END)) s GROUP BY k`)
	if _, err := EnsureView(ctx, pool, v); err != nil {
		t.Fatal(err)
	}
	r := &Refresher{Pool: pool, Identity: "test"}
	if _, err := r.Refresh(ctx, v, "startup", nil); err != nil {
		t.Fatal(err)
	}
	before := viewTotal(t, pool, v)
	mustExec(t, pool, `INSERT INTO public.src VALUES (3, 777777)`)
	cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := r.Refresh(cctx, v, "change", nil); err == nil {
		t.Fatal("cancelled refresh succeeded")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("cancel took %v", d)
	}
	// Nothing of ours may still run on the server.
	var running int
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'REFRESH MATERIALIZED VIEW%' AND state = 'active'`).Scan(&running); err != nil {
			t.Fatal(err)
		}
		if running == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if running != 0 {
		t.Fatalf("%d REFRESH statements still running after cancel", running)
	}
	if got := viewTotal(t, pool, v); got != before {
		t.Errorf("view changed by a cancelled refresh: %d -> %d", before, got)
	}
}

func TestEnsureViewIdempotentWithHostileNames(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t)
	mustExec(t, pool, `CREATE SCHEMA "we""ird sch.ema"`)
	mustExec(t, pool, `CREATE TABLE "we""ird sch.ema"."src ✓; DROP TABLE public.src;--" (k int NOT NULL, v int NOT NULL)`)
	mustExec(t, pool, `INSERT INTO "we""ird sch.ema"."src ✓; DROP TABLE public.src;--" VALUES (1, 2)`)
	name, err := config.ParseQualifiedName(`"we""ird sch.ema"."sum'); DROP TABLE public.src;--"`)
	if err != nil {
		t.Fatal(err)
	}
	src, err := config.ParseQualifiedName(`"we""ird sch.ema"."src ✓; DROP TABLE public.src;--"`)
	if err != nil {
		t.Fatal(err)
	}
	v := testView(t, "public.x", `SELECT k, sum(v)::bigint AS total FROM `+src.Sanitized()+` GROUP BY k`)
	v.Name, v.Sources = name, []config.QualifiedName{src}
	for i := range 3 {
		created, err := EnsureView(ctx, pool, v)
		if err != nil {
			t.Fatalf("EnsureView #%d: %v", i, err)
		}
		if created != (i == 0) {
			t.Fatalf("EnsureView #%d created = %v", i, created)
		}
	}
	r := &Refresher{Pool: pool, Identity: "test"}
	for range 2 {
		if _, err := r.Refresh(ctx, v, "manual", nil); err != nil {
			t.Fatal(err)
		}
	}
	var triggers, indexes int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass($1) AND NOT tgisinternal`, src.Sanitized()).Scan(&triggers); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_index WHERE indrelid = to_regclass($1)`, name.Sanitized()).Scan(&indexes); err != nil {
		t.Fatal(err)
	}
	if triggers != 1 || indexes != 1 {
		t.Fatalf("triggers = %d, indexes = %d; want 1 and 1", triggers, indexes)
	}
	// The injection attempts were names, nothing more.
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('public.src') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		t.Fatalf("public.src is gone: %v", err)
	}
}

func TestEnsureViewErrors(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t)
	mustExec(t, pool, `CREATE TABLE public.taken (k int)`)
	tests := []struct {
		name    string
		view    func() *config.View
		wantErr string
	}{
		{"name taken by a table", func() *config.View { return testView(t, "public.taken", sumQuery) }, "is not a materialized view"},
		{"missing source", func() *config.View {
			v := testView(t, "public.v1", sumQuery)
			v.Sources = append(v.Sources, config.QualifiedName{Schema: "public", Name: "nope"})
			return v
		}, "source table public.nope does not exist"},
		{"query error", func() *config.View { return testView(t, "public.v2", `SELECT k FROM public.nope`) }, "does not exist"},
		{"unique key not a column", func() *config.View {
			v := testView(t, "public.v3", sumQuery)
			v.UniqueKey = []string{"nope"}
			return v
		}, `column "nope" does not exist`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := EnsureView(ctx, pool, tt.view())
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
	// A failed set-up leaves nothing behind (one transaction).
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_class WHERE relname IN ('v1', 'v2', 'v3')`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d half-created relations left (%v)", n, err)
	}
}

// holdTx runs sql in a transaction left open until release (or cleanup).
func holdTx(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) (release func()) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() { once.Do(func() { _ = tx.Rollback(ctx) }) }
	t.Cleanup(release)
	if _, err := tx.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return release
}

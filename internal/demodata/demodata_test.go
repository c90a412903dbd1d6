package demodata_test

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/internal/demodata"
	"github.com/refresherd/refresherd/internal/pgcluster"
	"github.com/refresherd/refresherd/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func newPool(t *testing.T, ctx context.Context) *pgxpool.Pool {
	t.Helper()
	return poolOn(t, ctx, pgtest.NewDB(t))
}

func poolOn(t *testing.T, ctx context.Context, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func newCluster(t *testing.T) *pgcluster.Cluster {
	return pgtest.NewCluster(t, pgcluster.Options{})
}

func loaded(t *testing.T, ctx context.Context, s demodata.Size) *pgxpool.Pool {
	t.Helper()
	pool := newPool(t, ctx)
	if err := demodata.CreateSchema(ctx, pool); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := demodata.Load(ctx, pool, s); err != nil {
		t.Fatal(err)
	}
	t.Logf("loaded %d charges in %s", s.Charges, time.Since(t0).Round(time.Millisecond))
	return pool
}

type checksum struct {
	Count, Users, Jobs, NoJob, HW, Months, Groups int64
	Sum, MinAmount, MaxAmount                     string
	MinMonth, MaxMonth                            time.Time
}

func sums(t *testing.T, ctx context.Context, db demodata.Querier) checksum {
	t.Helper()
	var c checksum
	err := db.QueryRow(ctx, `SELECT count(*), sum(amount)::text, min(amount)::text, max(amount)::text,
		count(DISTINCT user_id), count(DISTINCT job_id), count(*) FILTER (WHERE job_id IS NULL),
		count(*) FILTER (WHERE type = 'hw'), count(DISTINCT month), min(month), max(month),
		(SELECT count(*) FROM (`+demodata.SummaryQuery+`) s)
		FROM app_charge`).Scan(&c.Count, &c.Sum, &c.MinAmount, &c.MaxAmount, &c.Users, &c.Jobs, &c.NoJob, &c.HW, &c.Months, &c.MinMonth, &c.MaxMonth, &c.Groups)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSchemaTwice(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := newPool(t, ctx)
	// Concurrent creators on a fresh database must not trip over each other
	// (CREATE ... IF NOT EXISTS alone races), and a second run is harmless.
	errs := make(chan error, 4)
	for range 4 {
		go func() { errs <- demodata.CreateSchema(ctx, pool) }()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := demodata.CreateSchema(ctx, pool); err != nil {
		t.Fatal(err)
	}
	// Django's names, deferrable foreign keys and FK indexes.
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_constraint
		WHERE conrelid = 'app_charge'::regclass AND contype = 'f' AND condeferrable AND condeferred
		AND conname IN ('app_charge_user_id_1eb0ac2b_fk_app_user_id', 'app_charge_job_id_4831a8bc_fk_app_job_id')`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("deferrable foreign keys: %d %v", n, err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_indexes WHERE tablename = 'app_charge'
		AND indexname IN ('app_charge_pkey', 'app_charge_user_id_1eb0ac2b', 'app_charge_job_id_4831a8bc')`).Scan(&n); err != nil || n != 3 {
		t.Fatalf("indexes: %d %v", n, err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO app_user (name) VALUES ('a')`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO app_charge (type, amount, month, user_id) VALUES ('xx', 1, '2026-01-01', 1)`); err == nil {
		t.Fatal("type 'xx' accepted")
	}
}

func TestLoadDeterministic(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s := demodata.DefaultSize(20_000)
	a := sums(t, ctx, loaded(t, ctx, s))
	b := sums(t, ctx, loaded(t, ctx, s))
	if a != b {
		t.Fatalf("same seed, different data:\n%+v\n%+v", a, b)
	}
	t.Logf("%+v", a)
	if a.Count != 20_000 || a.MinAmount < "0.01" || a.Months != 36 || a.Users != int64(s.Users) ||
		a.MaxMonth.Format(time.DateOnly) != demodata.LastMonth || a.MinMonth.Format(time.DateOnly) != "2023-12-01" {
		t.Fatalf("unexpected shape %+v", a)
	}
	if f := float64(a.NoJob) / float64(a.Count); f < 0.18 || f > 0.22 {
		t.Fatalf("no-job fraction %v", f)
	}
	if f := float64(a.HW) / float64(a.Count); f < 0.48 || f > 0.52 {
		t.Fatalf("hw fraction %v", f)
	}

	s.Seed = 2
	if c := sums(t, ctx, loaded(t, ctx, s)); c.Sum == a.Sum {
		t.Fatalf("different seeds, same sum %s", c.Sum)
	}
}

// Load re-creates keys and indexes exactly as the schema defines them.
func TestLoadKeepsSchema(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const defs = `SELECT string_agg(d, E'\n' ORDER BY d) FROM (
		SELECT conname || ' ' || pg_get_constraintdef(oid) AS d FROM pg_constraint WHERE conrelid = 'app_charge'::regclass
		UNION ALL SELECT indexdef FROM pg_indexes WHERE tablename = 'app_charge') x`
	fresh := newPool(t, ctx)
	if err := demodata.CreateSchema(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	var want, got string
	if err := fresh.QueryRow(ctx, defs).Scan(&want); err != nil {
		t.Fatal(err)
	}
	if err := loaded(t, ctx, demodata.DefaultSize(100)).QueryRow(ctx, defs).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("after Load:\n%s\nwant:\n%s", got, want)
	}
}

func TestLoadEdgeCases(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := loaded(t, ctx, demodata.Size{Charges: 0, Users: 1, Jobs: 1, Months: 1, Seed: -9223372036854775808})
	if err := demodata.Load(ctx, pool, demodata.DefaultSize(10)); err == nil {
		t.Fatal("second Load into non-empty tables succeeded")
	}
	var id int64
	if err := pool.QueryRow(ctx, `INSERT INTO app_charge (type, amount, month, user_id) VALUES ('hw', 1, '2026-01-01', 1) RETURNING id`).Scan(&id); err != nil || id != 1 {
		t.Fatalf("first id after empty load: %d %v", id, err)
	}
	if err := demodata.Load(ctx, pool, demodata.Size{Users: 0, Jobs: 1, Months: 1}); err == nil {
		t.Fatal("invalid size accepted")
	}
}

func TestDiff(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pool := loaded(t, ctx, demodata.DefaultSize(5_000))
	if _, err := pool.Exec(ctx, `CREATE MATERIALIZED VIEW public.app_chargesummary AS `+demodata.SummaryQuery); err != nil {
		t.Fatal(err)
	}
	check := func(wantMissing, wantExtra int64) {
		t.Helper()
		missing, extra, err := demodata.Diff(ctx, pool, "public.app_chargesummary")
		if err != nil {
			t.Fatal(err)
		}
		if missing != wantMissing || extra != wantExtra {
			t.Fatalf("missing=%d extra=%d, want %d %d", missing, extra, wantMissing, wantExtra)
		}
	}
	check(0, 0)
	// One changed amount: its group's row is missing and the stale one extra.
	if _, err := pool.Exec(ctx, `UPDATE app_charge SET amount = amount + 1 WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	check(1, 1)
	// A charge in a new group: one missing row.
	if _, err := pool.Exec(ctx, `INSERT INTO app_charge (type, amount, month, user_id) VALUES ('sw', 2, '1999-01-01', 1)`); err != nil {
		t.Fatal(err)
	}
	check(2, 1)
	if _, err := pool.Exec(ctx, `REFRESH MATERIALIZED VIEW public.app_chargesummary`); err != nil {
		t.Fatal(err)
	}
	check(0, 0)
	if _, _, err := demodata.Diff(ctx, pool, "public.nope"); err == nil {
		t.Fatal("Diff on a missing relation succeeded")
	}
}

// TestLoadTiming loads a big set when REFRESHERD_DEMODATA_CHARGES is set
// (e.g. 1000000) to check the loader's speed.
func TestLoadTiming(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("REFRESHERD_DEMODATA_CHARGES"))
	if n == 0 {
		t.Skip("set REFRESHERD_DEMODATA_CHARGES to time a big load")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	pool := loaded(t, ctx, demodata.DefaultSize(n))
	t0 := time.Now()
	c := sums(t, ctx, pool)
	t.Logf("checksum in %s: %+v", time.Since(t0), c)
}

// IndependentJobs makes nearly every charge its own group, deterministically,
// with the same user, job and month ranges; the demo's shape saturates.
func TestLoadIndependentJobs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s := demodata.DefaultSize(20_000)
	demo := sums(t, ctx, loaded(t, ctx, s))
	s.IndependentJobs = true
	a := sums(t, ctx, loaded(t, ctx, s))
	if b := sums(t, ctx, loaded(t, ctx, s)); a != b {
		t.Fatalf("same seed, different data:\n%+v\n%+v", a, b)
	}
	t.Logf("demo %+v\nindependent %+v", demo, a)
	if a.Count != 20_000 || a.Months != 36 || a.Users != int64(s.Users) || a.MaxMonth.Format(time.DateOnly) != demodata.LastMonth {
		t.Fatalf("unexpected shape %+v", a)
	}
	if f := float64(a.NoJob) / float64(a.Count); f < 0.18 || f > 0.22 {
		t.Fatalf("no-job fraction %v", f)
	}
	// 16k charges with a job in 200 x 1000 x 36 groups, 4k without in
	// 200 x 36: about 19.1k groups.
	if f := float64(a.Groups) / float64(a.Count); f < 0.9 {
		t.Fatalf("independent jobs: %d groups for %d charges (%.2f), want nearly one each", a.Groups, a.Count, f)
	}
	if demo.Groups >= a.Groups/2 {
		t.Fatalf("demo shape has %d groups, independent %d: the shapes do not differ", demo.Groups, a.Groups)
	}
}

package incremental

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/internal/pgtest"
)

// chargeQuery is the seed's summary: one row per user, job (or none) and
// month, with a stable text id.
const chargeQuery = `SELECT user_id::text || ':' || coalesce(job_id::text, '-') || ':' || month AS id, user_id, job_id, month,
	coalesce(sum(amount) FILTER (WHERE type = 'hw'), 0) AS hardware,
	coalesce(sum(amount) FILTER (WHERE type = 'sw'), 0) AS software
FROM public.app_charge GROUP BY user_id, job_id, month`

var (
	summaryName = config.QualifiedName{Schema: "public", Name: "app_chargesummary"}
	chargeName  = config.QualifiedName{Schema: "public", Name: "app_charge"}
)

// chargePlan is the Plan Analyze would make for chargeQuery.
func chargePlan() Plan {
	return Plan{
		View:   summaryName,
		Query:  chargeQuery,
		Source: chargeName,
		Keys: []Key{
			{Column: "user_id", Source: "user_id", Type: "integer"},
			{Column: "job_id", Source: "job_id", Type: "integer", Nullable: true},
			{Column: "month", Source: "month", Type: "date"},
		},
		Columns: []Column{
			{Name: "id", Type: "text"}, {Name: "user_id", Type: "integer"}, {Name: "job_id", Type: "integer"},
			{Name: "month", Type: "date"}, {Name: "hardware", Type: "numeric"}, {Name: "software", Type: "numeric"},
		},
		UniqueKey:       []string{"id"},
		UniqueFromGroup: true,
		Reads:           []string{"type", "amount", "month", "user_id", "job_id"},
		Hash:            "0123456789abcdef",
	}
}

// testPool opens a pool on a fresh database with the refresherd schema and
// Django's app_charge (its user_id and job_id foreign-key indexes included
// when djangoIndexes).
func testPool(t *testing.T, djangoIndexes bool) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), pgtest.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	mustExec(t, pool, `CREATE SCHEMA refresherd`)
	mustExec(t, pool, `CREATE TABLE public.app_charge (
		id serial PRIMARY KEY,
		type varchar(2) NOT NULL,
		amount numeric(8,2) NOT NULL,
		month date NOT NULL,
		user_id int NOT NULL,
		job_id int NULL)`)
	if djangoIndexes {
		mustExec(t, pool, `CREATE INDEX app_charge_user_id ON public.app_charge (user_id)`)
		mustExec(t, pool, `CREATE INDEX app_charge_job_id ON public.app_charge (job_id)`)
	}
	return pool
}

// seed inserts n charges over users 1..users, jobs 1..jobs or none, 12
// months of 2026.
func seed(t *testing.T, pool *pgxpool.Pool, n, users, jobs int) {
	t.Helper()
	mustExec(t, pool, `INSERT INTO public.app_charge (type, amount, month, user_id, job_id)
		SELECT CASE WHEN g % 3 = 0 THEN 'sw' ELSE 'hw' END, (g % 1000) / 10.0,
			date '2026-01-01' + ((g / 7) % 12) * interval '1 month',
			1 + g % $2,
			nullif(g % ($3 + 1), 0)
		FROM generate_series(1, $1) g`, n, users, jobs)
}

// execer is a pool, connection or transaction.
type execer interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}

func mustExec(t *testing.T, db execer, sql string, args ...any) {
	t.Helper()
	if _, err := db.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// inTx runs fn in a transaction of the given isolation, committed when fn
// returns nil.
func inTx(t *testing.T, pool *pgxpool.Pool, iso pgx.TxIsoLevel, fn func(pgx.Tx) error) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: iso}, fn)
}

// explainRound returns the plan of p's round statement, EXPLAINed with
// options (e.g. "(ANALYZE, COSTS OFF)") at REPEATABLE READ in a transaction
// that is rolled back, so an EXPLAIN ANALYZE applies nothing.
func explainRound(t *testing.T, pool *pgxpool.Pool, p Plan, options string) string {
	t.Helper()
	errRollBack := errors.New("roll back")
	var plan []string
	err := inTx(t, pool, pgx.RepeatableRead, func(tx pgx.Tx) error {
		rows, err := tx.Query(context.Background(), "EXPLAIN "+options+" "+applySQL(p), pgx.QueryExecModeExec)
		if err != nil {
			return err
		}
		if plan, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return err
		}
		return errRollBack
	})
	if !errors.Is(err, errRollBack) {
		t.Fatalf("explain the round: %v", err)
	}
	return strings.Join(plan, "\n")
}

func install(t *testing.T, pool *pgxpool.Pool, p Plan) {
	t.Helper()
	if err := inTx(t, pool, pgx.ReadCommitted, func(tx pgx.Tx) error { return Install(context.Background(), tx, p) }); err != nil {
		t.Fatalf("install: %v", err)
	}
}

func rebuild(t *testing.T, pool *pgxpool.Pool, p Plan) RebuildResult {
	t.Helper()
	var res RebuildResult
	if err := inTx(t, pool, pgx.RepeatableRead, func(tx pgx.Tx) error {
		var err error
		res, err = Rebuild(context.Background(), tx, p)
		return err
	}); err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	return res
}

// round runs a round as the strategy does: REPEATABLE READ, NeedsRebuild
// first (it must say nothing), then Apply.
func round(t *testing.T, pool *pgxpool.Pool, p Plan) Round {
	t.Helper()
	var r Round
	if err := inTx(t, pool, pgx.RepeatableRead, func(tx pgx.Tx) error {
		reason, err := NeedsRebuild(context.Background(), tx, p)
		if err != nil {
			return err
		}
		if reason != "" {
			t.Fatalf("round: needs a rebuild: %s", reason)
		}
		r, err = Apply(context.Background(), tx, p)
		return err
	}); err != nil {
		t.Fatalf("round: %v", err)
	}
	return r
}

func needsRebuild(t *testing.T, pool *pgxpool.Pool, p Plan) string {
	t.Helper()
	reason, err := NeedsRebuild(context.Background(), pool, p)
	if err != nil {
		t.Fatalf("needs rebuild: %v", err)
	}
	return reason
}

// assertEqual checks, independently of Verify, that the summary holds
// exactly the query's rows (EXCEPT ALL both ways, so duplicates count).
func assertEqual(t *testing.T, pool *pgxpool.Pool, p Plan) {
	t.Helper()
	view := p.View.Sanitized()
	rows, err := pool.Query(context.Background(), `SELECT 'summary only', d::text FROM (SELECT * FROM `+view+` EXCEPT ALL SELECT * FROM (`+p.Query+`) q) d
		UNION ALL SELECT 'query only', d::text FROM (SELECT * FROM (`+p.Query+`) q EXCEPT ALL SELECT * FROM `+view+`) d ORDER BY 2, 1`)
	if err != nil {
		t.Fatalf("compare: %v", err)
	}
	diff, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var side, row string
		err := r.Scan(&side, &row)
		return side + " " + row, err
	})
	if err != nil {
		t.Fatalf("compare: %v", err)
	}
	if len(diff) > 0 {
		t.Fatalf("summary differs from the query in %d row(s):\n%s", len(diff), strings.Join(diff, "\n"))
	}
}

func count(t *testing.T, db Queryer, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := db.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func logRows(t *testing.T, pool *pgxpool.Pool, p Plan) int64 {
	t.Helper()
	return count(t, pool, `SELECT count(*) FROM `+LogTable(p).Sanitized())
}

// ready installs the capture and builds the summary.
func ready(t *testing.T, pool *pgxpool.Pool, p Plan) {
	t.Helper()
	install(t, pool, p)
	rebuild(t, pool, p)
	assertEqual(t, pool, p)
	if r := needsRebuild(t, pool, p); r != "" {
		t.Fatalf("after rebuild: needs rebuild: %s", r)
	}
}

// Package demodata holds the demo app's Django-shaped schema (app_user,
// app_job, app_charge), a fast deterministic data loader, the summary query
// the shipped view uses, and a charge writer for the demo and benchmarks.
package demodata

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

//go:embed schema.sql
var schemaSQL string

// SchemaSQL returns the DDL that CreateSchema runs.
func SchemaSQL() string { return schemaSQL }

// Querier is what the functions here need from a connection: *pgx.Conn,
// *pgxpool.Pool, *pgxpool.Conn and pgx.Tx all qualify.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

// schemaLockKey serialises concurrent CreateSchema calls on one database:
// CREATE ... IF NOT EXISTS is not safe against a concurrent creator.
const schemaLockKey = 0x72656672657368 // "refresh"

// CreateSchema creates the demo tables if they do not exist.
func CreateSchema(ctx context.Context, db Querier) error {
	// One simple-protocol string runs as one implicit transaction, so the
	// advisory lock covers all of the DDL.
	sql := "SELECT pg_advisory_xact_lock(" + strconv.Itoa(schemaLockKey) + ");\n" + schemaSQL
	if _, err := db.Exec(ctx, sql); err != nil {
		return fmt.Errorf("demodata: create schema: %w", err)
	}
	return nil
}

// Django's names for the foreign keys of app_charge and their indexes (as in
// schema.sql), which Load drops and re-creates.
const (
	fkUser = `"app_charge_user_id_1eb0ac2b_fk_app_user_id"`
	fkJob  = `"app_charge_job_id_4831a8bc_fk_app_job_id"`
	ixUser = `"app_charge_user_id_1eb0ac2b"`
	ixJob  = `"app_charge_job_id_4831a8bc"`
)

// SummaryQuery is the aggregate the shipped summary view (app_chargesummary)
// is defined by: one row per user, job (NULL is its own group) and month,
// with a stable text id.
const SummaryQuery = `SELECT c.user_id::text || ':' || coalesce(c.job_id::text, '-') || ':' || to_char(c.month, 'YYYY-MM-DD') AS id,
       c.user_id, c.job_id, c.month,
       coalesce(sum(c.amount) FILTER (WHERE c.type = 'hw'), 0)::numeric(19,2) AS hardware,
       coalesce(sum(c.amount) FILTER (WHERE c.type = 'sw'), 0)::numeric(19,2) AS software
FROM public.app_charge c
GROUP BY c.user_id, c.job_id, c.month`

// Diff compares the summary relation view (with SummaryQuery's columns;
// "schema.name" or "name", the
// parts are quoted, so pass them as stored, e.g. "public.app_chargesummary")
// with SummaryQuery over the current data, as multisets: missing counts rows
// of the truth absent from view, extra rows of view absent from the truth.
// Both are 0 when the view is settled. Run it in a REPEATABLE READ
// transaction if writers are active.
func Diff(ctx context.Context, db Querier, view string) (missing, extra int64, err error) {
	rel := QuoteQualified(view)
	sql := `WITH v AS MATERIALIZED (SELECT id, user_id, job_id, month, hardware, software FROM ` + rel + `),
     t AS MATERIALIZED (` + SummaryQuery + `)
SELECT (SELECT count(*) FROM (SELECT * FROM t EXCEPT ALL SELECT * FROM v) AS m),
       (SELECT count(*) FROM (SELECT * FROM v EXCEPT ALL SELECT * FROM t) AS e)`
	if err := db.QueryRow(ctx, sql).Scan(&missing, &extra); err != nil {
		return 0, 0, fmt.Errorf("demodata: diff %s: %w", view, err)
	}
	return missing, extra, nil
}

// QuoteQualified quotes "schema.name" (split at the first dot) or "name" as
// an identifier.
func QuoteQualified(name string) string {
	if schema, rel, ok := strings.Cut(name, "."); ok {
		return pgx.Identifier{schema, rel}.Sanitize()
	}
	return pgx.Identifier{name}.Sanitize()
}

// Size describes a data set. Users get ids 1..Users, jobs 1..Jobs, charges
// 1..Charges.
type Size struct {
	Charges       int
	Users         int
	Jobs          int
	Months        int     // consecutive months ending LastMonth
	NoJobFraction float64 // share of charges with job_id NULL
	Seed          int64
	// IndependentJobs draws a charge's user, job and month independently
	// (a job is not tied to one user and a run of months), so nearly every
	// charge with a job is a (user, job, month) group of its own: about
	// 950k groups at 1M charges with DefaultSize's users, jobs and months.
	// False (the default) is the demo's shape, where groups saturate.
	IndependentJobs bool
}

// LastMonth is the newest month of the data.
const LastMonth = "2026-11-01"

// DefaultSize is the benchmark shape: 10k users, 50k jobs, 36 months, 20% of
// charges without a job, seed 1. Below 1M charges users and jobs shrink in
// proportion (at least 10 each) so that small test loads stay fast and groups
// still hold several charges.
func DefaultSize(charges int) Size {
	return Size{
		Charges:       charges,
		Users:         min(10_000, max(10, charges/100)),
		Jobs:          min(50_000, max(10, charges/20)),
		Months:        36,
		NoJobFraction: 0.2,
		Seed:          1,
	}
}

func (s Size) validate() error {
	switch {
	case s.Charges < 0:
		return errors.New("charges < 0")
	case s.Users < 1 || s.Jobs < 1 || s.Months < 1:
		return fmt.Errorf("users (%d), jobs (%d) and months (%d) must be >= 1", s.Users, s.Jobs, s.Months)
	case s.NoJobFraction < 0 || s.NoJobFraction > 1:
		return fmt.Errorf("no-job fraction %v not in [0, 1]", s.NoJobFraction)
	}
	return nil
}

// seedFor derives an independent hash seed for stream k from the data seed.
func (s Size) seedFor(k uint64) string {
	x := uint64(s.Seed)*0x9E3779B97F4A7C15 + k*0xBF58476D1CE4E5B9
	x ^= x >> 31
	// Quoted: the most negative bigint is not a valid unquoted literal.
	return "'" + strconv.FormatInt(int64(x), 10) + "'::bigint"
}

// chargeSelect returns a SELECT of (g, type, amount, month, user_id, job_id)
// computing charge number g of the data set for every row of from, which
// must define column g (e.g. "generate_series(1, 100) AS s(g)"). Every value
// is a seeded hash of g, so a charge depends only on (Size, g): the load is
// deterministic and needs no ORDER BY, and the writer draws new charges from
// the same distribution by picking random g.
//
// Shape: a charge without a job goes to a random user and month; a job
// belongs to one user (a hash of the job id) and runs for 1-6 consecutive
// months, and its charges fall in those months, so jobs form a realistic
// number of (user, job, month) groups. With IndependentJobs every charge
// draws its user and month independently of its job.
func (s Size) chargeSelect(from string) string {
	const mask = "9223372036854775807" // clears the sign bit: values stay >= 0
	h := func(col string, k uint64) string {
		return "(hashint8extended(" + col + ", " + s.seedFor(k) + ") & " + mask + ")"
	}
	noJobPPM := strconv.Itoa(int(s.NoJobFraction*1_000_000 + 0.5))
	users, jobs, months := strconv.Itoa(s.Users), strconv.Itoa(s.Jobs), strconv.Itoa(s.Months)
	// Who and when: a job's user and months (the demo), or a user and a
	// month of the charge's own (IndependentJobs: own hash streams, as
	// r.pick also picks the job and pick % users would tie the two).
	who := `CROSS JOIN LATERAL (SELECT least(1 + ` + h("j.job_id", 6) + ` % 6, ` + months + `) AS len) AS jl
CROSS JOIN LATERAL (SELECT CASE WHEN j.job_id IS NULL THEN 1 + r.pick % ` + users + `
                                ELSE 1 + ` + h("j.job_id", 7) + ` % ` + users + ` END AS user_id,
                           CASE WHEN j.job_id IS NULL THEN r.at % ` + months + `
                                ELSE ` + h("j.job_id", 8) + ` % (` + months + ` - jl.len + 1) + r.at % jl.len END AS idx) AS m`
	if s.IndependentJobs {
		who = `CROSS JOIN LATERAL (SELECT 1 + ` + h("s.g", 9) + ` % ` + users + ` AS user_id, ` + h("s.g", 10) + ` % ` + months + ` AS idx) AS m`
	}
	return `SELECT s.g,
       CASE WHEN r.kind % 2 = 0 THEN 'hw' ELSE 'sw' END AS type,
       ((1 + r.amt % 99999)::numeric / 100)::numeric(8,2) AS amount,
       (DATE '` + LastMonth + `' - make_interval(months => (` + months + ` - 1 - m.idx)::int))::date AS month,
       m.user_id,
       j.job_id
FROM ` + from + `
CROSS JOIN LATERAL (SELECT ` + h("s.g", 1) + ` AS kind, ` + h("s.g", 2) + ` AS amt, ` + h("s.g", 3) + ` AS nojob,
                           ` + h("s.g", 4) + ` AS pick, ` + h("s.g", 5) + ` AS at) AS r
CROSS JOIN LATERAL (SELECT CASE WHEN r.nojob % 1000000 < ` + noJobPPM + ` THEN NULL ELSE 1 + r.pick % ` + jobs + ` END AS job_id) AS j
` + who
}

// Load fills the empty demo tables (see CreateSchema) with s: users 1..Users
// named "User n", jobs 1..Jobs named "Job n" (job 1 is "Test Job"), charges
// 1..Charges. The same Size gives the same data. It runs in one transaction
// that drops app_charge's foreign keys and their indexes, inserts, and
// re-creates them under the same names (the table is locked meanwhile), then
// advances the id sequences and runs VACUUM ANALYZE (only ANALYZE when db is
// a transaction), so plans and the visibility map are ready and the first
// reader does not pay for setting hint bits. Create views over the tables
// after Load: it does not touch them, but objects depending on the dropped
// indexes or keys would make it fail.
func Load(ctx context.Context, db Querier, s Size) error {
	if err := s.validate(); err != nil {
		return fmt.Errorf("demodata: load: %w", err)
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("demodata: load: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	var nonEmpty bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM app_charge) OR EXISTS (SELECT FROM app_user) OR EXISTS (SELECT FROM app_job)`).Scan(&nonEmpty); err != nil {
		return fmt.Errorf("demodata: load: %w", err)
	}
	if nonEmpty {
		return errors.New("demodata: load: tables app_user, app_job, app_charge must be empty")
	}
	n := strconv.Itoa
	// Checking 2 deferred foreign keys row by row at commit and inserting
	// into 2 secondary indexes in random order cost 3-4 times more than
	// building the indexes and validating the keys once afterwards.
	steps := []struct{ name, sql string }{
		{"settings", `SET LOCAL maintenance_work_mem = '256MB'`},
		{"drop keys", `ALTER TABLE app_charge DROP CONSTRAINT ` + fkUser + `, DROP CONSTRAINT ` + fkJob},
		{"drop indexes", `DROP INDEX ` + ixUser + `, ` + ixJob},
		{"users", `INSERT INTO app_user (id, name) SELECT g, 'User ' || g FROM generate_series(1, ` + n(s.Users) + `) AS g`},
		{"jobs", `INSERT INTO app_job (id, name) SELECT g, CASE WHEN g = 1 THEN 'Test Job' ELSE 'Job ' || g END FROM generate_series(1, ` + n(s.Jobs) + `) AS g`},
		{"charges", `INSERT INTO app_charge (id, type, amount, month, user_id, job_id)
SELECT g, type, amount, month, user_id, job_id FROM (` + s.chargeSelect("generate_series(1, "+n(s.Charges)+") AS s(g)") + `) AS c`},
		{"index user_id", `CREATE INDEX ` + ixUser + ` ON "app_charge" ("user_id")`},
		{"index job_id", `CREATE INDEX ` + ixJob + ` ON "app_charge" ("job_id")`},
		{"add keys", `ALTER TABLE app_charge
    ADD CONSTRAINT ` + fkUser + ` FOREIGN KEY ("user_id") REFERENCES "app_user" ("id") DEFERRABLE INITIALLY DEFERRED,
    ADD CONSTRAINT ` + fkJob + ` FOREIGN KEY ("job_id") REFERENCES "app_job" ("id") DEFERRABLE INITIALLY DEFERRED`},
		{"sequences", `SELECT setval(pg_get_serial_sequence('app_user', 'id'), ` + n(s.Users) + `),
       setval(pg_get_serial_sequence('app_job', 'id'), ` + n(s.Jobs) + `),
       setval(pg_get_serial_sequence('app_charge', 'id'), ` + n(max(s.Charges, 1)) + `, ` + strconv.FormatBool(s.Charges > 0) + `)`},
	}
	for _, st := range steps {
		if _, err := tx.Exec(ctx, st.sql); err != nil {
			return fmt.Errorf("demodata: load %s: %w", st.name, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("demodata: load commit: %w", err)
	}

	analyze := "VACUUM (ANALYZE) app_user, app_job, app_charge"
	if _, inTx := db.(pgx.Tx); inTx {
		analyze = "ANALYZE app_user, app_job, app_charge"
	}
	if _, err := db.Exec(ctx, analyze); err != nil {
		return fmt.Errorf("demodata: load analyze: %w", err)
	}
	return nil
}

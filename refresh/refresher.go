package refresh

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
)

// Outcome describes one committed refresh.
type Outcome struct {
	AsOf         time.Time // every change committed before this is in the view
	FinishedAt   time.Time
	Duration     time.Duration
	Concurrently bool
	// Rebuilt is why an incremental summary was rebuilt in this refresh
	// (a RebuildReasons value); "" for a round or a full refresh.
	Rebuilt string
	// Touched is how many groups an incremental round recomputed.
	Touched int64
	// Backlog, when set, is the view's change log read after the commit:
	// what is owed now, replacing what change detection saw during the
	// refresh (keys the refresh drained were still visible until it
	// committed).
	Backlog *Backlog
}

// Backlog is what a view's change log holds: whether any change is owed,
// and the oldest one's data time.
type Backlog struct {
	Owed   bool
	Oldest time.Time
}

// Refresher runs refresh transactions against the pool.
type Refresher struct {
	Pool     *pgxpool.Pool
	Identity string // host/pod recorded in the status table
}

const upsertSuccessSQL = `
INSERT INTO refresherd.view_status AS s
    (view_name, data_as_of, last_success_at, last_attempt_at, last_result, last_error,
     last_trigger, last_duration_seconds, consecutive_failures, refreshed_by, strategy)
VALUES ($1, $2, clock_timestamp(), now(), 'success', NULL,
     $3, extract(epoch FROM clock_timestamp() - now()), 0, $4, $5)
ON CONFLICT (view_name) DO UPDATE SET
    data_as_of = excluded.data_as_of,
    last_success_at = excluded.last_success_at,
    last_attempt_at = excluded.last_attempt_at,
    last_result = excluded.last_result,
    last_error = NULL,
    last_trigger = excluded.last_trigger,
    last_duration_seconds = excluded.last_duration_seconds,
    consecutive_failures = 0,
    refreshed_by = excluded.refreshed_by,
    strategy = excluded.strategy
RETURNING last_success_at, last_duration_seconds`

const logSuccessSQL = `
WITH pruned AS (
    DELETE FROM refresherd.refresh_log
    WHERE view_name = $1 AND finished_at < now() - interval '7 days'
)
INSERT INTO refresherd.refresh_log
    (view_name, trigger, result, started_at, finished_at, data_as_of, refreshed_by)
VALUES ($1, $2, 'success', now(), clock_timestamp(), $3, $4)`

const recordFailureSQL = `
WITH s AS (
    INSERT INTO refresherd.view_status AS s
        (view_name, last_attempt_at, last_result, last_error, last_trigger,
         last_duration_seconds, consecutive_failures, refreshed_by)
    VALUES ($1, clock_timestamp() - make_interval(secs => $4), 'error', $2, $3, $4, 1, $5)
    ON CONFLICT (view_name) DO UPDATE SET
        last_attempt_at = excluded.last_attempt_at,
        last_result = 'error',
        last_error = excluded.last_error,
        last_trigger = excluded.last_trigger,
        last_duration_seconds = excluded.last_duration_seconds,
        consecutive_failures = s.consecutive_failures + 1,
        refreshed_by = excluded.refreshed_by
)
INSERT INTO refresherd.refresh_log
    (view_name, trigger, result, started_at, finished_at, error, refreshed_by)
VALUES ($1, $3, 'error', clock_timestamp() - make_interval(secs => $4), clock_timestamp(), $2, $5)`

// Refresh refreshes one view in one transaction: timeouts, the per-view
// advisory lock (two refreshers never overlap, even while leadership moves),
// the snapshot time, REFRESH, and the status row, committed together. On
// error nothing of it commits: the view keeps its previous data.
// fence, when not nil, is checked last before COMMIT: a replica that lost
// leadership meanwhile commits nothing.
func (r *Refresher) Refresh(ctx context.Context, v *config.View, trigger Trigger, fence Fence) (Outcome, error) {
	start := time.Now()
	// The server's timeouts stop a live server; this stops waiting for one
	// that no longer answers.
	ctx, cancel := context.WithTimeout(ctx, RefreshBound(v))
	defer cancel()
	out, err := r.refreshTx(ctx, v, trigger, fence)
	out.Duration = time.Since(start)
	if err != nil {
		return out, fmt.Errorf("refresh %s: %w", v.Name, err)
	}
	return out, nil
}

func (r *Refresher) refreshTx(ctx context.Context, v *config.View, trigger Trigger, fence Fence) (Outcome, error) {
	var out Outcome
	conn, err := acquire(ctx, r.Pool)
	if err != nil {
		return out, err
	}
	defer conn.Release()
	tx, err := begin(ctx, conn)
	if err != nil {
		return out, err
	}
	defer rollback(ctx, tx)

	if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true)`,
		pgDuration(v.StatementTimeout), pgDuration(v.LockTimeout)); err != nil {
		return out, fmt.Errorf("set timeouts: %w", err)
	}
	// If the daemon dies mid-refresh (SIGKILL, OOM, a lost node), the server
	// only notices the closed socket when it next talks to the client: the
	// REFRESH would run on for up to statement_timeout, holding the view's
	// locks, and the next leader's refresh would wait for it. This makes the
	// server check the client every second during the statement. The
	// setting exists from PostgreSQL 14 and not on every platform: where it
	// cannot be set, go on without it.
	// Also flush this backend's statistics at commit (PostgreSQL 15+), so
	// the view's dead-row count is current when MaybeVacuum reads it.
	if _, err := tx.Exec(ctx, `DO $$ BEGIN
    PERFORM set_config('client_connection_check_interval', '1s', true);
EXCEPTION WHEN OTHERS THEN NULL;
END $$;
DO $$ BEGIN
    PERFORM pg_stat_force_next_flush();
EXCEPTION WHEN OTHERS THEN NULL;
END $$`); err != nil {
		return out, fmt.Errorf("set client check: %w", err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey("view", v.Name.String())); err != nil {
		return out, fmt.Errorf("take view lock: %w", err)
	}
	var populated bool
	var kind string
	err = tx.QueryRow(ctx, `SELECT clock_timestamp(), c.relispopulated, c.relkind::text
		FROM pg_catalog.pg_class c WHERE c.oid = to_regclass($1)`, v.Name.Sanitized()).Scan(&out.AsOf, &populated, &kind)
	if errors.Is(err, pgx.ErrNoRows) {
		return out, fmt.Errorf("materialized view %s does not exist", v.Name)
	}
	if err != nil {
		return out, fmt.Errorf("read view state: %w", err)
	}
	if kind != "m" {
		return out, fmt.Errorf("%s is not a materialized view (relkind %q)", v.Name, kind)
	}
	// CONCURRENTLY fails on a view that was never populated: populate it
	// once with a plain refresh.
	out.Concurrently = v.Concurrently && populated
	stmt := "REFRESH MATERIALIZED VIEW "
	if out.Concurrently {
		stmt += "CONCURRENTLY "
	}
	if _, err := tx.Exec(ctx, stmt+v.Name.Sanitized()); err != nil {
		return out, fmt.Errorf("%s: %w", stmt[:len(stmt)-1], err)
	}
	if err := recordAndCommit(ctx, tx, v, &out, trigger, r.Identity, config.StrategyFull, fence); err != nil {
		return out, err
	}
	return out, nil
}

// recordAndCommit ends a successful refresh transaction of any strategy:
// the status row and the log row (in the same transaction as the data, so
// they never claim a refresh that did not commit), the fence, COMMIT. It
// sets out.FinishedAt.
func recordAndCommit(ctx context.Context, tx pgx.Tx, v *config.View, out *Outcome, trigger Trigger, identity, strategy string, fence Fence) error {
	var seconds float64
	if err := tx.QueryRow(ctx, upsertSuccessSQL, v.Name.String(), out.AsOf, trigger, identity, strategy).Scan(&out.FinishedAt, &seconds); err != nil {
		return fmt.Errorf("record status: %w", err)
	}
	if _, err := tx.Exec(ctx, logSuccessSQL, v.Name.String(), trigger, out.AsOf, identity); err != nil {
		return fmt.Errorf("record log: %w", err)
	}
	if fence != nil {
		if err := fence(ctx, tx); err != nil {
			return fmt.Errorf("fence: %w", err)
		}
	}
	return commit(ctx, tx)
}

// acquire takes a pool connection, waiting at most AcquireTimeout.
func acquire(ctx context.Context, pool *pgxpool.Pool) (*pgxpool.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, AcquireTimeout)
	defer cancel()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquire connection: %w", err)
	}
	return conn, nil
}

// begin starts a transaction on conn within BeginTimeout.
func begin(ctx context.Context, conn *pgxpool.Conn) (pgx.Tx, error) {
	ctx, cancel := context.WithTimeout(ctx, BeginTimeout)
	defer cancel()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	return tx, nil
}

// commit commits tx within CommitTimeout.
func commit(ctx context.Context, tx pgx.Tx) error {
	ctx, cancel := context.WithTimeout(ctx, CommitTimeout)
	defer cancel()
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// rollback ends tx unless it committed (then it is a no-op), detached from
// ctx's cancellation so the transaction ends cleanly, within
// RollbackTimeout; if that passes, pgx closes the connection, which ends
// the transaction server-side too.
func rollback(ctx context.Context, tx pgx.Tx) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), RollbackTimeout)
	defer cancel()
	_ = tx.Rollback(ctx)
}

// RecordFailure writes a failed attempt in a transaction of its own, so the
// status never claims a refresh that did not commit. It must work during
// shutdown, hence its own short deadline detached from ctx's cancellation.
func (r *Refresher) RecordFailure(ctx context.Context, v *config.View, trigger Trigger, dur time.Duration, refreshErr error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), RecordFailureTimeout)
	defer cancel()
	if _, err := r.Pool.Exec(ctx, recordFailureSQL, v.Name.String(), errorText(refreshErr), trigger, dur.Seconds(), r.Identity); err != nil {
		return fmt.Errorf("record failure of %s: %w", v.Name, err)
	}
	return nil
}

// errorText is the message stored for operators: the server's message and
// code when there is one.
func errorText(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return fmt.Sprintf("%s (SQLSTATE %s)", err.Error(), pgErr.Code)
	}
	return err.Error()
}

// isCanceled reports whether err comes from our own cancellation.
func isCanceled(ctx context.Context, err error) bool {
	return ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err))
}

// pgDuration formats d for a PostgreSQL time setting in milliseconds.
func pgDuration(d time.Duration) string {
	return fmt.Sprintf("%dms", max(d.Milliseconds(), 1))
}

// MaybeVacuum runs VACUUM (ANALYZE) on the view when its dead rows reach
// the view's vacuum_threshold. The count comes from the statistics system,
// which may lag the refresh by a moment: the next refresh catches up.
func (r *Refresher) MaybeVacuum(ctx context.Context, v *config.View) (dead int64, vacuumed bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, v.StatementTimeout)
	defer cancel()
	if err := r.Pool.QueryRow(ctx, `SELECT coalesce(pg_stat_get_dead_tuples(to_regclass($1)), 0)`, v.Name.Sanitized()).Scan(&dead); err != nil {
		return 0, false, fmt.Errorf("count dead rows of %s: %w", v.Name, err)
	}
	if dead < int64(v.VacuumThreshold) {
		return dead, false, nil
	}
	if _, err := r.Pool.Exec(ctx, "VACUUM (ANALYZE) "+v.Name.Sanitized()); err != nil {
		return dead, false, fmt.Errorf("vacuum %s: %w", v.Name, err)
	}
	return dead, true, nil
}

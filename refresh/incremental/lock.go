package incremental

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/refresherd/refresherd/config"
)

// ErrNoRoundLock is LockRound's error when the view's round lock does not
// exist: run EnsureRoundLock (Install does) and begin again.
var ErrNoRoundLock = errors.New("round lock missing")

// EnsureRoundLock creates the view's round lock (RoundLock) when missing.
// Serialise it with other set-up.
func EnsureRoundLock(ctx context.Context, tx pgx.Tx, view config.QualifiedName) error {
	lock := RoundLock(view)
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT pg_catalog.to_regclass($1) IS NOT NULL`, lock.Sanitized()).Scan(&exists); err != nil {
		return fmt.Errorf("create round lock of %s: look up %s: %w", view, lock, err)
	}
	if exists {
		return nil
	}
	if _, err := tx.Exec(ctx, "CREATE VIEW "+lock.Sanitized()+" AS SELECT NULL::pg_catalog.int4 AS unused"); err != nil {
		return fmt.Errorf("create round lock of %s: %w", view, err)
	}
	var stmt string
	if err := tx.QueryRow(ctx, `SELECT pg_catalog.format('COMMENT ON VIEW %s IS %L', $1::text, $2::text)`, lock.Sanitized(),
		"refresherd: locked by each round of "+view.String()+" before its snapshot; holds no data").Scan(&stmt); err != nil {
		return fmt.Errorf("create round lock of %s: comment: %w", view, err)
	}
	if _, err := tx.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("create round lock of %s: comment: %w", view, err)
	}
	return nil
}

// LockRound serialises tx with every other round and rebuild of view, in
// this and other processes, until tx ends. It must be the transaction's
// first statement but for SET: LOCK takes no snapshot, so the snapshot of a
// REPEATABLE READ round, taken by its next statement, sees everything the
// round before it committed. (A lock taken by a SELECT, such as
// pg_advisory_xact_lock, comes after that statement's snapshot: a round
// that waited would build on data older than its predecessor's commit.)
// EXCLUSIVE conflicts with itself but not with a reader's ACCESS SHARE.
// The wait is bounded by the session's lock_timeout.
func LockRound(ctx context.Context, tx pgx.Tx, view config.QualifiedName) error {
	lock := RoundLock(view)
	// Simple protocol (no arguments): nothing is prepared, so nothing takes
	// a snapshot before the lock.
	if _, err := tx.Exec(ctx, "LOCK TABLE "+lock.Sanitized()+" IN EXCLUSIVE MODE"); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
			return fmt.Errorf("lock round of %s: %w (%w)", view, ErrNoRoundLock, err)
		}
		return fmt.Errorf("lock round of %s: %w", view, err)
	}
	return nil
}

// DropRoundLock drops the view's round lock (the view no longer runs
// incrementally).
func DropRoundLock(ctx context.Context, tx pgx.Tx, view config.QualifiedName) error {
	if err := dropRoundLock(ctx, tx, RoundLock(view).Name); err != nil {
		return fmt.Errorf("drop round lock of %s: %w", view, err)
	}
	return nil
}

// dropRoundLock drops the round lock named name in Schema, if it exists.
func dropRoundLock(ctx context.Context, tx pgx.Tx, name string) error {
	lock := config.QualifiedName{Schema: Schema, Name: name}
	if _, err := tx.Exec(ctx, "DROP VIEW IF EXISTS "+lock.Sanitized()); err != nil {
		return fmt.Errorf("drop %s: %w", lock, err)
	}
	return nil
}

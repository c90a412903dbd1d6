package refresh

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/refresh/incremental"
)

// Strategy is how a view's data is kept current: today's materialized view
// (REFRESH, concurrently or not, and side-by-side swaps of changed
// definitions) is one; an incremental summary will be another. The worker
// decides when (policy.go); a Strategy does the work.
type Strategy interface {
	// Setup makes the view exist as declared, idempotently, and brings a
	// changed definition in without downtime. fence guards any commit that
	// replaces data.
	Setup(ctx context.Context, v *config.View, fence Fence) (SetupResult, error)
	// Refresh brings the data up to date in one transaction that commits
	// only while fence passes; on error the view keeps its previous data.
	Refresh(ctx context.Context, v *config.View, trigger Trigger, fence Fence) (Outcome, error)
	// RecordFailure records a failed attempt for operators.
	RecordFailure(ctx context.Context, v *config.View, trigger Trigger, dur time.Duration, err error) error
	// Maintain runs upkeep outside the refresh transaction after a
	// successful refresh (vacuum); it reports what it did.
	Maintain(ctx context.Context, v *config.View, out Outcome) (Maintenance, error)
}

// SetupResult is what Setup did.
type SetupResult struct {
	// Created: the view was created empty and needs its first population.
	Created bool
	// Adopted: an existing view without a recorded definition was adopted
	// as is.
	Adopted bool
	// Rebuilt: a changed definition was built beside the old one and
	// swapped in; its data is as of AsOf.
	Rebuilt bool
	AsOf    time.Time
	// DefinitionErr: the definition changed but could not be applied; the
	// old one stays in use (not a set-up failure).
	DefinitionErr error
	// RebuildDue: the existing summary does not match the definition or
	// the strategy (an incremental view's next round rebuilds it): refresh
	// now.
	RebuildDue bool
	// RemovedCapture lists the key logs of incremental capture the view no
	// longer uses (an old definition, or the view now runs full) whose
	// triggers and logs were dropped. CleanupErr: they could not be (not a
	// set-up failure; the next set-up tries again).
	RemovedCapture []string
	CleanupErr     error
}

// Maintenance is what Maintain did.
type Maintenance struct {
	Vacuumed bool
	DeadRows int64
}

// MatviewStrategy keeps a materialized view: REFRESH MATERIALIZED VIEW
// (CONCURRENTLY when configured and populated), definition changes by Swap.
type MatviewStrategy struct {
	Pool      *pgxpool.Pool
	Refresher *Refresher
	Identity  string
}

// NewMatviewStrategy returns the materialized-view strategy over pool.
func NewMatviewStrategy(pool *pgxpool.Pool, identity string) *MatviewStrategy {
	return &MatviewStrategy{Pool: pool, Refresher: &Refresher{Pool: pool, Identity: identity}, Identity: identity}
}

// Setup implements Strategy.
func (s *MatviewStrategy) Setup(ctx context.Context, v *config.View, fence Fence) (SetupResult, error) {
	var res SetupResult
	created, err := EnsureView(ctx, s.Pool, v)
	if err != nil {
		return res, err
	}
	if created {
		res.Created = true
		return res, nil
	}
	change, err := CheckDefinition(ctx, s.Pool, v)
	switch {
	case err != nil:
		res.DefinitionErr = err
	case change == DefinitionUnknown:
		res.Adopted = true
	case change == DefinitionChanged:
		asOf, err := Swap(ctx, s.Pool, v, s.Identity, fence)
		if err != nil {
			res.DefinitionErr = err
			break
		}
		res.Rebuilt, res.AsOf = true, asOf
	}
	res.RemovedCapture, res.CleanupErr = removeCapture(ctx, s.Pool, v.Name)
	return res, nil
}

// removeCapture drops the incremental capture (triggers, key logs, round
// lock) of a view that is now a materialized view: after a switch to full
// they would tax the source's writers and fill logs no round drains.
// Nothing is done while the incremental table is still in place (a swap
// that failed): it may be switched back.
func removeCapture(ctx context.Context, pool *pgxpool.Pool, view config.QualifiedName) ([]string, error) {
	// Looked up first without the set-up lock: nearly always there is
	// nothing to do, and every full view's set-up passes here.
	if todo, err := captureToRemove(ctx, pool, view); err != nil || !todo {
		if err != nil {
			return nil, fmt.Errorf("remove incremental capture of %s: %w", view, err)
		}
		return nil, nil
	}
	var removed []string
	err := withSetupLock(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		if todo, err := captureToRemove(ctx, tx, view); err != nil || !todo {
			return err
		}
		var err error
		removed, err = incremental.UninstallOthers(ctx, tx, view, "")
		if err != nil {
			return err
		}
		return incremental.DropRoundLock(ctx, tx, view)
	})
	if err != nil {
		return nil, fmt.Errorf("remove incremental capture of %s: %w", view, err)
	}
	return removed, nil
}

// captureToRemove reports whether view is a materialized view that still
// has incremental capture installed.
func captureToRemove(ctx context.Context, q incremental.Queryer, view config.QualifiedName) (bool, error) {
	var matview bool
	if err := q.QueryRow(ctx, `SELECT coalesce((SELECT relkind = 'm' FROM pg_catalog.pg_class WHERE oid = to_regclass($1)), false)`,
		view.Sanitized()).Scan(&matview); err != nil || !matview {
		return false, err
	}
	return incremental.HasCapture(ctx, q, view)
}

// Refresh implements Strategy.
func (s *MatviewStrategy) Refresh(ctx context.Context, v *config.View, trigger Trigger, fence Fence) (Outcome, error) {
	return s.Refresher.Refresh(ctx, v, trigger, fence)
}

// RecordFailure implements Strategy.
func (s *MatviewStrategy) RecordFailure(ctx context.Context, v *config.View, trigger Trigger, dur time.Duration, err error) error {
	return s.Refresher.RecordFailure(ctx, v, trigger, dur, err)
}

// Maintain implements Strategy: a concurrent refresh leaves dead rows that
// VACUUM (which cannot run inside the refresh's transaction) reclaims.
func (s *MatviewStrategy) Maintain(ctx context.Context, v *config.View, out Outcome) (Maintenance, error) {
	if !out.Concurrently || v.VacuumThreshold <= 0 {
		return Maintenance{}, nil
	}
	dead, vacuumed, err := s.Refresher.MaybeVacuum(ctx, v)
	return Maintenance{Vacuumed: vacuumed, DeadRows: dead}, err
}

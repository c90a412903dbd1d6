package refresh

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
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
	return res, nil
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

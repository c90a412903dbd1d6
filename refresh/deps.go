package refresh

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
)

// ReferencedMatviews lists the materialized views that v's stored query
// reads, from pg_depend: the ground truth a depends_on declaration is
// checked against.
func ReferencedMatviews(ctx context.Context, pool *pgxpool.Pool, v *config.View) ([]config.QualifiedName, error) {
	rows, err := pool.Query(ctx, `SELECT DISTINCT n.nspname, c.relname
		FROM pg_catalog.pg_rewrite r
		JOIN pg_catalog.pg_depend d ON d.objid = r.oid AND d.classid = 'pg_catalog.pg_rewrite'::regclass
		JOIN pg_catalog.pg_class c ON c.oid = d.refobjid AND d.refclassid = 'pg_catalog.pg_class'::regclass
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE r.ev_class = to_regclass($1) AND c.oid <> r.ev_class AND c.relkind = 'm'
		ORDER BY 1, 2`, v.Name.Sanitized())
	if err != nil {
		return nil, fmt.Errorf("read dependencies of %s: %w", v.Name, err)
	}
	refs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (config.QualifiedName, error) {
		var q config.QualifiedName
		err := r.Scan(&q.Schema, &q.Name)
		return q, err
	})
	if err != nil {
		return nil, fmt.Errorf("read dependencies of %s: %w", v.Name, err)
	}
	return refs, nil
}

// The engine is its workers' view of each other (the dependencies
// interface): upstream state for the policy's gating, dependents to mark
// after a refresh.

// upstreamStates implements dependencies.
func (e *Engine) upstreamStates(names []config.QualifiedName, now time.Time) []upstreamState {
	var out []upstreamState
	for _, n := range names {
		if u := e.lookup(n); u != nil {
			out = append(out, u.upstreamState(now))
		}
	}
	return out
}

// upstreamsReady implements dependencies.
func (e *Engine) upstreamsReady(names []config.QualifiedName) bool {
	for _, n := range names {
		u := e.lookup(n)
		if u == nil {
			continue
		}
		u.mu.Lock()
		ready := u.ready
		u.mu.Unlock()
		if !ready {
			return false
		}
	}
	return true
}

// refreshed implements dependencies: the views that read view miss what it
// now has, dated at (the oldest change it just took in).
func (e *Engine) refreshed(view config.QualifiedName, at, now time.Time) {
	for _, d := range e.snapshot() {
		if d.view.Name == view || !slices.Contains(d.upstreams(), view) {
			continue
		}
		d.update(func(p *pending) { p.change(at, now) })
	}
}

// detectionChanged implements dependencies: a view now detects changes
// otherwise (auto chose incremental), so the source index is rebuilt and the
// source tables' triggers follow (the configured detector's trigger goes).
func (e *Engine) detectionChanged() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.indexSources()
	if t := e.term; t != nil && !e.stopping {
		e.termWG.Go(func() {
			ctx, cancel := context.WithTimeout(t.ctx, triggerSyncTimeout)
			defer cancel()
			e.ensureTriggers(ctx, e.log)
		})
	}
}

// inferUpstreams implements dependencies: the managed views v's stored
// query reads (pg_depend) that it does not declare.
func (e *Engine) inferUpstreams(ctx context.Context, v *config.View) ([]config.QualifiedName, error) {
	ctx, cancel := context.WithTimeout(ctx, SetupTimeout)
	defer cancel()
	refs, err := ReferencedMatviews(ctx, e.pool, v)
	if err != nil {
		return nil, err
	}
	var inferred []config.QualifiedName
	for _, r := range refs {
		if !slices.Contains(v.DependsOn, r) && e.lookup(r) != nil {
			inferred = append(inferred, r)
		}
	}
	return inferred, nil
}

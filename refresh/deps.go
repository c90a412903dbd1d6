package refresh

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

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

// checkDependencies infers undeclared dependencies on other managed views
// from pg_depend (declaring them is better: it also orders the first
// refresh), logging each once.
func (w *worker) checkDependencies(ctx context.Context) {
	refs, err := ReferencedMatviews(ctx, w.e.pool, w.view)
	if err != nil {
		w.log.Warn("could not check dependencies", zap.Error(err))
		return
	}
	var inferred []config.QualifiedName
	for _, r := range refs {
		if slices.Contains(w.view.DependsOn, r) {
			continue
		}
		w.e.mu.Lock()
		_, managed := w.e.byName[r.String()]
		w.e.mu.Unlock()
		if managed {
			inferred = append(inferred, r)
		}
	}
	w.mu.Lock()
	old := w.inferred
	w.inferred = inferred
	w.mu.Unlock()
	if len(inferred) > 0 && !slices.Equal(old, inferred) {
		names := make([]string, len(inferred))
		for i, r := range inferred {
			names[i] = r.String()
		}
		w.log.Warn("view reads managed views it does not declare in depends_on; treating them as dependencies", zap.Strings("inferred", names))
	}
}

// upstreams are the managed views w reads: declared and inferred.
func (w *worker) upstreams() []config.QualifiedName {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append(slices.Clone(w.view.DependsOn), w.inferred...)
}

// waitingForUpstream reports whether an upstream view is refreshing or owes
// a refresh: w refreshes after it, never before, in the same round. A
// failing or broken upstream does not hold w back.
func (w *worker) waitingForUpstream() bool {
	for _, name := range w.upstreams() {
		w.e.mu.Lock()
		u := w.e.byName[name.String()]
		w.e.mu.Unlock()
		if u == nil {
			continue
		}
		u.mu.Lock()
		busy := u.inProgress || (u.ready && u.failures == 0 && (u.p.dirty || u.p.manual))
		u.mu.Unlock()
		if busy {
			return true
		}
	}
	return false
}

// refreshedUpstream marks the views that read w dirty after w's refresh:
// they miss what w now has, dated from the oldest change w just took in.
func (w *worker) refreshedUpstream(taken pending, asOf time.Time) {
	at := asOf
	if taken.dirty && taken.oldest.Before(at) {
		at = taken.oldest
	}
	now := time.Now()
	for _, d := range w.e.snapshot() {
		if d == w || !slices.Contains(d.upstreams(), w.view.Name) {
			continue
		}
		d.update(func(p *pending) { p.change(at, now) })
	}
}

// upstreamNotReady reports whether a declared upstream view is not set up
// yet in this term.
func (w *worker) upstreamNotReady() bool {
	for _, name := range w.view.DependsOn {
		w.e.mu.Lock()
		u := w.e.byName[name.String()]
		w.e.mu.Unlock()
		if u == nil {
			continue
		}
		u.mu.Lock()
		ready := u.ready
		u.mu.Unlock()
		if !ready {
			return true
		}
	}
	return false
}

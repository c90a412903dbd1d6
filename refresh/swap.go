package refresh

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/refresh/incremental"
	"github.com/refresherd/refresherd/refresh/relation"
)

// DefinitionChange says how a view's stored definition compares with its
// configuration.
type DefinitionChange int

// Definition states.
const (
	DefinitionSame    DefinitionChange = iota
	DefinitionUnknown                  // no hash stored: adopted as is
	DefinitionChanged
)

// CheckDefinition compares the definition hash stored with the view with the
// configuration's. An existing view without a stored hash (created before
// refresherd managed it) is adopted: its hash is recorded.
func CheckDefinition(ctx context.Context, pool *pgxpool.Pool, v *config.View) (DefinitionChange, error) {
	ctx, cancel := context.WithTimeout(ctx, SetupTimeout)
	defer cancel()
	var stored *string
	err := pool.QueryRow(ctx, `SELECT definition_hash FROM refresherd.view_status WHERE view_name = $1`, v.Name.String()).Scan(&stored)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("read definition of %s: %w", v.Name, err)
	}
	want := DefinitionHash(v)
	switch {
	case stored == nil:
		if _, err := pool.Exec(ctx, `INSERT INTO refresherd.view_status (view_name, definition_hash) VALUES ($1, $2)
			ON CONFLICT (view_name) DO UPDATE SET definition_hash = excluded.definition_hash`, v.Name.String(), want); err != nil {
			return 0, fmt.Errorf("record definition of %s: %w", v.Name, err)
		}
		return DefinitionUnknown, nil
	case *stored == want:
		return DefinitionSame, nil
	}
	return DefinitionChanged, nil
}

// SwapPlan describes a definition change, for --dry-run and logs.
type SwapPlan struct {
	View           string
	Temp, Old      string
	DependentViews []string // plain or materialized views that read the current one
}

func (p SwapPlan) String() string {
	s := fmt.Sprintf("rebuild %s: create %s with the new definition, populate and index it, then swap names in one transaction and drop the old view", p.View, p.Temp)
	if len(p.DependentViews) > 0 {
		s += fmt.Sprintf("; BLOCKED: %s read(s) the view and would have to be recreated", strings.Join(p.DependentViews, ", "))
	}
	return s
}

// PlanSwap looks at what a rebuild would do.
func PlanSwap(ctx context.Context, pool *pgxpool.Pool, v *config.View) (SwapPlan, error) {
	ctx, cancel := context.WithTimeout(ctx, SetupTimeout)
	defer cancel()
	p := SwapPlan{
		View: v.Name.String(),
		Temp: v.Name.WithName(relation.CutName(v.Name.Name, "_rfd_new")).String(),
		Old:  v.Name.WithName(relation.CutName(v.Name.Name, "_rfd_old")).String(),
	}
	rows, err := pool.Query(ctx, `SELECT DISTINCT format('%I.%I', n.nspname, c.relname)
		FROM pg_catalog.pg_depend d
		JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid AND d.classid = 'pg_catalog.pg_rewrite'::regclass
		JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE d.refobjid = to_regclass($1) AND d.refclassid = 'pg_catalog.pg_class'::regclass
		  AND r.ev_class <> to_regclass($1)
		ORDER BY 1`, v.Name.Sanitized())
	if err != nil {
		return p, fmt.Errorf("find views depending on %s: %w", v.Name, err)
	}
	p.DependentViews, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return p, fmt.Errorf("find views depending on %s: %w", v.Name, err)
	}
	return p, nil
}

// Swap rebuilds a view whose definition changed without downtime: the new
// view is built and indexed beside the old one, then one short transaction
// renames them and drops the old, so readers see the old data until the
// commit and the new data after, never an error or an empty view (a reader
// waiting on the old view's lock re-resolves the name after the commit).
// Privileges granted on the old view are granted on the new one. fence,
// when not nil, is checked last before the swap commits. It returns the
// new data's as-of.
func Swap(ctx context.Context, pool *pgxpool.Pool, v *config.View, identity string, fence Fence) (time.Time, error) {
	plan, err := PlanSwap(ctx, pool, v)
	if err != nil {
		return time.Time{}, err
	}
	if len(plan.DependentViews) > 0 {
		return time.Time{}, fmt.Errorf("definition of %s changed but %s depend(s) on it: drop them (or recreate them after) to let refresherd rebuild it; the old definition stays in use",
			v.Name, strings.Join(plan.DependentViews, ", "))
	}
	tmp := v.Name.WithName(relation.CutName(v.Name.Name, "_rfd_new"))
	old := v.Name.WithName(relation.CutName(v.Name.Name, "_rfd_old"))
	idx := pgx.Identifier{indexName(v.Name.Name)}.Sanitize()
	tmpIdx := pgx.Identifier{indexName(tmp.Name)}
	cols := make([]string, len(v.UniqueKey))
	for i, c := range v.UniqueKey {
		cols[i] = pgx.Identifier{c}.Sanitize()
	}

	// Build beside the old one: this is the long part, and readers are not
	// affected at all. Its lock waits (on the side view's name, the
	// sources) are bounded like a refresh's.
	var asOf time.Time
	var copies []relation.IndexCopy
	bctx, cancelBuild := context.WithTimeout(ctx, swapBuildBound(v))
	defer cancelBuild()
	err = pgx.BeginFunc(bctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(bctx, `SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true)`,
			pgDuration(v.StatementTimeout), pgDuration(v.LockTimeout)); err != nil {
			return fmt.Errorf("set timeouts: %w", err)
		}
		if _, err := tx.Exec(bctx, "DROP MATERIALIZED VIEW IF EXISTS "+tmp.Sanitized()); err != nil {
			return fmt.Errorf("drop leftover %s: %w", tmp, err)
		}
		if err := tx.QueryRow(bctx, `SELECT clock_timestamp()`).Scan(&asOf); err != nil {
			return fmt.Errorf("read clock: %w", err)
		}
		if err := execOne(bctx, tx, "CREATE MATERIALIZED VIEW "+tmp.Sanitized()+" AS "+v.Query+"\nWITH DATA"); err != nil {
			return fmt.Errorf("build %s: %w", tmp, err)
		}
		if _, err := tx.Exec(bctx, "CREATE UNIQUE INDEX "+tmpIdx.Sanitize()+" ON "+tmp.Sanitized()+" ("+strings.Join(cols, ", ")+")"); err != nil {
			return fmt.Errorf("index %s: %w", tmp, err)
		}
		if err := relation.CopyGrants(bctx, tx, v.Name, tmp); err != nil {
			return err
		}
		// The app's own indexes (an incremental table's group index is
		// not one of them).
		var err error
		copies, err = relation.CopyIndexes(bctx, tx, v.Name, tmp, []string{indexName(v.Name.Name), incremental.GroupIndex(v.Name)})
		return err
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("rebuild %s: %w", v.Name, err)
	}

	// The swap: short, bounded by lock_timeout.
	sctx, cancelSwap := context.WithTimeout(ctx, RefreshBound(v))
	defer cancelSwap()
	err = pgx.BeginFunc(sctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(sctx, `SELECT set_config('lock_timeout', $1, true)`, pgDuration(v.LockTimeout)); err != nil {
			return fmt.Errorf("set timeout: %w", err)
		}
		if _, err := tx.Exec(sctx, `SELECT pg_advisory_xact_lock($1)`, lockKey("view", v.Name.String())); err != nil {
			return fmt.Errorf("take view lock: %w", err)
		}
		// The current relation is a materialized view, or the table of an
		// incremental summary when the view switched to full.
		var kind string
		if err := tx.QueryRow(sctx, `SELECT coalesce((SELECT relkind::text FROM pg_catalog.pg_class WHERE oid = to_regclass($1)), '')`,
			v.Name.Sanitized()).Scan(&kind); err != nil {
			return fmt.Errorf("look up %s: %w", v.Name, err)
		}
		curKind := "MATERIALIZED VIEW "
		if kind == "r" {
			curKind = "TABLE "
		}
		stmts := []string{
			"ALTER " + curKind + v.Name.Sanitized() + " RENAME TO " + pgx.Identifier{old.Name}.Sanitize(),
			"ALTER INDEX IF EXISTS " + pgx.Identifier{v.Name.Schema, indexName(v.Name.Name)}.Sanitize() + " RENAME TO " + pgx.Identifier{indexName(old.Name)}.Sanitize(),
			"ALTER MATERIALIZED VIEW " + tmp.Sanitized() + " RENAME TO " + pgx.Identifier{v.Name.Name}.Sanitize(),
			"ALTER INDEX " + pgx.Identifier{v.Name.Schema, tmpIdx[0]}.Sanitize() + " RENAME TO " + idx,
			"DROP " + curKind + old.Sanitized(),
		}
		for _, s := range stmts {
			if _, err := tx.Exec(sctx, s); err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
		}
		if err := relation.RenameIndexes(sctx, tx, v.Name.Schema, copies); err != nil {
			return err
		}
		if _, err := tx.Exec(sctx, `INSERT INTO refresherd.view_status AS s
				(view_name, data_as_of, last_success_at, last_attempt_at, last_result, last_trigger, definition_hash, refreshed_by, consecutive_failures)
			VALUES ($1, $2, clock_timestamp(), now(), 'success', 'definition', $3, $4, 0)
			ON CONFLICT (view_name) DO UPDATE SET data_as_of = excluded.data_as_of, last_success_at = excluded.last_success_at,
				last_attempt_at = excluded.last_attempt_at, last_result = 'success', last_error = NULL, last_trigger = 'definition',
				definition_hash = excluded.definition_hash, refreshed_by = excluded.refreshed_by, consecutive_failures = 0`,
			v.Name.String(), asOf, DefinitionHash(v), identity); err != nil {
			return fmt.Errorf("record definition: %w", err)
		}
		if fence != nil {
			if err := fence(sctx, tx); err != nil {
				return fmt.Errorf("fence: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		// The old view is untouched; drop the side build so it does not
		// linger.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), SetupTimeout)
		defer cancel()
		_, _ = pool.Exec(dctx, "DROP MATERIALIZED VIEW IF EXISTS "+tmp.Sanitized())
		return time.Time{}, fmt.Errorf("swap %s: %w", v.Name, err)
	}
	return asOf, nil
}

package incremental

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/refresh/relation"
)

// RebuildResult is what a Rebuild did.
type RebuildResult struct {
	Rows    int64 // rows of the new summary
	Drained int64 // log rows the build made redundant
	// Replaced is what the view's name held before: "" (nothing: first
	// population), "table" or "materialized view" (converted from the full
	// strategy).
	Replaced string
}

// Rebuild builds the summary from scratch as a plain table beside the
// current one and swaps it in, so readers see the old data until tx
// commits and the new after, never a half-built table: it creates
// <view>_rfd_new from the query, indexes it (the unique key; the group key
// for rounds), copies the current relation's grants and the app's own
// indexes, drains the log (every
// key the snapshot sees is in the build; later ones stay for the next
// round), clears the rebuild request, sets the sentinel, then drops the
// current relation (a table, or a materialized view of the full strategy)
// and gives the new table its name. With no relation of that name it
// builds in place.
//
// The caller begins tx at REPEATABLE READ (the build and the drain must see
// one snapshot), after Install committed, and serialises it with rounds.
// The swap's lock on the current relation is held until tx ends: commit
// soon after.
func Rebuild(ctx context.Context, tx pgx.Tx, p Plan) (RebuildResult, error) {
	var res RebuildResult
	if err := p.validate(); err != nil {
		return res, fmt.Errorf("rebuild %s: %w", p.View, err)
	}
	var isolation string
	var version int
	if err := tx.QueryRow(ctx, `SELECT current_setting('transaction_isolation'), current_setting('server_version_num')::int`).Scan(&isolation, &version); err != nil {
		return res, fmt.Errorf("rebuild %s: %w", p.View, err)
	}
	if isolation != "repeatable read" && isolation != "serializable" {
		return res, fmt.Errorf("rebuild %s: needs a REPEATABLE READ transaction, not %s: the build and the drain must see one snapshot", p.View, isolation)
	}
	if reason, err := captureState(ctx, tx, p); err != nil {
		return res, fmt.Errorf("rebuild %s: %w", p.View, err)
	} else if reason != "" {
		return res, fmt.Errorf("rebuild %s: %s: install the capture first, in a transaction of its own", p.View, reason)
	}

	var relkind *string
	if err := tx.QueryRow(ctx, `SELECT relkind::text FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass($1)`,
		p.View.Sanitized()).Scan(&relkind); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return res, fmt.Errorf("rebuild %s: look it up: %w", p.View, err)
	}
	target := p.View
	if relkind != nil {
		switch *relkind {
		case "r":
			res.Replaced = "table"
		case "m":
			res.Replaced = "materialized view"
		default:
			return res, fmt.Errorf("rebuild %s: %w", p.View, notOurs(p.View, *relkind))
		}
		// Fail before the long build rather than at the drop.
		if err := noDependents(ctx, tx, p.View); err != nil {
			return res, fmt.Errorf("rebuild %s: %w", p.View, err)
		}
		target = p.View.WithName(relation.CutName(p.View.Name, "_rfd_new"))
	}

	// The long part; readers of the current relation are not affected.
	// Free space in every page lets a round's update of a group's row stay
	// on its page without new index entries (HOT: the group key and the
	// unique key do not change): at 10M charges it cut an upsert's buffer
	// accesses per row from 18 to 6.
	tag, err := exec(ctx, tx, "CREATE TABLE "+target.Sanitized()+" WITH (fillfactor = "+strconv.Itoa(summaryFillfactor)+") AS "+p.Query+"\nWITH DATA")
	if err != nil {
		return res, fmt.Errorf("rebuild %s: build %s: %w", p.View, target, err)
	}
	res.Rows = tag.RowsAffected()
	// The side table's indexes get names of their own: the current
	// relation's still hold the final ones until the swap.
	side := ""
	if res.Replaced != "" {
		side = "_rfd_new"
	}
	if err := indexSummary(ctx, tx, p, target, side, version); err != nil {
		return res, fmt.Errorf("rebuild %s: %w", p.View, err)
	}
	// Statistics now, so the first rounds' plans find the group index.
	if _, err := tx.Exec(ctx, "ANALYZE "+target.Sanitized()); err != nil {
		return res, fmt.Errorf("rebuild %s: analyze %s: %w", p.View, target, err)
	}
	var copies []relation.IndexCopy
	if res.Replaced != "" {
		if err := relation.CopyGrants(ctx, tx, p.View, target); err != nil {
			return res, fmt.Errorf("rebuild %s: %w", p.View, err)
		}
		// The app's own indexes; ours were made above.
		copies, err = relation.CopyIndexes(ctx, tx, p.View, target, []string{
			relation.CutName(p.View.Name, summaryKeyIndexSuffix), GroupIndex(p.View)})
		if err != nil {
			return res, fmt.Errorf("rebuild %s: %w", p.View, err)
		}
	}

	log := LogTable(p)
	tag, err = tx.Exec(ctx, "DELETE FROM "+log.Sanitized())
	if err != nil {
		return res, fmt.Errorf("rebuild %s: drain %s: %w", p.View, log, err)
	}
	res.Drained = tag.RowsAffected()
	if _, err := tx.Exec(ctx, "DELETE FROM "+rebuildName.Sanitized()+" WHERE log_name = $1", log.Name); err != nil {
		return res, fmt.Errorf("rebuild %s: clear rebuild request: %w", p.View, err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO "+sentinelName.Sanitized()+` (log_name) VALUES ($1)
		ON CONFLICT (log_name) DO UPDATE SET set_at = excluded.set_at`, log.Name); err != nil {
		return res, fmt.Errorf("rebuild %s: set sentinel: %w", p.View, err)
	}

	if res.Replaced == "" {
		return res, nil
	}
	// The swap: dropping the current relation first frees its index names
	// for the new table's. A reader waiting on its lock looks the name up
	// again after the commit and reads the new table.
	drop := "DROP TABLE "
	if res.Replaced == "materialized view" {
		drop = "DROP MATERIALIZED VIEW "
	}
	stmts := []string{
		drop + p.View.Sanitized(),
		"ALTER TABLE " + target.Sanitized() + " RENAME TO " + ident(p.View.Name),
	}
	for _, suffix := range []string{summaryKeyIndexSuffix, summaryGroupIdxSuffix} {
		from := config.QualifiedName{Schema: p.View.Schema, Name: relation.CutName(p.View.Name, side+suffix)}
		stmts = append(stmts, "ALTER INDEX IF EXISTS "+from.Sanitized()+" RENAME TO "+ident(relation.CutName(p.View.Name, suffix)))
	}
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s); err != nil {
			return res, fmt.Errorf("rebuild %s: swap: %s: %w", p.View, s, err)
		}
	}
	if err := relation.RenameIndexes(ctx, tx, p.View.Schema, copies); err != nil {
		return res, fmt.Errorf("rebuild %s: swap: %w", p.View, err)
	}
	return res, nil
}

// indexSummary creates on table, named after the view with side before
// their suffix, the summary's unique index on the unique key (plain
// columns, no predicate: what ON CONFLICT and the full strategy's
// CONCURRENTLY need) and, unless the unique index already covers exactly
// the group key, an index on the group key for the rounds' delete, NOT
// NULL columns first since only they are compared with =.
func indexSummary(ctx context.Context, tx pgx.Tx, p Plan, table config.QualifiedName, side string, version int) error {
	nulls := ""
	if version >= 150000 {
		// A NULL in a unique-key column (a nullable group key) must still
		// conflict, or every round would add the row again.
		nulls = " NULLS NOT DISTINCT"
	} else {
		for _, c := range p.UniqueKey {
			if nullableKey(p, c) {
				return fmt.Errorf("unique-key column %s may be NULL: that needs PostgreSQL 15 (NULLS NOT DISTINCT)", c)
			}
		}
	}
	stmt := "CREATE UNIQUE INDEX " + ident(relation.CutName(p.View.Name, side+summaryKeyIndexSuffix)) + " ON " + table.Sanitized() +
		" (" + strings.Join(quoteAll(p.UniqueKey), ", ") + ")" + nulls
	if _, err := tx.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("index %s: %w", table, err)
	}

	var group []string
	for _, k := range p.Keys {
		if !k.Nullable {
			group = append(group, k.Column)
		}
	}
	for _, k := range p.Keys {
		if k.Nullable {
			group = append(group, k.Column)
		}
	}
	sortedGroup, sortedUnique := slices.Sorted(slices.Values(group)), slices.Sorted(slices.Values(p.UniqueKey))
	if slices.Equal(sortedGroup, sortedUnique) {
		return nil
	}
	stmt = "CREATE INDEX " + ident(relation.CutName(p.View.Name, side+summaryGroupIdxSuffix)) + " ON " + table.Sanitized() +
		" (" + strings.Join(quoteAll(group), ", ") + ")"
	if _, err := tx.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("index %s: %w", table, err)
	}
	return nil
}

// noDependents fails when views read the relation: dropping it would need
// CASCADE, which would drop the user's views.
func noDependents(ctx context.Context, tx pgx.Tx, rel config.QualifiedName) error {
	rows, err := tx.Query(ctx, `SELECT DISTINCT pg_catalog.format('%I.%I', n.nspname, c.relname)
		FROM pg_catalog.pg_depend d
		JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid AND d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
		JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE d.refobjid = pg_catalog.to_regclass($1) AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
		  AND r.ev_class <> pg_catalog.to_regclass($1)
		ORDER BY 1`, rel.Sanitized())
	if err != nil {
		return fmt.Errorf("find views reading %s: %w", rel, err)
	}
	deps, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("find views reading %s: %w", rel, err)
	}
	if len(deps) > 0 {
		return fmt.Errorf("%s depend(s) on %s: drop them (and recreate them after) to let refresherd rebuild it", strings.Join(deps, ", "), rel)
	}
	return nil
}

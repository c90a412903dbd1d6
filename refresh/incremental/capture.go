package incremental

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/refresherd/refresherd/config"
)

var (
	sentinelName = config.QualifiedName{Schema: Schema, Name: SentinelTable}
	rebuildName  = config.QualifiedName{Schema: Schema, Name: RebuildTable}
	registryName = config.QualifiedName{Schema: Schema, Name: RegistryTable}
)

// bodyTag dollar-quotes the trigger functions' bodies.
const bodyTag = "$rfd_body$"

// Install creates the plan's capture objects, idempotently: the shared
// sentinel and rebuild-request tables, the view's round lock, the key log, the trigger functions
// and the triggers on the source, enabled ALWAYS (re-enabling any that was
// disabled). It sets no sentinel: only a Rebuild makes the log
// trustworthy.
//
// Creating a trigger locks the source against writes until tx ends: keep
// the transaction short. It must commit before the snapshot of the Rebuild
// that relies on it, or writes committed in between would be neither in the
// build nor in the log. Serialise it with other set-up (CREATE ... IF NOT
// EXISTS races with itself).
func Install(ctx context.Context, tx pgx.Tx, p Plan) error {
	if err := p.validate(); err != nil {
		return fmt.Errorf("install capture for %s: %w", p.View, err)
	}
	log := LogTable(p)
	shared := []string{
		"CREATE UNLOGGED TABLE IF NOT EXISTS " + sentinelName.Sanitized() + ` (
			log_name text PRIMARY KEY,
			set_at   pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now())`,
		"CREATE TABLE IF NOT EXISTS " + rebuildName.Sanitized() + ` (
			log_name     text PRIMARY KEY,
			reason       text NOT NULL,
			requested_at pg_catalog.timestamptz NOT NULL)`,
		"CREATE TABLE IF NOT EXISTS " + registryName.Sanitized() + ` (
			log_name     text PRIMARY KEY,
			view_name    text NOT NULL,
			source       text NOT NULL,
			round_lock   text NOT NULL,
			installed_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now())`,
	}
	for _, s := range shared {
		if _, err := tx.Exec(ctx, s); err != nil {
			return fmt.Errorf("install capture for %s: create shared tables: %w", p.View, err)
		}
	}

	if err := EnsureRoundLock(ctx, tx, p.View); err != nil {
		return fmt.Errorf("install capture for %s: %w", p.View, err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO "+registryName.Sanitized()+` (log_name, view_name, source, round_lock) VALUES ($1, $2, $3, $4)
		ON CONFLICT (log_name) DO NOTHING`, log.Name, p.View.String(), p.Source.String(), RoundLock(p.View).Name); err != nil {
		return fmt.Errorf("install capture for %s: register: %w", p.View, err)
	}
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT pg_catalog.to_regclass($1) IS NOT NULL`, log.Sanitized()).Scan(&exists); err != nil {
		return fmt.Errorf("install capture for %s: look up %s: %w", p.View, log, err)
	}
	if !exists {
		if err := createLog(ctx, tx, p, log); err != nil {
			return fmt.Errorf("install capture for %s: %w", p.View, err)
		}
	}

	for _, tr := range triggers(p) {
		fn := config.QualifiedName{Schema: Schema, Name: tr.name}
		body, err := functionBody(p, tr.event)
		if err != nil {
			return fmt.Errorf("install capture for %s: %w", p.View, err)
		}
		// SECURITY DEFINER: writers need no privilege on the refresherd
		// schema. No SET search_path (a cost on every writer's statement):
		// the body resolves nothing through it (see functionBody).
		create := "CREATE OR REPLACE FUNCTION " + fn.Sanitized() + "() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS " +
			bodyTag + "\n" + body + "\n" + bodyTag
		if _, err := tx.Exec(ctx, create); err != nil {
			return fmt.Errorf("install capture for %s: create function %s: %w", p.View, fn, err)
		}
		// Writers reach it only through the trigger.
		if _, err := tx.Exec(ctx, "REVOKE ALL ON FUNCTION "+fn.Sanitized()+"() FROM PUBLIC"); err != nil {
			return fmt.Errorf("install capture for %s: revoke on %s: %w", p.View, fn, err)
		}
	}

	state, err := triggerStates(ctx, tx, p)
	if err != nil {
		return fmt.Errorf("install capture for %s: %w", p.View, err)
	}
	src := p.Source.Sanitized()
	for _, tr := range triggers(p) {
		var stmts []string
		switch state[tr.name] {
		case "":
			stmts = append(stmts, createTrigger(p, tr))
		case "A":
			continue // left alone: re-creating it would lock out writers for nothing
		}
		// ALWAYS: the trigger fires in sessions with session_replication_role
		// = replica too (logical replication's apply, bulk loads that skip
		// triggers), whose changes the summary must see as well.
		stmts = append(stmts, "ALTER TABLE "+src+" ENABLE ALWAYS TRIGGER "+ident(tr.name))
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("install capture for %s: trigger %s on %s: %w", p.View, tr.name, p.Source, err)
			}
		}
	}
	return nil
}

// createLog creates the key log. Its key columns are made by selecting the
// source's columns, so they have exactly their types and the triggers'
// inserts need no cast.
func createLog(ctx context.Context, tx pgx.Tx, p Plan, log config.QualifiedName) error {
	sel := make([]string, len(p.Keys))
	for i, k := range p.Keys {
		sel[i] = "s." + ident(k.Source)
	}
	// A queue like refresherd.changelog (see sql/schema.sql): UNLOGGED so
	// writers pay no WAL for it; vacuumed after a few thousand dead rows;
	// never truncated by vacuum, whose lock would block the triggers.
	stmts := []string{
		"CREATE UNLOGGED TABLE " + log.Sanitized() + " (" + logColumns(p) + ")" +
			" WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000, vacuum_truncate = false)" +
			" AS SELECT " + strings.Join(sel, ", ") + " FROM " + p.Source.Sanitized() + " s WITH NO DATA",
		// The writer's transaction start: never later than its commit, so
		// staleness computed from it never under-reports.
		"ALTER TABLE " + log.Sanitized() + " ADD COLUMN " + logTimeColumn +
			" pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.transaction_timestamp()",
	}
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s); err != nil {
			return fmt.Errorf("create %s: %w", log, err)
		}
	}
	// Positional columns are opaque to an operator reading the log.
	desc := make([]string, len(p.Keys))
	for i, k := range p.Keys {
		desc[i] = logColumn(i) + " = " + k.Source
	}
	comment := fmt.Sprintf("refresherd: group keys written in %s for %s (definition %s): %s",
		p.Source, p.View, p.Hash, strings.Join(desc, ", "))
	var stmt string
	if err := tx.QueryRow(ctx, `SELECT pg_catalog.format('COMMENT ON TABLE %s IS %L', $1::text, $2::text)`,
		log.Sanitized(), comment).Scan(&stmt); err != nil {
		return fmt.Errorf("comment %s: %w", log, err)
	}
	if _, err := tx.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("comment %s: %w", log, err)
	}
	return nil
}

// functionBody is the plpgsql body of the trigger function for event. It
// runs in every writer's statement, with the writer's search_path and
// without SET search_path, so it resolves nothing through it: tables are
// schema-qualified, the one function call is qualified and transition
// tables are found before any schema. One INSERT ... SELECT per statement:
// the least that works.
//
// The keys are appended as the statement's rows carry them, duplicates
// included: a round drains the log with SELECT DISTINCT, so deduplicating
// here would only save log rows, and it costs every writer. Measured on
// PostgreSQL 15 (docs/incremental.md, "Writers"): a DISTINCT (or UNION) over
// the transition table plans a HashAggregate whose set-up costs a
// single-row statement about 6 us, as much as the log insert itself. Bulk
// statements trade both ways: into few groups DISTINCT would be cheaper
// (fewer log rows), into many groups dearer (hashing every row).
func functionBody(p Plan, event string) (string, error) {
	log := LogTable(p)
	cols := func(alias string) string {
		out := make([]string, len(p.Keys))
		for i, k := range p.Keys {
			// Qualified, so a column named like a plpgsql variable (found,
			// tg_op) is still the column.
			out[i] = alias + "." + ident(k.Source)
		}
		return strings.Join(out, ", ")
	}
	ins := "INSERT INTO " + log.Sanitized() + " (" + logColumns(p) + ") "
	var stmt string
	switch event {
	case "INSERT":
		stmt = ins + "SELECT " + cols("n") + " FROM " + newTable + " n"
	case "UPDATE":
		// Old and new key: a row that moves leaves one group for another.
		// An update in place logs its key twice; the round's DISTINCT
		// makes it one group to recompute.
		stmt = ins + "SELECT " + cols("o") + " FROM " + oldTable + " o UNION ALL SELECT " + cols("n") + " FROM " + newTable + " n"
	case "DELETE":
		stmt = ins + "SELECT " + cols("o") + " FROM " + oldTable + " o"
	case "TRUNCATE":
		// DO UPDATE, not DO NOTHING: a Rebuild that read an older request
		// then fails to delete the row (concurrent update) instead of
		// clearing a request made after its snapshot.
		stmt = "INSERT INTO " + rebuildName.Sanitized() + " (log_name, reason, requested_at) VALUES (" +
			literal(log.Name) + ", " + literal(ReasonTruncated) + ", pg_catalog.transaction_timestamp())" +
			" ON CONFLICT (log_name) DO UPDATE SET reason = excluded.reason, requested_at = excluded.requested_at"
	default:
		return "", fmt.Errorf("no capture for %s", event)
	}
	body := "#variable_conflict use_column\nBEGIN\n    " + stmt + ";\n    RETURN NULL;\nEND"
	if strings.Contains(body, bodyTag) {
		return "", fmt.Errorf("a column name contains %s", bodyTag)
	}
	return body, nil
}

// literal quotes s as an SQL string. Only used for our own names and
// constants, which contain no backslash, so standard_conforming_strings
// does not matter.
func literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func createTrigger(p Plan, tr trigger) string {
	fn := config.QualifiedName{Schema: Schema, Name: tr.name}
	// Transition tables are allowed only on single-event triggers, hence
	// one trigger per event.
	var ref string
	switch tr.event {
	case "INSERT":
		ref = " REFERENCING NEW TABLE AS " + newTable
	case "UPDATE":
		ref = " REFERENCING OLD TABLE AS " + oldTable + " NEW TABLE AS " + newTable
	case "DELETE":
		ref = " REFERENCING OLD TABLE AS " + oldTable
	}
	return "CREATE TRIGGER " + ident(tr.name) + " AFTER " + tr.event + " ON " + p.Source.Sanitized() + ref +
		" FOR EACH STATEMENT EXECUTE FUNCTION " + fn.Sanitized() + "()"
}

// triggerStates maps the plan's triggers present on the source to their
// pg_trigger.tgenabled: 'D' disabled, 'A' always, 'O' and 'R' by the
// session's session_replication_role.
func triggerStates(ctx context.Context, q Queryer, p Plan) (map[string]string, error) {
	rows, err := q.Query(ctx, `SELECT tgname::text, tgenabled::text FROM pg_catalog.pg_trigger
		WHERE tgrelid = pg_catalog.to_regclass($1) AND tgname = ANY($2::text[])`, p.Source.Sanitized(), TriggerNames(p))
	if err != nil {
		return nil, fmt.Errorf("read triggers on %s: %w", p.Source, err)
	}
	state := map[string]string{}
	for rows.Next() {
		var name, enabled string
		if err := rows.Scan(&name, &enabled); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read triggers on %s: %w", p.Source, err)
		}
		state[name] = enabled
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read triggers on %s: %w", p.Source, err)
	}
	return state, nil
}

// MissingTriggers names the plan's triggers that are absent from the
// source, disabled or enabled for replication only: changes went unlogged, so the caller rebuilds (after
// Install has put them back).
func MissingTriggers(ctx context.Context, q Queryer, p Plan) ([]string, error) {
	state, err := triggerStates(ctx, q, p)
	if err != nil {
		return nil, fmt.Errorf("missing triggers of %s: %w", p.View, err)
	}
	var missing []string
	for _, name := range TriggerNames(p) {
		// 'D' never fires, 'R' only for replication; 'O' (set by someone
		// since Install) still fires for ordinary writers.
		if st := state[name]; st == "" || st == "D" || st == "R" {
			missing = append(missing, name)
		}
	}
	return missing, nil
}

// Uninstall drops the plan's capture objects (not the summary) and its rows
// in the shared tables. Missing objects are not an error.
func Uninstall(ctx context.Context, tx pgx.Tx, p Plan) error {
	if err := uninstallLog(ctx, tx, LogTable(p).Name); err != nil {
		return fmt.Errorf("uninstall capture for %s: %w", p.View, err)
	}
	return nil
}

// UninstallOthers drops the capture objects installed for view by any plan
// but the one whose key log is keep ("" for all of them): a definition
// change leaves the old plan's triggers on the source, taxing its writers
// and filling a log no round drains. It returns the logs it removed.
// Capture installed before the registry existed is not found.
func UninstallOthers(ctx context.Context, tx pgx.Tx, view config.QualifiedName, keep string) ([]string, error) {
	regs, err := registered(ctx, tx, "view_name = $1", view.String())
	if err != nil {
		return nil, fmt.Errorf("uninstall old capture for %s: %w", view, err)
	}
	var logs []string
	for _, r := range regs {
		if r.log == keep {
			continue
		}
		if err := uninstallLog(ctx, tx, r.log); err != nil {
			return nil, fmt.Errorf("uninstall old capture for %s: %w", view, err)
		}
		logs = append(logs, r.log)
	}
	return logs, nil
}

// UninstallOrphans drops the capture of every view not in configured (a
// view removed from the configuration): its triggers would tax writers and
// fill a log no round drains. The summaries themselves are left alone. It
// returns the views whose capture it removed.
func UninstallOrphans(ctx context.Context, tx pgx.Tx, configured []config.QualifiedName) ([]string, error) {
	names := make([]string, len(configured))
	for i, v := range configured {
		names[i] = v.String()
	}
	regs, err := registered(ctx, tx, "view_name <> ALL($1::text[])", names)
	if err != nil {
		return nil, fmt.Errorf("uninstall capture of views not configured: %w", err)
	}
	var views []string
	for _, r := range regs {
		if err := uninstallLog(ctx, tx, r.log); err != nil {
			return nil, fmt.Errorf("uninstall capture of %s (not configured): %w", r.view, err)
		}
		if err := dropRoundLock(ctx, tx, r.lock); err != nil {
			return nil, fmt.Errorf("uninstall capture of %s (not configured): %w", r.view, err)
		}
		if len(views) == 0 || views[len(views)-1] != r.view {
			views = append(views, r.view)
		}
	}
	return views, nil
}

// HasCapture reports whether any capture object of view is installed: a
// registered key log or the round lock.
func HasCapture(ctx context.Context, q Queryer, view config.QualifiedName) (bool, error) {
	var lock bool
	if err := q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, RoundLock(view).Sanitized()).Scan(&lock); err != nil {
		return false, fmt.Errorf("look up capture of %s: %w", view, err)
	}
	if lock {
		return true, nil
	}
	regs, err := registered(ctx, q, "view_name = $1", view.String())
	if err != nil {
		return false, fmt.Errorf("look up capture of %s: %w", view, err)
	}
	return len(regs) > 0, nil
}

// registration is one key log in the registry: its view and round lock.
type registration struct{ log, view, lock string }

// registered lists the registry's rows that meet cond (an SQL condition
// with one parameter, arg), ordered by view and log; none while the
// registry does not exist (nothing was ever installed).
func registered(ctx context.Context, q Queryer, cond string, arg any) ([]registration, error) {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT pg_catalog.to_regclass($1) IS NOT NULL`, registryName.Sanitized()).Scan(&exists); err != nil {
		return nil, fmt.Errorf("read capture registry: %w", err)
	}
	if !exists {
		return nil, nil
	}
	rows, err := q.Query(ctx, "SELECT log_name, view_name, round_lock FROM "+registryName.Sanitized()+
		" WHERE "+cond+" ORDER BY view_name, log_name", arg)
	if err != nil {
		return nil, fmt.Errorf("read capture registry: %w", err)
	}
	regs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (registration, error) {
		var g registration
		return g, r.Scan(&g.log, &g.view, &g.lock)
	})
	if err != nil {
		return nil, fmt.Errorf("read capture registry: %w", err)
	}
	return regs, nil
}

// uninstallLog drops the trigger functions (and with them the triggers)
// and the key log named log, and its rows in the shared tables.
func uninstallLog(ctx context.Context, tx pgx.Tx, log string) error {
	base, ok := strings.CutSuffix(log, "_log")
	if !ok || !strings.HasPrefix(base, Prefix) {
		return fmt.Errorf("%q is not a key log's name", log)
	}
	for _, tr := range captureTriggers(base) {
		fn := config.QualifiedName{Schema: Schema, Name: tr.name}
		// CASCADE drops the trigger that uses it, even on a source that
		// was renamed since.
		if _, err := tx.Exec(ctx, "DROP FUNCTION IF EXISTS "+fn.Sanitized()+"() CASCADE"); err != nil {
			return fmt.Errorf("drop %s: %w", fn, err)
		}
	}
	logName := config.QualifiedName{Schema: Schema, Name: log}
	if _, err := tx.Exec(ctx, "DROP TABLE IF EXISTS "+logName.Sanitized()); err != nil {
		return fmt.Errorf("drop %s: %w", logName, err)
	}
	for _, t := range []config.QualifiedName{sentinelName, rebuildName, registryName} {
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT pg_catalog.to_regclass($1) IS NOT NULL`, t.Sanitized()).Scan(&exists); err != nil {
			return fmt.Errorf("look up %s: %w", t, err)
		}
		if !exists {
			continue
		}
		if _, err := tx.Exec(ctx, "DELETE FROM "+t.Sanitized()+" WHERE log_name = $1", log); err != nil {
			return fmt.Errorf("clear %s: %w", t, err)
		}
	}
	return nil
}

// NeedsRebuild says why the summary cannot be maintained by rounds alone,
// "" when it can: ReasonSummaryMissing (first population), ReasonMatview
// (converting from the full strategy), ReasonNotInstalled (Install first),
// ReasonTriggerMissing + ": " + names (Install, then rebuild),
// ReasonTruncated, ReasonLogLost (the sentinel is gone: crash recovery or
// promotion emptied the log). A relation of the view's name that is
// neither a table nor a materialized view is an error: it is not ours to
// replace. Call it in the round's transaction, before Apply.
func NeedsRebuild(ctx context.Context, q Queryer, p Plan) (string, error) {
	if err := p.validate(); err != nil {
		return "", fmt.Errorf("check %s: %w", p.View, err)
	}
	var relkind *string
	err := q.QueryRow(ctx, `SELECT relkind::text FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass($1)`,
		p.View.Sanitized()).Scan(&relkind)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("check %s: %w", p.View, err)
	}
	switch {
	case relkind == nil:
		return ReasonSummaryMissing, nil
	case *relkind == "m":
		return ReasonMatview, nil
	case *relkind != "r":
		return "", notOurs(p.View, *relkind)
	}
	if reason, err := captureState(ctx, q, p); err != nil || reason != "" {
		return reason, err
	}
	log := LogTable(p)
	var sentinel bool
	var request *string
	err = q.QueryRow(ctx, `SELECT EXISTS (SELECT FROM `+sentinelName.Sanitized()+` WHERE log_name = $1),
			(SELECT reason FROM `+rebuildName.Sanitized()+` WHERE log_name = $1)`, log.Name).Scan(&sentinel, &request)
	if err != nil {
		return "", fmt.Errorf("check %s: %w", p.View, err)
	}
	switch {
	case request != nil:
		return *request, nil
	case !sentinel:
		return ReasonLogLost, nil
	}
	return "", nil
}

// captureState is "" when the plan's capture objects are all there and its
// triggers enabled, else ReasonNotInstalled or ReasonTriggerMissing with
// the names.
func captureState(ctx context.Context, q Queryer, p Plan) (string, error) {
	var installed bool
	err := q.QueryRow(ctx, `SELECT pg_catalog.to_regclass($1) IS NOT NULL AND pg_catalog.to_regclass($2) IS NOT NULL
			AND pg_catalog.to_regclass($3) IS NOT NULL`,
		LogTable(p).Sanitized(), sentinelName.Sanitized(), rebuildName.Sanitized()).Scan(&installed)
	if err != nil {
		return "", fmt.Errorf("check capture of %s: %w", p.View, err)
	}
	if !installed {
		return ReasonNotInstalled, nil
	}
	missing, err := MissingTriggers(ctx, q, p)
	if err != nil {
		return "", fmt.Errorf("check capture of %s: %w", p.View, err)
	}
	if len(missing) > 0 {
		return ReasonTriggerMissing + ": " + strings.Join(missing, ", "), nil
	}
	return "", nil
}

func notOurs(view config.QualifiedName, relkind string) error {
	kinds := map[string]string{"v": "a view", "p": "a partitioned table", "f": "a foreign table", "i": "an index", "S": "a sequence", "c": "a type"}
	what, ok := kinds[relkind]
	if !ok {
		what = "relkind " + relkind
	}
	return fmt.Errorf("%s is %s, not a table or materialized view: refresherd does not replace it", view, what)
}

// Pending reports whether the log holds keys and, if oldest is asked for,
// the oldest one's time (its writer's transaction start). The oldest needs
// the whole log read; whether it holds keys needs one visible row, which
// matters when rounds are held off (a rebuild, a long debounce) and the log
// grows while it is polled several times a second.
func Pending(ctx context.Context, q Queryer, p Plan, oldest bool) (bool, time.Time, error) {
	log := LogTable(p).Sanitized()
	if !oldest {
		var any bool
		if err := q.QueryRow(ctx, "SELECT EXISTS (SELECT FROM "+log+")").Scan(&any); err != nil {
			return false, time.Time{}, fmt.Errorf("pending keys of %s: %w", p.View, err)
		}
		return any, time.Time{}, nil
	}
	var at *time.Time
	if err := q.QueryRow(ctx, "SELECT min("+logTimeColumn+") FROM "+log).Scan(&at); err != nil {
		return false, time.Time{}, fmt.Errorf("pending keys of %s: %w", p.View, err)
	}
	if at == nil {
		return false, time.Time{}, nil
	}
	return true, *at, nil
}

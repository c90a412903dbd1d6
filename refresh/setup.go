package refresh

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/refresh/relation"
	dbsql "github.com/refresherd/refresherd/sql"
)

// EnsureSchema creates the daemon's schema, tables and functions. Replicas
// starting together serialise on an advisory lock: concurrent CREATE OR
// REPLACE FUNCTION would fail with "tuple concurrently updated".
func EnsureSchema(ctx context.Context, pool *pgxpool.Pool) error {
	return withSetupLock(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT to_regnamespace($1) IS NOT NULL`, dbsql.SchemaName).Scan(&exists); err != nil {
			return fmt.Errorf("look up refresherd schema: %w", err)
		}
		if !exists {
			if _, err := tx.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{dbsql.SchemaName}.Sanitize()); err != nil {
				return fmt.Errorf("create refresherd schema: %w", err)
			}
		}
		if _, err := tx.Exec(ctx, dbsql.Schema); err != nil {
			return fmt.Errorf("create refresherd schema: %w", err)
		}
		return nil
	})
}

// EnsureView makes the database match one view's declaration, idempotently:
// the materialized view (created WITH NO DATA when missing; the first refresh
// populates it), a unique index usable by REFRESH ... CONCURRENTLY when there
// is none, and the trigger its change detection needs on each source table.
// It only adds triggers: which ones a table no longer needs depends on every
// view watching it, so EnsureTriggers, which sees them all, removes them.
// It never touches a source table's data.
// created reports that the view was created now (and is not yet populated).
func EnsureView(ctx context.Context, pool *pgxpool.Pool, v *config.View) (created bool, err error) {
	err = withSetupLock(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		var kind string
		err := tx.QueryRow(ctx, `SELECT c.relkind::text FROM pg_catalog.pg_class c WHERE c.oid = to_regclass($1)`,
			v.Name.Sanitized()).Scan(&kind)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			if err := execOne(ctx, tx, "CREATE MATERIALIZED VIEW "+v.Name.Sanitized()+" AS "+v.Query+"\nWITH NO DATA"); err != nil {
				return fmt.Errorf("create materialized view %s: %w", v.Name, err)
			}
			created = true
		case err != nil:
			return fmt.Errorf("look up %s: %w", v.Name, err)
		case kind == "r":
			// An incremental summary of ours (the view switched to full):
			// the definition check swaps a materialized view in beside it.
			var ours bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM refresherd.view_status WHERE view_name = $1 AND strategy = $2)`,
				v.Name.String(), config.StrategyIncremental).Scan(&ours); err != nil {
				return fmt.Errorf("look up %s: %w", v.Name, err)
			}
			if !ours {
				return fmt.Errorf("%s exists but is not a materialized view (relkind %q): refresherd will not replace it", v.Name, kind)
			}
		case kind != "m":
			return fmt.Errorf("%s exists but is not a materialized view (relkind %q): refresherd will not replace it", v.Name, kind)
		}
		if kind == "r" {
			return nil // the swap builds the materialized view and its index
		}
		if err := ensureUniqueIndex(ctx, tx, v); err != nil {
			return err
		}
		if created {
			if _, err := tx.Exec(ctx, `INSERT INTO refresherd.view_status (view_name, definition_hash) VALUES ($1, $2)
				ON CONFLICT (view_name) DO UPDATE SET definition_hash = excluded.definition_hash, data_as_of = NULL`,
				v.Name.String(), DefinitionHash(v)); err != nil {
				return fmt.Errorf("record definition of %s: %w", v.Name, err)
			}
		}
		trig, hasTrigger := triggerFor(v.ChangeDetection)
		for _, src := range v.Sources {
			if err := checkSource(ctx, tx, src, v.ChangeDetection != config.DetectNone); err != nil {
				return err
			}
			if !hasTrigger {
				continue
			}
			if trig != notifyTrigger {
				// The notify trigger serves changelog's views too: the
				// notify detector reports its tables to both modes.
				found, err := lookUpTrigger(ctx, tx, src, notifyTrigger, doorbellName(src).Sanitize())
				if err != nil {
					return err
				}
				if found.ours {
					continue
				}
			}
			if err := syncTrigger(ctx, tx, src, trig, true); err != nil {
				return err
			}
		}
		return nil
	})
	return created, err
}

// ensureUniqueIndex creates the unique index on the configured key unless
// the view already has a unique index that CONCURRENTLY can use (plain
// columns, no predicate, valid).
func ensureUniqueIndex(ctx context.Context, tx pgx.Tx, v *config.View) error {
	var usable bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (
			SELECT 1 FROM pg_catalog.pg_index i
			WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indisvalid
			  AND i.indpred IS NULL AND i.indexprs IS NULL)`, v.Name.Sanitized()).Scan(&usable); err != nil {
		return fmt.Errorf("look up unique index of %s: %w", v.Name, err)
	}
	if usable {
		return nil
	}
	cols := make([]string, len(v.UniqueKey))
	for i, c := range v.UniqueKey {
		cols[i] = pgx.Identifier{c}.Sanitize()
	}
	idx := pgx.Identifier{indexName(v.Name.Name)}.Sanitize()
	// On a populated view (one adopted without a usable index) the build
	// takes time while the global set-up lock is held: the server stops it
	// before the set-up deadline, with its own clear error, instead of
	// building on after the client gave up.
	if deadline, ok := ctx.Deadline(); ok {
		if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true)`, pgDuration(time.Until(deadline)-IndexBuildHeadroom)); err != nil {
			return fmt.Errorf("set index build timeout on %s: %w", v.Name, err)
		}
	}
	stmt := "CREATE UNIQUE INDEX IF NOT EXISTS " + idx + " ON " + v.Name.Sanitized() + " (" + strings.Join(cols, ", ") + ")"
	if _, err := tx.Exec(ctx, stmt); err != nil {
		var pgErr *pgconn.PgError
		if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &pgErr) && pgErr.Code == "57014" {
			return fmt.Errorf("create unique index on %s (%s): %w; building it takes longer than set-up may wait (at most %s): create it yourself, e.g. %s",
				v.Name, strings.Join(v.UniqueKey, ", "), err, SetupTimeout, strings.Replace(stmt, "INDEX IF NOT EXISTS", "INDEX CONCURRENTLY IF NOT EXISTS", 1))
		}
		return fmt.Errorf("create unique index on %s (%s): %w", v.Name, strings.Join(v.UniqueKey, ", "), err)
	}
	return nil
}

// indexName is <view>_refresherd_key, cut to fit PostgreSQL's 63-byte names
// at a character boundary.
func indexName(view string) string { return relation.CutName(view, "_refresherd_key") }

// Names of the changelog detector's trigger and function (the notify ones
// are in package sql). Each mode has its own trigger name; a table watched
// by views of both modes needs only the notify trigger, whose detector
// reports to both modes.
const (
	ChangelogTrigger  = "refresherd_changelog"
	changelogFunction = "changelog_append"
)

// detectorTrigger is the statement trigger a change detector installs on
// each source table.
type detectorTrigger struct {
	name     string // trigger name
	function string // function in the refresherd schema
	// legacy, when set, is the function an earlier version's trigger of
	// this name calls: such a trigger is ours, and replaced.
	legacy string
	// doorbell: the function's argument names the table's doorbell
	// (doorbellName), created with the trigger.
	doorbell bool
}

var (
	notifyTrigger = detectorTrigger{name: dbsql.TriggerName, function: dbsql.NotifyFunction,
		legacy: dbsql.LegacyNotifyFunction, doorbell: true}
	changelogTrigger = detectorTrigger{name: ChangelogTrigger, function: changelogFunction}
	// detectorTriggers are all triggers the daemon manages.
	detectorTriggers = []detectorTrigger{notifyTrigger, changelogTrigger}
)

// triggerFor returns the trigger a change detection mode needs on each
// source table; stats and none need none.
func triggerFor(mode string) (detectorTrigger, bool) {
	switch mode {
	case config.DetectNotify:
		return notifyTrigger, true
	case config.DetectChangelog:
		return changelogTrigger, true
	}
	return detectorTrigger{}, false
}

// checkSource checks that a source table exists and, when its changes are
// watched (watched), that it is a table: triggers and table statistics exist
// only for tables.
func checkSource(ctx context.Context, tx pgx.Tx, src config.QualifiedName, watched bool) error {
	var kind string
	err := tx.QueryRow(ctx, `SELECT c.relkind::text FROM pg_catalog.pg_class c WHERE c.oid = to_regclass($1)`,
		src.Sanitized()).Scan(&kind)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("source table %s does not exist", src)
	}
	if err != nil {
		return fmt.Errorf("look up source table %s: %w", src, err)
	}
	if watched && kind != "r" && kind != "p" {
		return fmt.Errorf("source %s is not a table (relkind %q): changes to it cannot be watched", src, kind)
	}
	return nil
}

// EnsureTriggers makes the daemon's triggers on every table match what all
// views need together: on each source table, the union of the triggers of
// the views watching it, where the notify trigger covers changelog's (the
// notify detector reports its tables to both modes: a table watched in both
// modes gets the notify trigger only); a daemon trigger that no view needs
// is dropped, with its doorbell, also from
// tables no view lists any more. Each table is handled in its own
// transaction, so one missing or busy table does not hold up the others;
// their errors are returned joined (each view's set-up reports its own
// table's problem too).
// Triggers are recognised by name and function (or the function of an
// earlier version, whose trigger is replaced), so a user's trigger is never
// dropped.
func EnsureTriggers(ctx context.Context, pool *pgxpool.Pool, views []config.View) error {
	want := map[config.QualifiedName]map[string]bool{}
	var tables []config.QualifiedName
	add := func(src config.QualifiedName) {
		if want[src] == nil {
			want[src] = map[string]bool{}
			tables = append(tables, src)
		}
	}
	for i := range views {
		trig, ok := triggerFor(views[i].ChangeDetection)
		if !ok {
			continue
		}
		for _, src := range views[i].Sources {
			add(src)
			want[src][trig.name] = true
		}
	}
	for _, w := range want {
		if w[notifyTrigger.name] {
			delete(w, changelogTrigger.name)
		}
	}
	// Tables that carry one of our triggers, wanted or not.
	lctx, cancel := context.WithTimeout(ctx, SetupTimeout)
	have, err := tablesWithDaemonTriggers(lctx, pool)
	cancel()
	if err != nil {
		return err
	}
	for _, src := range have {
		add(src)
	}
	var errs []error
	for _, src := range tables {
		err := withSetupLock(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
			if len(want[src]) > 0 {
				if err := checkSource(ctx, tx, src, true); err != nil {
					return err
				}
			}
			for _, trig := range detectorTriggers {
				if err := syncTrigger(ctx, tx, src, trig, want[src][trig.name]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("ensure triggers: %w", err)
			}
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ensure triggers: %w", err)
	}
	return nil
}

// tablesWithDaemonTriggers lists the tables carrying one of the daemon's
// triggers (matched by name and function).
func tablesWithDaemonTriggers(ctx context.Context, pool *pgxpool.Pool) ([]config.QualifiedName, error) {
	var names, funcs []string
	for _, t := range detectorTriggers {
		for _, fn := range []string{t.function, t.legacy} {
			if fn != "" {
				names = append(names, t.name)
				funcs = append(funcs, pgx.Identifier{dbsql.SchemaName, fn}.Sanitize()+"()")
			}
		}
	}
	rows, err := pool.Query(ctx, `SELECT DISTINCT n.nspname::text, c.relname::text
		FROM unnest($1::text[], $2::text[]) AS d(tgname, fn)
		JOIN pg_catalog.pg_trigger t ON t.tgname = d.tgname AND t.tgfoid = to_regprocedure(d.fn)
		JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE NOT t.tgisinternal
		ORDER BY 1, 2`, names, funcs)
	if err != nil {
		return nil, fmt.Errorf("list change triggers: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (config.QualifiedName, error) {
		var q config.QualifiedName
		err := r.Scan(&q.Schema, &q.Name)
		return q, err
	})
	if err != nil {
		return nil, fmt.Errorf("list change triggers: %w", err)
	}
	return out, nil
}

// syncTrigger installs (want) or removes (!want) one of the daemon's
// statement triggers on a source table. It looks before it locks: creating
// or dropping a trigger takes a lock that blocks writers, so a table already
// as wanted is left alone. A trigger of that name calling another function is
// the user's: it is neither replaced nor dropped. One calling the function of
// an earlier version, or with another argument, is replaced. A doorbell
// trigger's sequence is created before the trigger and dropped after it.
func syncTrigger(ctx context.Context, tx pgx.Tx, src config.QualifiedName, trig detectorTrigger, want bool) error {
	var arg string
	if trig.doorbell {
		arg = doorbellName(src).Sanitize()
	}
	found, err := lookUpTrigger(ctx, tx, src, trig, arg)
	if err != nil {
		return err
	}
	fn := pgx.Identifier{dbsql.SchemaName, trig.function}.Sanitize()
	name := pgx.Identifier{trig.name}.Sanitize()
	drop := func() error {
		if _, err := tx.Exec(ctx, "DROP TRIGGER IF EXISTS "+name+" ON "+src.Sanitized()); err != nil {
			return fmt.Errorf("drop trigger %s on %s: %w", trig.name, src, err)
		}
		return nil
	}
	switch {
	case want && found.current:
		// Nothing to do; a current doorbell trigger's condition depends on
		// its sequence, so that exists too.
	case want && found.exists && !found.ours:
		return fmt.Errorf("trigger %s on %s exists but does not call %s(): refresherd will not replace it", trig.name, src, fn)
	case want:
		if found.exists {
			if err := drop(); err != nil {
				return err
			}
		}
		args, when := "", ""
		if trig.doorbell {
			if err := ensureDoorbell(ctx, tx, src); err != nil {
				return err
			}
			// Only a writer that finds the doorbell armed calls the
			// function: the condition is evaluated by the executor, bound
			// to the sequence when the trigger is created, and spares the
			// others a PL/pgSQL call (most of what the trigger cost them).
			args = quoteLiteral(arg)
			when = " WHEN (pg_catalog.pg_sequence_last_value(" + args + "::pg_catalog.regclass) IS NULL)"
		}
		if _, err := tx.Exec(ctx, "CREATE TRIGGER "+name+" AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON "+
			src.Sanitized()+" FOR EACH STATEMENT"+when+" EXECUTE FUNCTION "+fn+"("+args+")"); err != nil {
			return fmt.Errorf("create trigger %s on %s: %w", trig.name, src, err)
		}
	case found.exists && found.ours:
		if err := drop(); err != nil {
			return err
		}
		if trig.doorbell {
			if _, err := tx.Exec(ctx, "DROP SEQUENCE IF EXISTS "+arg); err != nil {
				return fmt.Errorf("drop the doorbell of %s: %w", src, err)
			}
		}
	}
	return nil
}

// foundTrigger is what lookUpTrigger found on a table.
type foundTrigger struct {
	exists  bool // a trigger of the name
	ours    bool // calling our function or its legacy one
	current bool // calling our function with the wanted argument
}

// lookUpTrigger looks for a trigger named as trig on src; current means it
// calls trig's function with the one argument arg and a condition (none of
// either if arg is empty).
func lookUpTrigger(ctx context.Context, tx pgx.Tx, src config.QualifiedName, trig detectorTrigger, arg string) (foundTrigger, error) {
	fn := pgx.Identifier{dbsql.SchemaName, trig.function}.Sanitize() + "()"
	legacy := ""
	if trig.legacy != "" {
		legacy = pgx.Identifier{dbsql.SchemaName, trig.legacy}.Sanitize() + "()"
	}
	var f foundTrigger
	if err := tx.QueryRow(ctx, `SELECT count(*) > 0,
			coalesce(bool_and(t.tgfoid IN (to_regprocedure($3), coalesce(to_regprocedure(nullif($4, '')), 0))), false),
			coalesce(bool_and(t.tgfoid = to_regprocedure($3) AND CASE WHEN $5 = '' THEN t.tgargs = ''::bytea
				ELSE t.tgargs = pg_catalog.convert_to($5, 'UTF8') || '\x00'::bytea AND t.tgqual IS NOT NULL END), false)
			FROM pg_catalog.pg_trigger t
			WHERE t.tgrelid = to_regclass($1) AND t.tgname = $2`, src.Sanitized(), trig.name, fn, legacy, arg).Scan(&f.exists, &f.ours, &f.current); err != nil {
		return f, fmt.Errorf("look up trigger %s on %s: %w", trig.name, src, err)
	}
	return f, nil
}

// doorbellName is the doorbell sequence of source table src (notify): named
// by a hash of the table's name, so that any name fits in 63 bytes.
func doorbellName(src config.QualifiedName) pgx.Identifier {
	h := sha256.Sum256([]byte(src.Schema + "." + src.Name))
	return pgx.Identifier{dbsql.SchemaName, "doorbell_" + hex.EncodeToString(h[:8])}
}

// ensureDoorbell creates src's doorbell unless it exists: armed (a new
// sequence is not called), UNLOGGED from PostgreSQL 15 (no WAL at each arm
// and ring; crash recovery resets it to armed), owned by the daemon's role.
// A concurrent creation (two replicas) fails one of them; it is retried.
func ensureDoorbell(ctx context.Context, tx querier, src config.QualifiedName) error {
	var exists, unlogged bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL, current_setting('server_version_num')::int >= 150000`,
		doorbellName(src).Sanitize()).Scan(&exists, &unlogged); err != nil {
		return fmt.Errorf("look up the doorbell of %s: %w", src, err)
	}
	if exists {
		return nil
	}
	create := "CREATE SEQUENCE "
	if unlogged {
		create = "CREATE UNLOGGED SEQUENCE "
	}
	if _, err := tx.Exec(ctx, create+doorbellName(src).Sanitize()); err != nil {
		return fmt.Errorf("create the doorbell of %s: %w", src, err)
	}
	// The trigger's condition reads it as the writer's role.
	if _, err := tx.Exec(ctx, "GRANT SELECT ON SEQUENCE "+doorbellName(src).Sanitize()+" TO PUBLIC"); err != nil {
		return fmt.Errorf("let writers read the doorbell of %s: %w", src, err)
	}
	return nil
}

// querier is a transaction or a pool.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// quoteLiteral quotes s as an SQL string literal (a trigger's argument
// cannot be a parameter).
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// DefinitionHash identifies a view's definition: its query and unique key.
func DefinitionHash(v *config.View) string {
	h := sha256.New()
	h.Write([]byte(v.Query))
	h.Write([]byte{0})
	h.Write([]byte(strings.Join(v.UniqueKey, "\x00")))
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// execOne runs sql, a statement embedding a configured query, with the
// extended protocol, whose Parse step accepts exactly one statement: a
// second one smuggled behind a ';' in the query is an error instead of being
// run. pgx's Exec cannot do this: without arguments it always uses the
// simple protocol, which runs every statement in the string, whatever
// QueryExecMode is asked for.
func execOne(ctx context.Context, tx pgx.Tx, sql string) error {
	err := tx.Conn().PgConn().ExecParams(ctx, sql, nil, nil, nil, nil).Read().Err
	// The server's "cannot insert multiple commands into a prepared
	// statement" is a syntax error (42601) without a position.
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42601" && pgErr.Position == 0 {
		return fmt.Errorf("%w (the view's query must be a single statement)", err)
	}
	return err
}

// withSetupLock runs fn in a set-up transaction holding the global set-up
// lock, all of it within SetupTimeout: fn gets that bounded ctx. The server
// bounds each statement and lock wait too, so a set-up whose client is gone
// (or cannot reach it to cancel) does not hold the lock on.
func withSetupLock(ctx context.Context, pool *pgxpool.Pool, fn func(context.Context, pgx.Tx) error) error {
	ctx, cancel := context.WithTimeout(ctx, SetupTimeout)
	defer cancel()
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true)`,
			pgDuration(SetupTimeout), pgDuration(SetupLockTimeout)); err != nil {
			return fmt.Errorf("set timeouts: %w", err)
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey("setup", "")); err != nil {
			return fmt.Errorf("take set-up lock: %w", err)
		}
		return fn(ctx, tx)
	})
}

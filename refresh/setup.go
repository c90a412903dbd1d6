package refresh

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
	dbsql "github.com/refresherd/refresherd/sql"
)

// setupLockTimeout bounds waits on locks during set-up (creating a trigger
// locks the source table against writers): a busy table delays set-up of
// that view, it never hangs the daemon.
const setupLockTimeout = "10s"

// EnsureSchema creates the daemon's schema, tables and functions. Replicas
// starting together serialise on an advisory lock: concurrent CREATE OR
// REPLACE FUNCTION would fail with "tuple concurrently updated".
func EnsureSchema(ctx context.Context, pool *pgxpool.Pool) error {
	return withSetupLock(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, dbsql.Schema); err != nil {
			return fmt.Errorf("create refresherd schema: %w", err)
		}
		return nil
	})
}

// EnsureView makes the database match one view's declaration, idempotently:
// the materialized view (created WITH NO DATA when missing; the first refresh
// populates it), a unique index usable by REFRESH ... CONCURRENTLY when there
// is none, and the change trigger on each source table when the view uses
// notify. It never touches a source table's data.
// created reports that the view was created now (and is not yet populated).
func EnsureView(ctx context.Context, pool *pgxpool.Pool, v *config.View) (created bool, err error) {
	err = withSetupLock(ctx, pool, func(tx pgx.Tx) error {
		var kind string
		err := tx.QueryRow(ctx, `SELECT c.relkind::text FROM pg_catalog.pg_class c WHERE c.oid = to_regclass($1)`,
			v.Name.Sanitized()).Scan(&kind)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			if _, err := tx.Exec(ctx, "CREATE MATERIALIZED VIEW "+v.Name.Sanitized()+" AS "+v.Query+"\nWITH NO DATA"); err != nil {
				return fmt.Errorf("create materialized view %s: %w", v.Name, err)
			}
			created = true
		case err != nil:
			return fmt.Errorf("look up %s: %w", v.Name, err)
		case kind != "m":
			return fmt.Errorf("%s exists but is not a materialized view (relkind %q): refresherd will not replace it", v.Name, kind)
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
		for _, src := range v.Sources {
			if err := ensureTrigger(ctx, tx, src, v.ChangeDetection == config.DetectNotify); err != nil {
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
	if _, err := tx.Exec(ctx, "CREATE UNIQUE INDEX IF NOT EXISTS "+idx+" ON "+v.Name.Sanitized()+" ("+strings.Join(cols, ", ")+")"); err != nil {
		return fmt.Errorf("create unique index on %s (%s): %w", v.Name, strings.Join(v.UniqueKey, ", "), err)
	}
	return nil
}

// indexName is <view>_refresherd_key, cut to fit PostgreSQL's 63-byte names
// at a character boundary.
func indexName(view string) string {
	const suffix = "_refresherd_key"
	limit := 63 - len(suffix)
	if len(view) > limit {
		cut := limit
		for cut > 0 && !isRuneStart(view[cut]) {
			cut--
		}
		view = view[:cut]
	}
	return view + suffix
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }

// ensureTrigger installs (want) or removes (!want) the daemon's statement
// trigger on a source table. It looks before it locks: creating a trigger
// takes a lock that blocks writers, so an existing trigger is left alone.
func ensureTrigger(ctx context.Context, tx pgx.Tx, src config.QualifiedName, want bool) error {
	var kind string
	err := tx.QueryRow(ctx, `SELECT c.relkind::text FROM pg_catalog.pg_class c WHERE c.oid = to_regclass($1)`,
		src.Sanitized()).Scan(&kind)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("source table %s does not exist", src)
	}
	if err != nil {
		return fmt.Errorf("look up source table %s: %w", src, err)
	}
	if kind != "r" && kind != "p" {
		if !want {
			return nil
		}
		return fmt.Errorf("source %s is not a table (relkind %q): changes to it cannot be watched", src, kind)
	}
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
			WHERE t.tgrelid = to_regclass($1) AND t.tgname = $2)`, src.Sanitized(), dbsql.TriggerName).Scan(&exists); err != nil {
		return fmt.Errorf("look up trigger on %s: %w", src, err)
	}
	trig := pgx.Identifier{dbsql.TriggerName}.Sanitize()
	switch {
	case want && !exists:
		fn := pgx.Identifier{dbsql.SchemaName, dbsql.NotifyFunction}.Sanitize()
		if _, err := tx.Exec(ctx, "CREATE OR REPLACE TRIGGER "+trig+" AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON "+
			src.Sanitized()+" FOR EACH STATEMENT EXECUTE FUNCTION "+fn+"()"); err != nil {
			return fmt.Errorf("create change trigger on %s: %w", src, err)
		}
	case !want && exists:
		if _, err := tx.Exec(ctx, "DROP TRIGGER IF EXISTS "+trig+" ON "+src.Sanitized()); err != nil {
			return fmt.Errorf("drop change trigger on %s: %w", src, err)
		}
	}
	return nil
}

// DefinitionHash identifies a view's definition: its query and unique key.
func DefinitionHash(v *config.View) string {
	h := sha256.New()
	h.Write([]byte(v.Query))
	h.Write([]byte{0})
	h.Write([]byte(strings.Join(v.UniqueKey, "\x00")))
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func withSetupLock(ctx context.Context, pool *pgxpool.Pool, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('lock_timeout', $1, true)`, setupLockTimeout); err != nil {
			return fmt.Errorf("set lock timeout: %w", err)
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey("setup", "")); err != nil {
			return fmt.Errorf("take set-up lock: %w", err)
		}
		return fn(tx)
	})
}

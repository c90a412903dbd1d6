// Package relation holds what the strategies share about the relations
// they build: PostgreSQL's identifier limit and carrying grants and the
// app's indexes over to a rebuilt relation.
package relation

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/refresherd/refresherd/config"
)

// CutName is name+suffix within PostgreSQL's 63-byte identifiers, name cut
// at a character boundary (the server would cut it mid-character and then
// our own later references would not match).
func CutName(name, suffix string) string {
	limit := 63 - len(suffix)
	if len(name) > limit {
		cut := limit
		for cut > 0 && name[cut]&0xC0 == 0x80 { // a UTF-8 continuation byte
			cut--
		}
		name = name[:cut]
	}
	return name + suffix
}

// CopyGrants grants on to what was granted on from (table privileges,
// other than the owner's own), so the app's roles can still read the
// rebuilt summary.
func CopyGrants(ctx context.Context, tx pgx.Tx, from, to config.QualifiedName) error {
	rows, err := tx.Query(ctx, `SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END,
			a.privilege_type, a.is_grantable
		FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
		WHERE c.oid = pg_catalog.to_regclass($1) AND a.grantee <> c.relowner
		ORDER BY 1, 2`, from.Sanitized())
	if err != nil {
		return fmt.Errorf("read grants of %s: %w", from, err)
	}
	type grant struct {
		role      *string
		privilege string
		option    bool
	}
	grants, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (grant, error) {
		var g grant
		err := r.Scan(&g.role, &g.privilege, &g.option)
		return g, err
	})
	if err != nil {
		return fmt.Errorf("read grants of %s: %w", from, err)
	}
	// Privilege names go into the statement: only known ones.
	known := []string{"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"}
	for _, g := range grants {
		if !slices.Contains(known, g.privilege) {
			continue
		}
		grantee := "PUBLIC"
		if g.role != nil {
			grantee = pgx.Identifier{*g.role}.Sanitize()
		}
		stmt := "GRANT " + g.privilege + " ON " + to.Sanitized() + " TO " + grantee
		if g.option {
			stmt += " WITH GRANT OPTION"
		}
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("copy grant to %s: %s: %w", to, stmt, err)
		}
	}
	return nil
}

// IndexCopy is an index built on a new relation under a side name, to
// take its original Name once the old relation (and with it the original
// index) is dropped. Both names are in the relations' schema.
type IndexCopy struct{ Side, Name string }

// CopyIndexes builds on `to` a copy of every valid index of `from` except
// those named in skip (the strategy's own) and those backing a constraint,
// each under a side name, and returns them for RenameIndexes after the
// swap: the app's own indexes on a summary (say on user_id, for its reads)
// survive a rebuild. The definition is pg_get_indexdef's, whose prefix the
// server writes as CREATE [UNIQUE] INDEX <name> ON <schema>.<table> USING;
// only that prefix is replaced.
func CopyIndexes(ctx context.Context, tx pgx.Tx, from, to config.QualifiedName, skip []string) ([]IndexCopy, error) {
	rows, err := tx.Query(ctx, `SELECT i.relname::text, pg_catalog.pg_get_indexdef(x.indexrelid), x.indisunique,
			'CREATE ' || CASE WHEN x.indisunique THEN 'UNIQUE ' ELSE '' END || 'INDEX ' || pg_catalog.quote_ident(i.relname)
				|| ' ON ' || pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(t.relname) || ' USING '
		FROM pg_catalog.pg_index x
		JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
		JOIN pg_catalog.pg_class t ON t.oid = x.indrelid
		JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
		WHERE x.indrelid = pg_catalog.to_regclass($1) AND x.indisvalid AND NOT (i.relname = ANY ($2::text[]))
		  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c WHERE c.conindid = x.indexrelid)
		ORDER BY 1`, from.Sanitized(), skip)
	if err != nil {
		return nil, fmt.Errorf("read indexes of %s: %w", from, err)
	}
	type index struct {
		name, def, prefix string
		unique            bool
	}
	indexes, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (index, error) {
		var ix index
		err := r.Scan(&ix.name, &ix.def, &ix.unique, &ix.prefix)
		return ix, err
	})
	if err != nil {
		return nil, fmt.Errorf("read indexes of %s: %w", from, err)
	}
	var copies []IndexCopy
	for _, ix := range indexes {
		rest, ok := strings.CutPrefix(ix.def, ix.prefix)
		if !ok {
			return nil, fmt.Errorf("copy index %s of %s: unexpected definition %q", ix.name, from, ix.def)
		}
		side := CutName(ix.name, "_rfd_new")
		stmt := "CREATE INDEX "
		if ix.unique {
			stmt = "CREATE UNIQUE INDEX "
		}
		stmt += pgx.Identifier{side}.Sanitize() + " ON " + to.Sanitized() + " USING " + rest
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return nil, fmt.Errorf("copy index %s of %s: %s: %w", ix.name, from, stmt, err)
		}
		copies = append(copies, IndexCopy{Side: side, Name: ix.name})
	}
	return copies, nil
}

// RenameIndexes gives each copy its original name, once the relation that
// held the originals is dropped.
func RenameIndexes(ctx context.Context, tx pgx.Tx, schema string, copies []IndexCopy) error {
	for _, c := range copies {
		stmt := "ALTER INDEX " + pgx.Identifier{schema, c.Side}.Sanitize() + " RENAME TO " + pgx.Identifier{c.Name}.Sanitize()
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("rename index: %s: %w", stmt, err)
		}
	}
	return nil
}

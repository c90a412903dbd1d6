// Package relation holds what the strategies share about the relations
// they build: PostgreSQL's identifier limit and carrying grants over to a
// rebuilt relation.
package relation

import (
	"context"
	"fmt"
	"slices"

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

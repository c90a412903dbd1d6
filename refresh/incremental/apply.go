package incremental

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Round is what one Apply did.
type Round struct {
	Touched  int64     // distinct group keys drained from the log
	Deleted  int64     // summary rows of touched groups that no longer exist
	Upserted int64     // summary rows inserted or changed (unchanged groups write nothing)
	Oldest   time.Time // the smallest logged_at drained; zero when the log was empty
}

// Apply runs one round in a single statement: it drains the log, recomputes
// the touched groups from the source through the view's own query, deletes
// the summary rows of groups that are gone and upserts the rest. One
// statement sees one snapshot, so a key committed after it is invisible to
// the drain and stays for the next round, while every change the snapshot
// does see is in the recomputed groups: nothing lost, nothing counted
// twice. The caller begins tx at REPEATABLE READ (so the rest of its round
// shares the snapshot), has checked NeedsRebuild in it, and serialises
// rounds of a view.
func Apply(ctx context.Context, tx pgx.Tx, p Plan) (Round, error) {
	var r Round
	if err := p.validate(); err != nil {
		return r, fmt.Errorf("apply %s: %w", p.View, err)
	}
	var oldest *time.Time
	if err := queryRow(ctx, tx, applySQL(p), nil, &r.Touched, &r.Deleted, &r.Upserted, &oldest); err != nil {
		return Round{}, fmt.Errorf("apply %s: %w", p.View, err)
	}
	if oldest != nil {
		r.Oldest = *oldest
	}
	return r, nil
}

// applySQL is the round's statement:
//   - drained, touched: the log's keys visible to the snapshot, removed;
//   - recomputed: per touched group, its row from the view's query, or a
//     row of NULLs with found NULL when the group is gone (LEFT JOIN). The
//     query's columns are renamed c1..cn and the touched key kept as
//     k1..kn, so no output column can collide with ours. OFFSET 0 keeps
//     the planner from flattening the subquery into a join that aggregates
//     the whole source; kept apart, it pushes the key conditions below the
//     GROUP BY, where the source's index applies;
//   - deleted: the summary rows of touched groups that are gone, or, when
//     the unique key is not computed from the group key alone, whose
//     unique key is no longer the group's (a key such as min(id) can
//     change). A join on the group key, not an anti-join: estimates that
//     are off cannot turn it quadratic;
//   - upserted: the recomputed rows, written only where they differ.
func applySQL(p Plan) string {
	log := LogTable(p).Sanitized()
	view := p.View.Sanitized()
	keys := logColumns(p)

	pos := map[string]string{} // output column -> c<i>
	var cols, cs, set, vOld, vNew []string
	for i, c := range p.Columns {
		ci := "c" + strconv.Itoa(i+1)
		pos[c.Name] = ci
		cols = append(cols, ident(c.Name))
		cs = append(cs, ci)
		if slices.Contains(p.UniqueKey, c.Name) {
			continue
		}
		set = append(set, ident(c.Name)+" = excluded."+ident(c.Name))
		vOld = append(vOld, "v."+ident(c.Name))
		vNew = append(vNew, "excluded."+ident(c.Name))
	}
	// The lateral's key conditions, on the renamed columns: = for NOT NULL
	// keys so the index applies, IS NOT DISTINCT FROM for nullable ones.
	var lateral, summaryKey []string
	for i, k := range p.Keys {
		op := " = "
		if k.Nullable {
			op = " IS NOT DISTINCT FROM "
		}
		lateral = append(lateral, "q."+pos[k.Column]+op+"t."+logColumn(i))
		summaryKey = append(summaryKey, "v."+ident(k.Column)+op+"r."+logColumn(i))
	}
	// A group's summary rows go when it is gone. When its unique key can
	// change (min(id)), also when the key differs; otherwise that test
	// would cost every touched group a look at the summary's heap: at 10M
	// charges, more than the recompute through a covering index.
	gone := "r.found IS NULL"
	if !p.UniqueFromGroup {
		var sameUnique []string
		for _, u := range p.UniqueKey {
			sameUnique = append(sameUnique, "v."+ident(u)+" IS NOT DISTINCT FROM r."+pos[u])
		}
		gone = "(r.found IS NULL OR NOT (" + strings.Join(sameUnique, " AND ") + "))"
	}
	onConflict := "DO NOTHING"
	if len(set) > 0 {
		// Compared as text: works for types without an equality operator
		// (json) and sees a changed representation (numeric scale) as a
		// change, as a full rebuild would.
		onConflict = "DO UPDATE SET " + strings.Join(set, ", ") +
			"\n\t\tWHERE ROW(" + strings.Join(vOld, ", ") + ")::text IS DISTINCT FROM ROW(" + strings.Join(vNew, ", ") + ")::text"
	}

	return "WITH drained AS (\n\tDELETE FROM " + log + " RETURNING " + keys + ", " + logTimeColumn + "\n" +
		"), touched AS (\n\tSELECT DISTINCT " + keys + " FROM drained\n" +
		"), recomputed AS (\n\tSELECT t.*, s.* FROM touched t LEFT JOIN LATERAL (\n\t\tSELECT true AS found, q.* FROM (\n" + p.Query +
		// The newline ends a trailing -- comment in the query.
		"\n\t\t) q (" + strings.Join(cs, ", ") + ") WHERE " + strings.Join(lateral, " AND ") + " OFFSET 0\n\t) s ON true\n" +
		"), deleted AS (\n\tDELETE FROM " + view + " v USING recomputed r WHERE " + strings.Join(summaryKey, " AND ") +
		"\n\t\tAND " + gone + "\n\tRETURNING 1\n" +
		"), upserted AS (\n\tINSERT INTO " + view + " AS v (" + strings.Join(cols, ", ") + ") SELECT " + strings.Join(cs, ", ") +
		" FROM recomputed WHERE found" +
		"\n\tON CONFLICT (" + strings.Join(quoteAll(p.UniqueKey), ", ") + ") " + onConflict + "\n\tRETURNING 1\n" +
		")\nSELECT (SELECT count(*) FROM touched), (SELECT count(*) FROM deleted), (SELECT count(*) FROM upserted), (SELECT min(" +
		logTimeColumn + ") FROM drained)"
}

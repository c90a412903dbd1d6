package incremental

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Sides of a mismatched row.
const (
	SideSummary = "summary only" // in the summary, not in a fresh aggregate
	SideQuery   = "query only"   // in a fresh aggregate, not in the summary
)

// NullText stands for SQL NULL in Mismatch.Row.
const NullText = "NULL"

// Verification is the result of comparing the summary with a fresh full
// aggregate.
type Verification struct {
	Mismatched    int64      // rows on one side only, counted with multiplicity; must be 0
	Rows          []Mismatch // the first of them (at most the limit asked for), ordered
	PendingGroups int64      // groups in the log, left out of the comparison
}

// Mismatch is one row found on one side only.
type Mismatch struct {
	Side string            // SideSummary or SideQuery
	Row  map[string]string // output column -> value as text (NullText for NULL)
}

// Verify compares the summary with a fresh full aggregate of the query in
// tx's snapshot, in both directions (EXCEPT ALL, so duplicates count),
// leaving out the groups whose keys are still in the log: not yet applied
// is not wrong. Values are compared as text, which any type has and which
// is what a reader sees. One statement: the log, the summary and the
// source are read in one snapshot whatever the isolation level.
func Verify(ctx context.Context, tx pgx.Tx, p Plan, limit int) (Verification, error) {
	var v Verification
	if err := p.validate(); err != nil {
		return v, fmt.Errorf("verify %s: %w", p.View, err)
	}
	var sample []byte
	if err := queryRow(ctx, tx, verifySQL(p), []any{int64(max(limit, 0))}, &v.PendingGroups, &v.Mismatched, &sample); err != nil {
		return Verification{}, fmt.Errorf("verify %s: %w", p.View, err)
	}
	if sample == nil {
		return v, nil
	}
	var rows [][]*string
	if err := json.Unmarshal(sample, &rows); err != nil {
		return Verification{}, fmt.Errorf("verify %s: decode rows: %w", p.View, err)
	}
	for _, r := range rows {
		if len(r) != len(p.Columns)+1 || r[0] == nil {
			return Verification{}, fmt.Errorf("verify %s: decode rows: %d values, want %d", p.View, len(r), len(p.Columns)+1)
		}
		m := Mismatch{Side: *r[0], Row: make(map[string]string, len(p.Columns))}
		for i, c := range p.Columns {
			val := NullText
			if r[i+1] != nil {
				val = *r[i+1]
			}
			m.Row[c.Name] = val
		}
		v.Rows = append(v.Rows, m)
	}
	return v, nil
}

func verifySQL(p Plan) string {
	log := LogTable(p).Sanitized()
	keys := logColumns(p)
	// Positional names c1..cn inside, so no output column can collide with
	// "side".
	text := func(alias string) string {
		out := make([]string, len(p.Columns))
		for i, c := range p.Columns {
			out[i] = alias + "." + ident(c.Name) + "::text AS c" + strconv.Itoa(i+1)
		}
		return strings.Join(out, ", ")
	}
	pos := make([]string, len(p.Columns))
	for i := range p.Columns {
		pos[i] = "c" + strconv.Itoa(i+1)
	}
	order := "side, " + strings.Join(pos, ", ")
	return "WITH pending AS (\n\tSELECT DISTINCT " + keys + " FROM " + log + "\n" +
		"), summary AS (\n\tSELECT " + text("v") + " FROM " + p.View.Sanitized() + " v" +
		"\n\tWHERE NOT EXISTS (SELECT FROM pending t WHERE " + keyMatch("v", "t", p.Keys) + ")\n" +
		"), fresh AS (\n\tSELECT " + text("q") + " FROM (\n" + p.Query + "\n\t) q" +
		"\n\tWHERE NOT EXISTS (SELECT FROM pending t WHERE " + keyMatch("q", "t", p.Keys) + ")\n" +
		"), diff AS (\n\tSELECT " + literal(SideSummary) + " AS side, * FROM (SELECT * FROM summary EXCEPT ALL SELECT * FROM fresh) d" +
		"\n\tUNION ALL\n\tSELECT " + literal(SideQuery) + ", * FROM (SELECT * FROM fresh EXCEPT ALL SELECT * FROM summary) d\n" +
		")\nSELECT (SELECT count(*) FROM pending), (SELECT count(*) FROM diff)," +
		// An array, not json_build_array: no 100-argument limit.
		"\n\t(SELECT json_agg(ARRAY[" + order + "] ORDER BY " + order + ") FROM (SELECT * FROM diff ORDER BY " + order + " LIMIT $1) x)"
}

// Package incremental maintains a summary as a plain table whose work per
// round is proportional to what changed: statement triggers with
// transition tables log the group keys that writers touch; a round drains
// the log and recomputes only those groups from the source through the
// view's own query, in one REPEATABLE READ snapshot.
//
// This package holds the SQL: deciding whether a query qualifies
// (Analyze), the capture objects (Install), a round (Apply), a full
// rebuild (Rebuild) and verification (Verify). Transactions, timeouts,
// locks, the status row and fencing belong to the caller
// (refresh.IncrementalStrategy).
package incremental

import (
	"github.com/refresherd/refresherd/config"
)

// Plan is how one qualifying view is maintained incrementally. Analyze
// builds it; everything else works from it.
type Plan struct {
	View      config.QualifiedName // the summary table (the view's name)
	Query     string               // the configured query, one SELECT
	Source    config.QualifiedName // the one source table
	Keys      []Key                // the group key, in GROUP BY order
	Columns   []Column             // the query's output columns, in order
	UniqueKey []string             // output columns of the summary's unique index (config unique_key)
	// UniqueFromGroup: every unique-key column is computed from group-key
	// columns alone (no aggregate), so a group that still exists keeps
	// its summary row's unique key and a round deletes only the rows of
	// groups that are gone.
	UniqueFromGroup bool
	// Reads are the source columns the query reads, in the table's
	// order; nil when it reads a whole row or a system column. An index
	// holding all of them lets a round skip the table (CheckIndex).
	Reads []string
	// Hash identifies the definition (query, keys, unique key): it names
	// the capture objects, so a changed definition's objects can be
	// installed beside the old ones.
	Hash string
}

// Key is one group-key column.
type Key struct {
	Column   string // output column name (appears unchanged in the output)
	Source   string // the source table's column it is
	Type     string // SQL type, as format_type prints it
	Nullable bool   // the source column may be NULL (compare with IS NOT DISTINCT FROM)
}

// Column is one output column of the query.
type Column struct {
	Name string
	Type string // as format_type prints it
}

// NotQualified says why a query cannot be maintained incrementally.
type NotQualified struct {
	Reason string
}

func (e *NotQualified) Error() string { return "not incremental: " + e.Reason }

package incremental

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/refresh/relation"
)

// Schema holds every object of the capture; the daemon creates it at
// start-up (refresh.EnsureSchema).
const Schema = "refresherd"

// Prefix starts the name of every capture object (log table, trigger
// functions, triggers on the source): an operator recognises them as the
// daemon's, and the daemon can find the ones no plan uses any more.
const Prefix = "refresherd_inc_"

// Shared tables, one row per log (keyed by the log table's name).
const (
	// SentinelTable is UNLOGGED, like the logs: crash recovery and standby
	// promotion empty both, so a log without its sentinel row may have lost
	// keys.
	SentinelTable = "incremental_sentinel"
	// RebuildTable is logged: a TRUNCATE's request for a rebuild must
	// survive a crash.
	RebuildTable = "incremental_rebuild"
	// RegistryTable lists each installed key log with its view, so the
	// capture of a definition no longer in use can be found and removed.
	RegistryTable = "incremental_capture"
)

// Names of the transition tables inside the trigger functions.
const (
	oldTable = "rfd_old"
	newTable = "rfd_new"
)

// Reasons NeedsRebuild gives.
const (
	ReasonSummaryMissing = "summary missing"
	ReasonMatview        = "summary is a materialized view"
	ReasonNotInstalled   = "capture not installed"
	ReasonLogLost        = "log lost"
	ReasonTruncated      = "truncated"
	ReasonTriggerMissing = "trigger missing" // followed by ": " and the names
)

// summaryFillfactor is the summary table's fillfactor (Rebuild).
const summaryFillfactor = 90

const (
	logTimeColumn         = "logged_at"
	summaryKeyIndexSuffix = "_refresherd_key" // the full strategy's name for the unique index
	summaryGroupIdxSuffix = "_refresherd_group"
)

// GroupIndex is the name of the summary's group-key index (rounds use it;
// a materialized view of the full strategy does not get it).
func GroupIndex(view config.QualifiedName) string {
	return relation.CutName(view.Name, summaryGroupIdxSuffix)
}

// token identifies a plan in object names. It covers the view as well as
// the definition hash: two views with the same query and unique key have
// the same hash but must not share a log (each round drains what it reads).
// 16 hex digits keep every name well under PostgreSQL's 63 bytes.
func token(p Plan) string {
	h := sha256.New()
	h.Write([]byte(p.View.Schema))
	h.Write([]byte{0})
	h.Write([]byte(p.View.Name))
	h.Write([]byte{0})
	h.Write([]byte(p.Hash))
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// LogTable is the plan's key log, refresherd.refresherd_inc_<token>_log.
// Its columns are k1..kn (the group key, in Plan.Keys order, with the
// source columns' types) and logged_at. It is a queue: the daemon should
// vacuum it as it does refresherd.changelog.
func LogTable(p Plan) config.QualifiedName {
	return config.QualifiedName{Schema: Schema, Name: Prefix + token(p) + "_log"}
}

// RoundLock is the view's round lock, refresherd.refresherd_inc_<token>_lock:
// an empty view that rounds lock (LockRound) before their snapshot. It is
// named after the summary, not the plan, so refreshers of two definitions
// (a rolling upgrade) serialise too, and Uninstall leaves it.
func RoundLock(view config.QualifiedName) config.QualifiedName {
	h := sha256.Sum256([]byte(view.Schema + "\x00" + view.Name))
	return config.QualifiedName{Schema: Schema, Name: Prefix + hex.EncodeToString(h[:])[:16] + "_lock"}
}

// trigger is one capture trigger and its function (same name; the
// function is in Schema).
type trigger struct {
	name  string
	event string // INSERT, UPDATE, DELETE or TRUNCATE
}

func triggers(p Plan) []trigger { return captureTriggers(Prefix + token(p)) }

// captureTriggers are the triggers of the plan whose objects' names start
// with base (Prefix + token).
func captureTriggers(base string) []trigger {
	return []trigger{
		{base + "_ins", "INSERT"},
		{base + "_upd", "UPDATE"},
		{base + "_del", "DELETE"},
		{base + "_trunc", "TRUNCATE"},
	}
}

// TriggerNames are the plan's triggers on Plan.Source; the function each
// one runs has the same name in Schema.
func TriggerNames(p Plan) []string {
	var names []string
	for _, t := range triggers(p) {
		names = append(names, t.name)
	}
	return names
}

// ident quotes one identifier.
func ident(s string) string { return pgx.Identifier{s}.Sanitize() }

// logColumn is the log's column for key i (0-based). Positional names, so
// a key column called logged_at cannot collide with the log's own.
func logColumn(i int) string { return fmt.Sprintf("k%d", i+1) }

func logColumns(p Plan) string {
	cols := make([]string, len(p.Keys))
	for i := range p.Keys {
		cols[i] = logColumn(i)
	}
	return strings.Join(cols, ", ")
}

// keyMatch is the condition that the summary-side row alias a has the
// group of log-side row alias l: = for NOT NULL keys, so an index applies,
// IS NOT DISTINCT FROM only where the source column may be NULL.
func keyMatch(a, l string, keys []Key) string {
	conds := make([]string, len(keys))
	for i, k := range keys {
		op := " = "
		if k.Nullable {
			op = " IS NOT DISTINCT FROM "
		}
		conds[i] = a + "." + ident(k.Column) + op + l + "." + logColumn(i)
	}
	return strings.Join(conds, " AND ")
}

// nullableKey reports whether output column c is a group-key column whose
// source column may be NULL.
func nullableKey(p Plan, c string) bool {
	for _, k := range p.Keys {
		if k.Column == c {
			return k.Nullable
		}
	}
	return false
}

func quoteAll(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = ident(n)
	}
	return out
}

// validate catches a Plan that would produce broken SQL.
func (p Plan) validate() error {
	switch {
	case p.View.Schema == "" || p.View.Name == "":
		return errors.New("plan has no view")
	case p.Source.Schema == "" || p.Source.Name == "":
		return errors.New("plan has no source")
	case strings.TrimSpace(p.Query) == "":
		return errors.New("plan has no query")
	case len(p.Keys) == 0:
		return errors.New("plan has no group key")
	case len(p.Columns) == 0:
		return errors.New("plan has no columns")
	case len(p.UniqueKey) == 0:
		return errors.New("plan has no unique key")
	case p.Hash == "":
		return errors.New("plan has no hash")
	}
	has := func(c string) bool {
		return slices.ContainsFunc(p.Columns, func(col Column) bool { return col.Name == c })
	}
	for _, k := range p.Keys {
		if !has(k.Column) || k.Source == "" {
			return fmt.Errorf("group-key column %q is not an output column", k.Column)
		}
	}
	for _, c := range p.UniqueKey {
		if !has(c) {
			return fmt.Errorf("unique-key column %q is not an output column", c)
		}
	}
	return nil
}

// exec runs a statement that embeds the configured query with the
// extended protocol, whose Parse accepts exactly one statement: a second
// one smuggled behind a ';' is an error instead of being run. pgx's Exec
// without arguments would use the simple protocol.
func exec(ctx context.Context, tx pgx.Tx, sql string) (pgconn.CommandTag, error) {
	res := tx.Conn().PgConn().ExecParams(ctx, sql, nil, nil, nil, nil).Read()
	return res.CommandTag, oneStatement(res.Err)
}

// queryRow is exec for a statement returning one row, scanned into dest.
// QueryExecModeExec keeps the extended protocol even with no arguments and
// prepares nothing that a rebuild could invalidate; results come in binary,
// so pgx decodes them whatever the session's DateStyle.
func queryRow(ctx context.Context, tx pgx.Tx, sql string, args []any, dest ...any) error {
	opts := []any{pgx.QueryExecModeExec, pgx.QueryResultFormats{pgx.BinaryFormatCode}}
	return oneStatement(tx.QueryRow(ctx, sql, append(opts, args...)...).Scan(dest...))
}

func oneStatement(err error) error {
	// The server's "cannot insert multiple commands into a prepared
	// statement" is a syntax error (42601) without a position.
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42601" && pgErr.Position == 0 {
		return fmt.Errorf("%w (the view's query must be a single statement)", err)
	}
	return err
}

// Queryer is what the read-only checks need: a pgx.Tx, pgx.Conn or
// pgxpool.Pool.
type Queryer interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/refresh"
)

const statusHelp = `Show the configured views' refresh status as recorded in the database
(table refresherd.view_status, written in the same transaction as each
refresh), so it works from any pod or laptop that can reach the database,
whether or not a daemon runs there.

Columns:
  DATA AS OF     the snapshot the view's data reflects; "never" if the view was
                 never refreshed
  STALENESS      the database's clock minus DATA AS OF: an upper bound on how old
                 the data is (the sources may not have changed since)
  LAST DURATION  duration of the last attempt
  LAST RESULT    success or error (the error is truncated; --json has it whole)
  IN PROGRESS    a refresh of the view is running now: its per-view lock is held,
                 or a REFRESH MATERIALIZED VIEW of it by application "refresherd"
                 is active (pid of the backend)
Below the table: whether some session holds the leader lock, and which.

--json prints one document with stable field names and RFC 3339 times
(UTC); null means unknown or never.

Exit codes: 0 status shown, 1 database unreachable or query failed,
2 bad usage or configuration.`

// insufficientPrivilege is SQLSTATE 42501.
const insufficientPrivilege = "42501"

// statusTimeout bounds the whole command: it only reads a few catalog rows.
const statusTimeout = 30 * time.Second

// statusDoc is the --json output. Field names are a public contract
// (scripts parse them): add fields, never rename or remove them.
type statusDoc struct {
	// GeneratedAt is the database's clock when the status was read; every
	// staleness is measured against it, never against the client's clock.
	GeneratedAt       time.Time    `json:"generated_at"`
	StatusTableExists bool         `json:"status_table_exists"`
	Leader            leaderDoc    `json:"leader"`
	Views             []viewStatus `json:"views"`
}

type leaderDoc struct {
	Name            string  `json:"name"`
	Held            bool    `json:"held"`
	PID             *int32  `json:"pid"`
	ApplicationName *string `json:"application_name"`
	ClientAddr      *string `json:"client_addr"`
}

type viewStatus struct {
	View             string   `json:"view"`
	Strategy         string   `json:"strategy"`           // in use (from the status table), else as configured
	TargetLagSeconds *float64 `json:"target_lag_seconds"` // configured; null when none
	// TargetReachable: the last refresh took no longer than the target
	// (refresh time plus detection must fit in it); null when unknown.
	TargetReachable     *bool      `json:"target_reachable"`
	Exists              bool       `json:"exists"`
	Populated           bool       `json:"populated"`
	DataAsOf            *time.Time `json:"data_as_of"`
	StalenessSeconds    *float64   `json:"staleness_seconds"`
	LastSuccessAt       *time.Time `json:"last_success_at"`
	LastAttemptAt       *time.Time `json:"last_attempt_at"`
	LastDurationSeconds *float64   `json:"last_duration_seconds"`
	LastResult          *string    `json:"last_result"`
	LastError           *string    `json:"last_error"`
	LastTrigger         *string    `json:"last_trigger"`
	ConsecutiveFailures int        `json:"consecutive_failures"`
	RefreshedBy         *string    `json:"refreshed_by"`
	InProgress          bool       `json:"in_progress"`
	InProgressPID       *int32     `json:"in_progress_pid"`
	InProgressSince     *time.Time `json:"in_progress_since"`
}

func runStatus(args []string, env Env) int {
	fs := newCmdFlags("status", "status [--config FILE] [--database-url URL] [--json]", statusHelp, env)
	df := addDBFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON for scripts instead of a table")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return errorf(env, ExitUsage, "status", "unexpected arguments: %v", fs.Args())
	}
	s, err := loadDB(df, env)
	if err != nil {
		return errorf(env, ExitUsage, "status", "%v", err)
	}
	env = redacted(env, s)
	setAppName(s.poolCfg.ConnConfig, "refresherd-status")

	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	conn, err := connect(ctx, s.poolCfg.ConnConfig)
	if err != nil {
		return errorf(env, ExitFailure, "status", "%v", err)
	}
	defer closeConn(conn)
	doc, err := readStatus(ctx, conn, s.cfg)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == insufficientPrivilege {
			return errorf(env, ExitFailure, "status", "%v (status needs USAGE on schema refresherd and SELECT on refresherd.view_status)", err)
		}
		return errorf(env, ExitFailure, "status", "%v", err)
	}

	var buf bytes.Buffer
	if *asJSON {
		enc := json.NewEncoder(&buf)
		enc.SetIndent("", "  ")
		if err := enc.Encode(doc); err != nil {
			return errorf(env, ExitFailure, "status", "encode JSON: %v", err)
		}
	} else {
		writeStatusTable(&buf, doc)
	}
	// One write: the redacting writer sees whole lines.
	if _, err := env.Stdout.Write(buf.Bytes()); err != nil {
		return errorf(env, ExitFailure, "status", "write output: %v", err)
	}
	return ExitOK
}

// readStatus reads everything status shows. Each query is read-only and
// needs no privilege beyond SELECT on refresherd.view_status: pg_locks is
// readable by everyone, pg_stat_activity shows other roles' sessions with
// the query and client address hidden (then the lock is what tells).
func readStatus(ctx context.Context, conn *pgx.Conn, cfg *config.Config) (*statusDoc, error) {
	doc := &statusDoc{Leader: leaderDoc{Name: cfg.Leader.Name}}
	if err := conn.QueryRow(ctx, `SELECT clock_timestamp(), to_regclass('refresherd.view_status') IS NOT NULL`).
		Scan(&doc.GeneratedAt, &doc.StatusTableExists); err != nil {
		return nil, fmt.Errorf("read status: %w", err)
	}
	doc.GeneratedAt = doc.GeneratedAt.UTC()
	byName := map[string]*viewStatus{}
	names := make([]string, len(cfg.Views))
	for i, v := range cfg.Views {
		names[i] = v.Name.String()
		doc.Views = append(doc.Views, viewStatus{View: names[i]})
	}
	for i := range doc.Views {
		byName[doc.Views[i].View] = &doc.Views[i]
	}
	if err := readRelations(ctx, conn, cfg, doc); err != nil {
		return nil, err
	}
	if doc.StatusTableExists {
		if err := readStatusRows(ctx, conn, names, byName, doc.GeneratedAt); err != nil {
			return nil, err
		}
	}
	if err := readLocks(ctx, conn, cfg, byName, doc); err != nil {
		return nil, err
	}
	if err := readActivity(ctx, conn, cfg, byName); err != nil {
		return nil, err
	}
	return doc, nil
}

// readRelations records whether each view exists and is populated: a view
// that is "never" refreshed may also not have been created yet.
func readRelations(ctx context.Context, conn *pgx.Conn, cfg *config.Config, doc *statusDoc) error {
	for i, v := range cfg.Views {
		var populated *bool
		// An incremental summary is a table: populated once it exists.
		if err := conn.QueryRow(ctx, `SELECT (SELECT c.relispopulated FROM pg_catalog.pg_class c
				WHERE c.oid = to_regclass($1) AND c.relkind IN ('m', 'r'))`, v.Name.Sanitized()).Scan(&populated); err != nil {
			return fmt.Errorf("read status: look up %s: %w", v.Name, err)
		}
		doc.Views[i].Strategy = v.Strategy
		if v.TargetLag > 0 {
			s := v.TargetLag.Seconds()
			doc.Views[i].TargetLagSeconds = &s
		}
		doc.Views[i].Exists = populated != nil
		doc.Views[i].Populated = populated != nil && *populated
	}
	return nil
}

func readStatusRows(ctx context.Context, conn *pgx.Conn, names []string, byName map[string]*viewStatus, now time.Time) error {
	rows, err := conn.Query(ctx, `SELECT view_name, data_as_of, last_success_at, last_attempt_at,
			last_duration_seconds, last_result, last_error, last_trigger, consecutive_failures, refreshed_by,
			coalesce(strategy, '')
		FROM refresherd.view_status WHERE view_name = ANY($1)`, names)
	if err != nil {
		return fmt.Errorf("read status table: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var r viewStatus
		if err := rows.Scan(&name, &r.DataAsOf, &r.LastSuccessAt, &r.LastAttemptAt, &r.LastDurationSeconds,
			&r.LastResult, &r.LastError, &r.LastTrigger, &r.ConsecutiveFailures, &r.RefreshedBy, &r.Strategy); err != nil {
			return fmt.Errorf("read status table: %w", err)
		}
		vs := byName[name]
		r.View, r.Exists, r.Populated = vs.View, vs.Exists, vs.Populated
		if r.Strategy == "" {
			r.Strategy = vs.Strategy
		}
		r.TargetLagSeconds = vs.TargetLagSeconds
		if r.TargetLagSeconds != nil && r.LastDurationSeconds != nil {
			ok := *r.LastDurationSeconds < *r.TargetLagSeconds
			r.TargetReachable = &ok
		}
		r.DataAsOf, r.LastSuccessAt, r.LastAttemptAt = utc(r.DataAsOf), utc(r.LastSuccessAt), utc(r.LastAttemptAt)
		if r.DataAsOf != nil {
			// Never negative: the snapshot is taken inside the refresh
			// transaction on the same server clock.
			s := max(now.Sub(*r.DataAsOf), 0).Seconds()
			r.StalenessSeconds = &s
		}
		*vs = r
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read status table: %w", err)
	}
	return nil
}

// readLocks finds the holders of the leader lock and of the per-view
// locks. A bigint advisory lock shows in pg_locks split into classid (high
// 32 bits) and objid (low 32 bits) with objsubid 1, scoped to a database.
func readLocks(ctx context.Context, conn *pgx.Conn, cfg *config.Config, byName map[string]*viewStatus, doc *statusDoc) error {
	type lockID struct{ classid, objid int64 }
	idOf := func(key int64) lockID {
		c, o := refresh.AdvisoryLockIDs(key)
		return lockID{int64(c), int64(o)}
	}
	leader := idOf(refresh.LeaderLockKey(cfg.Leader.Name))
	views := map[lockID]*viewStatus{}
	classids, objids := []int64{leader.classid}, []int64{leader.objid}
	for _, v := range cfg.Views {
		id := idOf(refresh.ViewLockKey(v.Name.String()))
		views[id] = byName[v.Name.String()]
		classids, objids = append(classids, id.classid), append(objids, id.objid)
	}
	rows, err := conn.Query(ctx, `SELECT l.classid::bigint, l.objid::bigint, l.pid, a.application_name,
			host(a.client_addr), a.xact_start
		FROM pg_catalog.pg_locks l
		LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
		  AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = current_database())
		  AND (l.classid::bigint, l.objid::bigint) IN (SELECT * FROM unnest($1::bigint[], $2::bigint[]))
		ORDER BY l.pid`, classids, objids)
	if err != nil {
		return fmt.Errorf("read locks: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id lockID
		var pid *int32
		var app, addr *string
		var xactStart *time.Time
		if err := rows.Scan(&id.classid, &id.objid, &pid, &app, &addr, &xactStart); err != nil {
			return fmt.Errorf("read locks: %w", err)
		}
		if id == leader && !doc.Leader.Held {
			doc.Leader = leaderDoc{Name: cfg.Leader.Name, Held: true, PID: pid, ApplicationName: app, ClientAddr: addr}
		}
		if vs := views[id]; vs != nil && !vs.InProgress {
			vs.InProgress, vs.InProgressPID, vs.InProgressSince = true, pid, utc(xactStart)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read locks: %w", err)
	}
	return nil
}

// readActivity finds REFRESH statements run by refresherd that the lock
// did not show (a refresh not taking the per-view lock, e.g. an older
// version). The daemon's statement is exactly
// "REFRESH MATERIALIZED VIEW [CONCURRENTLY] <sanitized name>".
func readActivity(ctx context.Context, conn *pgx.Conn, cfg *config.Config, byName map[string]*viewStatus) error {
	rows, err := conn.Query(ctx, `SELECT a.pid, a.query, a.xact_start FROM pg_catalog.pg_stat_activity a
		WHERE a.datname = current_database() AND a.state = 'active' AND a.application_name = 'refresherd'
		  AND a.query ILIKE 'REFRESH MATERIALIZED VIEW %'
		ORDER BY a.pid`)
	if err != nil {
		return fmt.Errorf("read activity: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var pid int32
		var query string
		var xactStart *time.Time
		if err := rows.Scan(&pid, &query, &xactStart); err != nil {
			return fmt.Errorf("read activity: %w", err)
		}
		query = strings.TrimSpace(query)
		for _, v := range cfg.Views {
			vs := byName[v.Name.String()]
			if vs.InProgress || !strings.HasSuffix(query, " "+v.Name.Sanitized()) {
				continue
			}
			vs.InProgress, vs.InProgressPID, vs.InProgressSince = true, &pid, utc(xactStart)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read activity: %w", err)
	}
	return nil
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// maxTableError is how much of an error the table shows.
const maxTableError = 60

func writeStatusTable(buf *bytes.Buffer, doc *statusDoc) {
	tw := tabwriter.NewWriter(buf, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VIEW\tSTRATEGY\tDATA AS OF\tSTALENESS\tTARGET\tLAST DURATION\tLAST RESULT\tIN PROGRESS")
	for _, v := range doc.Views {
		asOf, stale := "never", "-"
		if v.DataAsOf != nil {
			asOf = v.DataAsOf.Local().Format(time.RFC3339)
			stale = formatAge(time.Duration(*v.StalenessSeconds * float64(time.Second)))
		} else if !v.Exists {
			asOf = "never (view not created)"
		}
		dur := "-"
		if v.LastDurationSeconds != nil {
			dur = formatDuration(time.Duration(*v.LastDurationSeconds * float64(time.Second)))
		}
		result := "-"
		if v.LastResult != nil {
			result = *v.LastResult
			if v.LastError != nil && *v.LastError != "" {
				result += ": " + truncate(oneLine(*v.LastError), maxTableError)
			}
			if v.ConsecutiveFailures > 1 {
				result += fmt.Sprintf(" (%d failures in a row)", v.ConsecutiveFailures)
			}
		}
		inProgress := "no"
		if v.InProgress {
			inProgress = "yes"
			if v.InProgressPID != nil {
				inProgress += " (pid " + strconv.Itoa(int(*v.InProgressPID)) + ")"
			}
		}
		target := "-"
		if v.TargetLagSeconds != nil {
			target = formatDuration(time.Duration(*v.TargetLagSeconds * float64(time.Second)))
			if v.TargetReachable != nil && !*v.TargetReachable {
				target += " (out of reach)"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.View, v.Strategy, asOf, stale, target, dur, result, inProgress)
	}
	_ = tw.Flush()
	fmt.Fprintf(buf, "\nleader %q: %s\n", doc.Leader.Name, describeLeader(doc.Leader))
	if !doc.StatusTableExists {
		fmt.Fprintln(buf, "note: refresherd.view_status does not exist yet: no refresh has run against this database")
	}
}

func describeLeader(l leaderDoc) string {
	if !l.Held {
		return "no session holds the leader lock (no daemon is refreshing)"
	}
	var details []string
	if l.PID != nil {
		details = append(details, "pid "+strconv.Itoa(int(*l.PID)))
	}
	if l.ApplicationName != nil && *l.ApplicationName != "" {
		details = append(details, "application "+strconv.Quote(*l.ApplicationName))
	}
	if l.ClientAddr != nil {
		details = append(details, "client "+*l.ClientAddr)
	}
	if len(details) == 0 {
		return "held"
	}
	return "held by " + strings.Join(details, ", ")
}

// formatAge prints an age to the second, or in days and hours when long:
// staleness is read by people deciding whether data is too old.
func formatAge(d time.Duration) string {
	switch {
	case d < time.Second:
		return "0s"
	case d < 48*time.Hour:
		return d.Truncate(time.Second).String()
	default:
		days := d / (24 * time.Hour)
		return fmt.Sprintf("%dd%dh", days, (d-days*24*time.Hour)/time.Hour)
	}
}

// formatDuration prints a refresh duration with millisecond precision.
func formatDuration(d time.Duration) string {
	if d < time.Millisecond {
		return d.String()
	}
	return d.Round(time.Millisecond).String()
}

package clitest

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/refresherd/refresherd/internal/daemontest"
	"github.com/refresherd/refresherd/internal/demodata"
	"github.com/refresherd/refresherd/internal/pgtest"
	"github.com/refresherd/refresherd/refresh"
)

const summary = "public.app_chargesummary"

// statusJSON mirrors `status --json`; its field names are the contract.
type statusJSON struct {
	GeneratedAt       time.Time `json:"generated_at"`
	StatusTableExists bool      `json:"status_table_exists"`
	Leader            struct {
		Name            string  `json:"name"`
		Held            bool    `json:"held"`
		PID             *int32  `json:"pid"`
		ApplicationName *string `json:"application_name"`
		ClientAddr      *string `json:"client_addr"`
	} `json:"leader"`
	Views []viewJSON `json:"views"`
}

type viewJSON struct {
	View                string     `json:"view"`
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

// viewFields are the keys every view object must have, null or not.
var viewFields = []string{"view", "exists", "populated", "data_as_of", "staleness_seconds", "last_success_at",
	"last_attempt_at", "last_duration_seconds", "last_result", "last_error", "last_trigger",
	"consecutive_failures", "refreshed_by", "in_progress", "in_progress_pid", "in_progress_since"}

func statusDoc(t *testing.T, dbURL, cfg string) statusJSON {
	t.Helper()
	r := cmd(t, []string{"DATABASE_URL=" + dbURL}, "status", "--config", cfg, "--json")
	if r.code != 0 {
		t.Fatalf("status --json: %s", r)
	}
	var doc statusJSON
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, r)
	}
	// Every documented key is present, even when null.
	var raw struct {
		Views []map[string]json.RawMessage `json:"views"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatal(err)
	}
	for _, v := range raw.Views {
		for _, k := range viewFields {
			if _, ok := v[k]; !ok {
				t.Errorf("status --json: view object lacks %q:\n%s", k, r.stdout)
			}
		}
	}
	// RFC 3339 in UTC.
	if !strings.Contains(r.stdout, `"generated_at": "`) || !strings.HasSuffix(doc.GeneratedAt.Format(time.RFC3339Nano), "Z") {
		t.Errorf("generated_at not an RFC 3339 UTC time:\n%s", r.stdout)
	}
	return doc
}

func viewOf(t *testing.T, doc statusJSON, name string) viewJSON {
	t.Helper()
	for _, v := range doc.Views {
		if v.View == name {
			return v
		}
	}
	t.Fatalf("status has no view %s: %+v", name, doc.Views)
	return viewJSON{}
}

// tableRow returns the cells of the status table's row for view, keyed by
// the header's column names.
func tableRow(t *testing.T, out, view string) map[string]string {
	t.Helper()
	sep := regexp.MustCompile(`\s{2,}`)
	ls := lines(out)
	if len(ls) == 0 {
		t.Fatalf("empty status output")
	}
	header := sep.Split(strings.TrimSpace(ls[0]), -1)
	want := []string{"VIEW", "STRATEGY", "DATA AS OF", "STALENESS", "TARGET", "LAST DURATION", "LAST RESULT", "IN PROGRESS"}
	if strings.Join(header, "|") != strings.Join(want, "|") {
		t.Fatalf("status header = %q, want %q", header, want)
	}
	for _, l := range ls[1:] {
		cells := sep.Split(strings.TrimSpace(l), -1)
		if cells[0] != view {
			continue
		}
		if len(cells) != len(header) {
			t.Fatalf("status row has %d cells, want %d: %q", len(cells), len(header), l)
		}
		row := map[string]string{}
		for i, h := range header {
			row[h] = cells[i]
		}
		return row
	}
	t.Fatalf("status table has no row for %s:\n%s", view, out)
	return nil
}

var refreshLine = regexp.MustCompile(`^(\S+) refreshed in (\S+) \((plain|concurrently)\), data as of (\S+)$`)

// refreshed parses refresh's stdout: view -> (mode, as-of).
func refreshed(t *testing.T, stdout string) map[string]struct {
	mode string
	asOf time.Time
} {
	t.Helper()
	out := map[string]struct {
		mode string
		asOf time.Time
	}{}
	for _, l := range lines(stdout) {
		m := refreshLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("unexpected refresh output line %q", l)
		}
		if _, err := time.ParseDuration(m[2]); err != nil {
			t.Errorf("duration %q: %v", m[2], err)
		}
		asOf, err := time.Parse(time.RFC3339Nano, m[4])
		if err != nil {
			t.Fatalf("as-of %q: %v", m[4], err)
		}
		out[m[1]] = struct {
			mode string
			asOf time.Time
		}{m[3], asOf}
	}
	return out
}

func TestHelpAndVersion(t *testing.T) {
	for _, c := range []string{"run", "status", "refresh", "check", "signal", "version"} {
		r := cmd(t, nil, c, "-h")
		if r.code != 0 || !strings.Contains(r.stderr, "Usage: refresherd "+c) {
			t.Errorf("%s -h: want exit 0 and usage: %s", c, r)
		}
	}
	for _, c := range []string{"status", "refresh", "check"} {
		r := cmd(t, nil, c, "-h")
		for _, want := range []string{"--config", "-database-url", "Exit codes: 0"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("%s -h lacks %q:\n%s", c, want, r.stderr)
			}
		}
	}
	if r := cmd(t, nil, "status", "-h"); !strings.Contains(r.stderr, "upper bound") {
		t.Errorf("status -h must say staleness is an upper bound:\n%s", r.stderr)
	}
	r := cmd(t, nil, "help")
	for _, c := range []string{"status", "refresh", "check", "signal", "version", "run"} {
		if !regexp.MustCompile(`(?m)^  ` + c + ` `).MatchString(r.stderr) {
			t.Errorf("help does not list %s:\n%s", c, r.stderr)
		}
	}
	if r.code != 0 {
		t.Errorf("help: %s", r)
	}
	if r := cmd(t, nil); r.code != 2 {
		t.Errorf("no command: want exit 2: %s", r)
	}
	if r := cmd(t, nil, "status", "--no-such-flag"); r.code != 2 {
		t.Errorf("bad flag: want exit 2: %s", r)
	}
	r = cmd(t, nil, "version")
	if want := "refresherd dev (" + runtime.Version() + ")\n"; r.code != 0 || r.stdout != want {
		t.Errorf("version = %q, want %q: %s", r.stdout, want, r)
	}
}

func TestStatusBeforeAndAfterRefresh(t *testing.T) {
	dbURL, pool := demoDB(t, 2000)
	env := []string{"DATABASE_URL=" + dbURL}
	cfg := daemontest.ShippedConfig()

	// Before anything ran: the view does not exist, "never".
	r := cmd(t, env, "status", "--config", cfg)
	if r.code != 0 {
		t.Fatalf("status: %s", r)
	}
	row := tableRow(t, r.stdout, summary)
	if !strings.HasPrefix(row["DATA AS OF"], "never") || row["STALENESS"] != "-" || row["LAST RESULT"] != "-" || row["IN PROGRESS"] != "no" {
		t.Errorf("status before any refresh: %q", row)
	}
	if !strings.Contains(r.stdout, `leader "refresherd": no session holds the leader lock`) {
		t.Errorf("status: leader line missing:\n%s", r.stdout)
	}
	doc := statusDoc(t, dbURL, cfg)
	v := viewOf(t, doc, summary)
	if doc.StatusTableExists || v.Exists || v.DataAsOf != nil || v.StalenessSeconds != nil || v.LastResult != nil || v.InProgress || doc.Leader.Held {
		t.Errorf("status --json before any refresh: %+v / %+v", doc, v)
	}

	// First refresh creates and populates the view (plain), the second is
	// CONCURRENTLY.
	r = cmd(t, env, "refresh", "--config", cfg)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("refresh: %s", r)
	}
	got := refreshed(t, r.stdout)
	if len(got) != 1 || got[summary].mode != "plain" {
		t.Fatalf("first refresh: %s", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if missing, extra, err := demodata.Diff(ctx, pool, summary); err != nil || missing != 0 || extra != 0 {
		t.Fatalf("after refresh: %d missing, %d extra, %v", missing, extra, err)
	}
	// Flags after the view name work too.
	r = cmd(t, env, "refresh", summary, "--config", cfg)
	if r.code != 0 {
		t.Fatalf("refresh VIEW --config: %s", r)
	}
	got = refreshed(t, r.stdout)
	if got[summary].mode != "concurrently" {
		t.Fatalf("second refresh: %s", r)
	}
	asOf := got[summary].asOf

	doc = statusDoc(t, dbURL, cfg)
	v = viewOf(t, doc, summary)
	switch {
	case !doc.StatusTableExists || !v.Exists || !v.Populated:
		t.Errorf("after refresh: table %v, exists %v, populated %v", doc.StatusTableExists, v.Exists, v.Populated)
	case v.DataAsOf == nil || !v.DataAsOf.Equal(asOf):
		t.Errorf("data_as_of = %v, refresh said %v", v.DataAsOf, asOf)
	case v.StalenessSeconds == nil || *v.StalenessSeconds < 0 || *v.StalenessSeconds > 60:
		t.Errorf("staleness_seconds = %v", v.StalenessSeconds)
	case *v.StalenessSeconds != doc.GeneratedAt.Sub(*v.DataAsOf).Seconds():
		t.Errorf("staleness %v != generated_at - data_as_of (%v)", *v.StalenessSeconds, doc.GeneratedAt.Sub(*v.DataAsOf).Seconds())
	case v.LastResult == nil || *v.LastResult != "success" || v.LastError != nil:
		t.Errorf("last_result %v, last_error %v", v.LastResult, v.LastError)
	case v.LastTrigger == nil || *v.LastTrigger != "manual":
		t.Errorf("last_trigger = %v, want manual", v.LastTrigger)
	case v.LastDurationSeconds == nil || *v.LastDurationSeconds <= 0 || v.RefreshedBy == nil || v.ConsecutiveFailures != 0:
		t.Errorf("duration %v, refreshed_by %v, failures %d", v.LastDurationSeconds, v.RefreshedBy, v.ConsecutiveFailures)
	case v.InProgress || doc.Leader.Held:
		t.Errorf("in_progress %v, leader held %v", v.InProgress, doc.Leader.Held)
	}
	// The table agrees, and the app's function reads the same as-of.
	r = cmd(t, env, "status", "--config", cfg)
	row = tableRow(t, r.stdout, summary)
	tableAsOf, err := time.Parse(time.RFC3339, row["DATA AS OF"])
	if err != nil || !tableAsOf.Equal(asOf.Truncate(time.Second)) {
		t.Errorf("table DATA AS OF %q (%v), want %v", row["DATA AS OF"], err, asOf)
	}
	if _, err := time.ParseDuration(row["STALENESS"]); err != nil || row["LAST RESULT"] != "success" || row["IN PROGRESS"] != "no" {
		t.Errorf("table row after refresh: %q", row)
	}
	if _, err := time.ParseDuration(row["LAST DURATION"]); err != nil {
		t.Errorf("LAST DURATION %q: %v", row["LAST DURATION"], err)
	}
	var fnAsOf time.Time
	if err := pool.QueryRow(ctx, `SELECT refresherd.data_as_of($1)`, summary).Scan(&fnAsOf); err != nil || !fnAsOf.Equal(asOf) {
		t.Errorf("refresherd.data_as_of = %v, %v; want %v", fnAsOf, err, asOf)
	}
}

// failingConfig adds to the shipped summary a view that divides by each
// charge's amount: a zero amount makes its refresh fail.
var failingConfig = summaryAnd(`  - name: public.app_chargeinverse
    unique_key: [id]
    sources: [public.app_charge]
    query: SELECT c.id, 1 / c.amount AS inverse FROM public.app_charge c
`)

// summaryAnd is a config with the shipped summary and more views (YAML
// list items).
func summaryAnd(views string) string {
	return "database:\n  url: ${DATABASE_URL}\nviews:\n" + daemontest.SummaryView(demodata.SummaryQuery) + views
}

func TestRefreshFailureKeepsOldData(t *testing.T) {
	dbURL, pool := demoDB(t, 2000)
	env := []string{"DATABASE_URL=" + dbURL}
	cfg := daemontest.WriteConfig(t, failingConfig)
	const inverse = "public.app_chargeinverse"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	r := cmd(t, env, "refresh", "--config", cfg)
	if r.code != 0 {
		t.Fatalf("refresh: %s", r)
	}
	got := refreshed(t, r.stdout)
	if len(got) != 2 {
		t.Fatalf("want a line per view: %s", r)
	}
	first := got[inverse].asOf
	var rowsBefore int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM public.app_chargeinverse`).Scan(&rowsBefore); err != nil || rowsBefore != 2000 {
		t.Fatalf("inverse rows = %d, %v", rowsBefore, err)
	}

	// Bad data: the inverse view's refresh divides by zero.
	var badID int64
	if err := pool.QueryRow(ctx, `INSERT INTO app_charge (type, amount, month, user_id, job_id)
		VALUES ('hw', 0, '2026-03-01', 1, NULL) RETURNING id`).Scan(&badID); err != nil {
		t.Fatal(err)
	}
	r = cmd(t, env, "refresh", "--config", cfg)
	if r.code != 1 {
		t.Fatalf("refresh with bad data: want exit 1: %s", r)
	}
	if !strings.Contains(r.stderr, "refresherd refresh: refresh "+inverse+":") || !strings.Contains(r.stderr, "division by zero") {
		t.Errorf("stderr does not name the view and the error: %s", r)
	}
	// The other view is still refreshed.
	got = refreshed(t, r.stdout)
	if _, ok := got[summary]; !ok || len(got) != 1 {
		t.Errorf("want only %s refreshed: %s", summary, r)
	}
	// The old data is intact.
	var rowsAfter int64
	var hasBad bool
	if err := pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE id = $1) > 0 FROM public.app_chargeinverse`, badID).
		Scan(&rowsAfter, &hasBad); err != nil || rowsAfter != rowsBefore || hasBad {
		t.Errorf("inverse after failed refresh: %d rows (want %d), has the bad row %v, %v", rowsAfter, rowsBefore, hasBad, err)
	}
	if missing, extra, err := demodata.Diff(ctx, pool, summary); err != nil || missing != 0 || extra != 0 {
		t.Errorf("summary not refreshed: %d missing, %d extra, %v", missing, extra, err)
	}

	// Status: the failure with its full error in JSON, truncated in the
	// table; data_as_of unchanged.
	doc := statusDoc(t, dbURL, cfg)
	v := viewOf(t, doc, inverse)
	switch {
	case v.LastResult == nil || *v.LastResult != "error":
		t.Errorf("last_result = %v, want error", v.LastResult)
	case v.LastError == nil || !strings.Contains(*v.LastError, "division by zero") || !strings.Contains(*v.LastError, "SQLSTATE 22012"):
		t.Errorf("last_error = %v", v.LastError)
	case v.DataAsOf == nil || !v.DataAsOf.Equal(first):
		t.Errorf("data_as_of = %v, want unchanged %v", v.DataAsOf, first)
	case v.ConsecutiveFailures != 1 || v.LastTrigger == nil || *v.LastTrigger != "manual":
		t.Errorf("failures %d, trigger %v", v.ConsecutiveFailures, v.LastTrigger)
	}
	if s := viewOf(t, doc, summary); s.LastResult == nil || *s.LastResult != "success" {
		t.Errorf("summary last_result = %v", s.LastResult)
	}
	r = cmd(t, env, "status", "--config", cfg)
	row := tableRow(t, r.stdout, inverse)
	cell := row["LAST RESULT"]
	if !strings.HasPrefix(cell, "error: ") || !strings.HasSuffix(cell, "…") || len([]rune(cell)) != len("error: ")+60 {
		t.Errorf("LAST RESULT cell %q: want the error truncated to 60 characters", cell)
	}
	if len(*v.LastError) <= 60 {
		t.Errorf("last_error in JSON is not the full text: %q", *v.LastError)
	}

	// Fixed data: the next refresh succeeds and resets the failures.
	if _, err := pool.Exec(ctx, `DELETE FROM app_charge WHERE id = $1`, badID); err != nil {
		t.Fatal(err)
	}
	if r := cmd(t, env, "refresh", "--config", cfg, inverse); r.code != 0 || len(refreshed(t, r.stdout)) != 1 {
		t.Fatalf("refresh after fix: %s", r)
	}
	if v := viewOf(t, statusDoc(t, dbURL, cfg), inverse); v.ConsecutiveFailures != 0 || *v.LastResult != "success" {
		t.Errorf("after fix: %+v", v)
	}
}

func TestRefreshUnknownView(t *testing.T) {
	dbURL, pool := demoDB(t, 100)
	env := []string{"DATABASE_URL=" + dbURL}
	r := cmd(t, env, "refresh", "--config", daemontest.ShippedConfig(), summary, "public.nope")
	if r.code != 2 || r.stdout != "" {
		t.Fatalf("unknown view: want exit 2 and no output: %s", r)
	}
	want := "refresherd refresh: unknown view public.nope: not in " + daemontest.ShippedConfig() + " (configured: " + summary + ")\n"
	if r.stderr != want {
		t.Errorf("stderr = %q, want %q", r.stderr, want)
	}
	r = cmd(t, env, "refresh", "--config", daemontest.ShippedConfig(), "nope")
	if r.code != 2 || !strings.Contains(r.stderr, `view "nope": expected a qualified name schema.name`) {
		t.Errorf("unqualified view: %s", r)
	}
	// Nothing was touched: a usage error comes before any database work.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var schema *string
	if err := pool.QueryRow(ctx, `SELECT to_regnamespace('refresherd')::text`).Scan(&schema); err != nil || schema != nil {
		t.Errorf("refresherd schema created by a rejected command: %v %v", schema, err)
	}
}

func TestStatusInProgressAndLeader(t *testing.T) {
	dbURL, pool := demoDB(t, 100)
	env := []string{"DATABASE_URL=" + dbURL}
	cfg := daemontest.WriteConfig(t, `database:
  url: ${DATABASE_URL}
views:
  - name: public.app_slow
    unique_key: [id]
    change_detection: none
    query: SELECT 1 AS id, pg_sleep(0.01)::text AS slept
  - name: public.app_chargesummary
    unique_key: [id]
    sources: [public.app_charge]
    query: SELECT c.id::text AS id FROM public.app_charge c
`)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if r := cmd(t, env, "refresh", "--config", cfg); r.code != 0 {
		t.Fatalf("refresh: %s", r)
	}
	// Make the slow view slow from now on (same columns, so REFRESH works).
	if _, err := pool.Exec(ctx, `DROP MATERIALIZED VIEW public.app_slow;
		CREATE MATERIALIZED VIEW public.app_slow AS SELECT 1 AS id, pg_sleep(5)::text AS slept WITH NO DATA;
		CREATE UNIQUE INDEX ON public.app_slow (id)`); err != nil {
		t.Fatal(err)
	}

	session := func(app string) *pgx.Conn {
		t.Helper()
		cc, err := pgx.ParseConfig(dbURL)
		if err != nil {
			t.Fatal(err)
		}
		cc.RuntimeParams["application_name"] = app
		conn, err := pgx.ConnectConfig(ctx, cc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
		return conn
	}
	pidOf := func(conn *pgx.Conn) int32 {
		var pid int32
		if err := conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
			t.Fatal(err)
		}
		return pid
	}

	// 1. Leader lock held by some session: reported with its pid and name.
	leader := session("test-leader")
	if _, err := leader.Exec(ctx, `SELECT pg_advisory_lock($1)`, refresh.LeaderLockKey("refresherd")); err != nil {
		t.Fatal(err)
	}
	// 2. The summary's per-view lock held in a transaction, as a refresh does.
	locker := session("test-locker")
	tx, err := locker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, refresh.ViewLockKey(summary)); err != nil {
		t.Fatal(err)
	}
	// 3. A REFRESH by application "refresherd" that takes no advisory lock:
	// seen in pg_stat_activity.
	refresher := session("refresherd")
	refresherPID := pidOf(refresher)
	done := make(chan error, 1)
	go func() {
		_, err := refresher.Exec(ctx, `REFRESH MATERIALIZED VIEW "public"."app_slow"`)
		done <- err
	}()
	var doc statusJSON
	err = daemontest.Eventually(ctx, 100*time.Millisecond, func() error {
		doc = statusDoc(t, dbURL, cfg)
		if !viewOf(t, doc, "public.app_slow").InProgress {
			return fmt.Errorf("slow refresh not seen yet")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slow, sum := viewOf(t, doc, "public.app_slow"), viewOf(t, doc, summary)
	if slow.InProgressPID == nil || *slow.InProgressPID != refresherPID || slow.InProgressSince == nil {
		t.Errorf("app_slow in progress pid %v since %v, want pid %d", slow.InProgressPID, slow.InProgressSince, refresherPID)
	}
	if !sum.InProgress || sum.InProgressPID == nil || *sum.InProgressPID != pidOf(locker) {
		t.Errorf("summary: in progress %v pid %v, want the lock holder %d", sum.InProgress, sum.InProgressPID, pidOf(locker))
	}
	if !doc.Leader.Held || doc.Leader.PID == nil || *doc.Leader.PID != pidOf(leader) ||
		doc.Leader.ApplicationName == nil || *doc.Leader.ApplicationName != "test-leader" || doc.Leader.Name != "refresherd" {
		t.Errorf("leader = %+v, want held by %d (test-leader)", doc.Leader, pidOf(leader))
	}
	r := cmd(t, env, "status", "--config", cfg)
	if row := tableRow(t, r.stdout, summary); row["IN PROGRESS"] != fmt.Sprintf("yes (pid %d)", pidOf(locker)) {
		t.Errorf("IN PROGRESS = %q", row["IN PROGRESS"])
	}
	if want := fmt.Sprintf(`leader "refresherd": held by pid %d, application "test-leader"`, pidOf(leader)); !strings.Contains(r.stdout, want) {
		t.Errorf("status table lacks %q:\n%s", want, r.stdout)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.Exec(ctx, `SELECT pg_advisory_unlock_all()`); err != nil {
		t.Fatal(err)
	}
	doc = statusDoc(t, dbURL, cfg)
	if doc.Leader.Held || viewOf(t, doc, summary).InProgress || viewOf(t, doc, "public.app_slow").InProgress {
		t.Errorf("after release: %+v", doc)
	}
}

// TestStatusSeesDaemonLeader runs the daemon and reads its leadership from
// another process, as from a laptop.
func TestStatusSeesDaemonLeader(t *testing.T) {
	dbURL, pool := demoDB(t, 500)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := daemontest.StartT(t, daemontest.Options{Args: []string{"--config", daemontest.ShippedConfig()},
		Env: []string{"DATABASE_URL=" + dbURL}})
	if _, err := p.WaitLog(ctx, func(l map[string]any) bool { return l["msg"] == "refreshed" }); err != nil {
		t.Fatal(err)
	}
	var daemonPID int32
	classid, objid := refresh.AdvisoryLockIDs(refresh.LeaderLockKey("refresherd"))
	if err := pool.QueryRow(ctx, `SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
		AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 1`, int64(classid), int64(objid)).Scan(&daemonPID); err != nil {
		t.Fatalf("daemon's leader lock: %v", err)
	}
	doc := statusDoc(t, dbURL, daemontest.ShippedConfig())
	if !doc.Leader.Held || doc.Leader.PID == nil || *doc.Leader.PID != daemonPID ||
		doc.Leader.ApplicationName == nil || *doc.Leader.ApplicationName != "refresherd" {
		t.Errorf("leader = %+v, want the daemon's session %d", doc.Leader, daemonPID)
	}
	v := viewOf(t, doc, summary)
	if v.DataAsOf == nil || v.LastTrigger == nil || *v.LastTrigger != "startup" {
		t.Errorf("view after the daemon's start-up refresh: %+v", v)
	}
}

func TestCheckAllGood(t *testing.T) {
	dbURL, _ := demoDB(t, 100)
	env := []string{"DATABASE_URL=" + dbURL}
	r := cmd(t, env, "check", "--config", daemontest.ShippedConfig())
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("check on a fresh database: %s", r)
	}
	want := []string{
		"ok config: " + daemontest.ShippedConfig() + ": 1 view(s): " + summary,
		`ok database: connected to PostgreSQL `,
		`ok refresherd schema: does not exist yet: start-up will create it (role "postgres" may CREATE in database `,
		"ok " + summary + ": source table public.app_charge: set-up will install the change trigger (TRIGGER privilege held)",
		"ok " + summary + ": strategy full: a materialized view refreshed whole",
		"ok " + summary + ": does not exist yet: set-up will create it (query plans; unique key (id) among its columns)",
	}
	checkLines(t, r.stdout, want)

	if r := cmd(t, env, "refresh", "--config", daemontest.ShippedConfig()); r.code != 0 {
		t.Fatalf("refresh: %s", r)
	}
	r = cmd(t, env, "check", "--config", daemontest.ShippedConfig())
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("check after a refresh: %s", r)
	}
	want = []string{
		"ok config: ",
		"ok database: connected to PostgreSQL ",
		`ok refresherd schema: exists and is usable by role "postgres"`,
		"ok " + summary + ": source table public.app_charge has the change trigger",
		"ok " + summary + ": strategy full: a materialized view refreshed whole",
		"ok " + summary + ": materialized view exists: unique index app_chargesummary_refresherd_key usable by REFRESH CONCURRENTLY; definition plans; populated",
	}
	checkLines(t, r.stdout, want)
}

// checkLines checks that out has exactly len(want) lines, each starting
// with its want.
func checkLines(t *testing.T, out string, want []string) {
	t.Helper()
	got := lines(out)
	if len(got) != len(want) {
		t.Errorf("got %d lines, want %d:\n%s", len(got), len(want), out)
		return
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("line %d = %q, want prefix %q", i+1, got[i], want[i])
		}
	}
}

// createRole creates a login role for this test, dropped after the test's
// database (register it before demoDB: cleanups run last-in first-out, and
// the role's grants in the database must go first).
func createRole(t *testing.T) string {
	t.Helper()
	role := fmt.Sprintf("rfd_%s_%d", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "_")), time.Now().UnixNano()%1e6)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, pgtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, "CREATE ROLE "+pgx.Identifier{role}.Sanitize()+" LOGIN"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := pgx.Connect(ctx, pgtest.AdminURL())
		if err != nil {
			t.Error(err)
			return
		}
		defer admin.Close(context.Background())
		if _, err := admin.Exec(ctx, "DROP ROLE "+pgx.Identifier{role}.Sanitize()); err != nil {
			t.Errorf("drop role %s: %v", role, err)
		}
	})
	return role
}

var missingSourceConfig = summaryAnd(`  - name: public.app_missingsummary
    unique_key: [id]
    sources: [public.app_missing]
    query: SELECT m.id FROM public.app_missing m
`)

func TestCheckProblems(t *testing.T) {
	role := createRole(t)
	adminURL, pool := demoDB(t, 100)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var db string
	if err := pool.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		t.Fatal(err)
	}
	r := pgx.Identifier{role}.Sanitize()
	// Everything but TRIGGER on the source table.
	if _, err := pool.Exec(ctx, `GRANT CREATE ON DATABASE `+pgx.Identifier{db}.Sanitize()+` TO `+r+`;
		GRANT CREATE ON SCHEMA public TO `+r+`;
		GRANT SELECT ON public.app_charge TO `+r); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := pool.Exec(ctx, `DROP OWNED BY `+r); err != nil {
			t.Errorf("drop owned by %s: %v", role, err)
		}
	})
	roleEnv := []string{"DATABASE_URL=" + withPassword(t, adminURL, role)}
	cfg := daemontest.WriteConfig(t, missingSourceConfig)

	res := cmd(t, roleEnv, "check", "--config", cfg)
	if res.code != 1 {
		t.Fatalf("check: want exit 1: %s", res)
	}
	wantProblems := []string{
		fmt.Sprintf(`PROBLEM public.app_chargesummary: role %q lacks the TRIGGER privilege on source table public.app_charge, needed to install the change trigger (GRANT TRIGGER ON "public"."app_charge" TO %s)`, role, r),
		`PROBLEM public.app_missingsummary: source table public.app_missing does not exist`,
		`PROBLEM public.app_missingsummary: query does not plan: EXPLAIN: ERROR: relation "public.app_missing" does not exist (SQLSTATE 42P01)`,
	}
	checkProblems(t, res, wantProblems)
	if !strings.Contains(res.stdout, "ok public.app_chargesummary: does not exist yet: set-up will create it") {
		t.Errorf("the summary's query should plan for the role:\n%s", res.stdout)
	}
	if res.stderr != "refresherd check: 3 problem(s) found\n" {
		t.Errorf("stderr = %q", res.stderr)
	}

	// Once the admin has set everything up, the role lacks ownership of
	// the view and of refresherd's objects, and CREATE on its schema.
	if res := cmd(t, []string{"DATABASE_URL=" + adminURL}, "refresh", "--config", daemontest.ShippedConfig()); res.code != 0 {
		t.Fatalf("refresh as admin: %s", res)
	}
	res = cmd(t, roleEnv, "check", "--config", cfg)
	if res.code != 1 {
		t.Fatalf("check: want exit 1: %s", res)
	}
	checkProblems(t, res, []string{
		fmt.Sprintf(`PROBLEM refresherd schema: role %q lacks USAGE or CREATE on schema refresherd: start-up re-runs CREATE TABLE IF NOT EXISTS there (GRANT USAGE, CREATE ON SCHEMA refresherd TO %s)`, role, r),
		fmt.Sprintf(`PROBLEM public.app_chargesummary: is owned by role "postgres", not usable by role %q: REFRESH and CREATE INDEX need ownership (ALTER MATERIALIZED VIEW "public"."app_chargesummary" OWNER TO %s)`, role, r),
		wantProblems[1], wantProblems[2],
	})
	if !strings.Contains(res.stdout, "ok public.app_chargesummary: source table public.app_charge has the change trigger") {
		t.Errorf("an installed trigger needs no TRIGGER privilege:\n%s", res.stdout)
	}

	// status needs to read the status table: without access, exit 1 saying so.
	res = cmd(t, roleEnv, "status", "--config", cfg)
	if res.code != 1 || !strings.Contains(res.stderr, "permission denied for schema refresherd") ||
		!strings.Contains(res.stderr, "status needs USAGE on schema refresherd and SELECT on refresherd.view_status") {
		t.Errorf("status without access to the status table: %s", res)
	}

	// The schema exists already: CREATE on the database is not needed (the
	// daemon creates its schema only when it is missing).
	if _, err := pool.Exec(ctx, `REVOKE CREATE ON DATABASE `+pgx.Identifier{db}.Sanitize()+` FROM `+r); err != nil {
		t.Fatal(err)
	}
	res = cmd(t, roleEnv, "check", "--config", cfg)
	if res.code != 1 || strings.Contains(res.stdout, "CREATE on database") {
		t.Errorf("check without CREATE on the database but with the schema present: %s", res)
	}
}

// checkProblems checks that res's PROBLEM lines are exactly want, in order.
func checkProblems(t *testing.T, res result, want []string) {
	t.Helper()
	var got []string
	for _, l := range lines(res.stdout) {
		switch {
		case strings.HasPrefix(l, "PROBLEM "):
			got = append(got, l)
		case !strings.HasPrefix(l, "ok "):
			t.Errorf("line neither ok nor PROBLEM: %q", l)
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("PROBLEM lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestUnreachableDatabase(t *testing.T) {
	// Port 1 on localhost: nothing listens; the URL carries the password.
	env := []string{"DATABASE_URL=postgres://app:" + secret + "@127.0.0.1:1/app?connect_timeout=5"}
	for _, c := range []string{"status", "refresh", "check"} {
		r := cmd(t, env, c, "--config", daemontest.ShippedConfig())
		if r.code != 1 {
			t.Errorf("%s with the database down: want exit 1: %s", c, r)
		}
		if r.stderr == "" {
			t.Errorf("%s: no error on stderr: %s", c, r)
		}
	}
	r := cmd(t, env, "check", "--config", daemontest.ShippedConfig())
	if !strings.Contains(r.stdout, "PROBLEM database: cannot connect (database.url): ") {
		t.Errorf("check: %s", r)
	}
}

func TestBadConfig(t *testing.T) {
	bad := daemontest.WriteConfig(t, `database:
  url: postgres://app:`+secret+`@127.0.0.1:1/app
views:
  - name: public.app_chargesummary
    unique_key: [id]
    sources: [public.app_charge]
    query: SELECT 1 AS id
    debounce: soon
`)
	wantMsg := bad + `:8: views[0] (public.app_chargesummary).debounce: expected a duration such as 500ms, 30s or 5m, got "soon"`
	for _, c := range []string{"run", "status", "refresh", "check"} {
		r := cmd(t, nil, c, "--config", bad)
		if want := "refresherd " + c + ": " + wantMsg + "\n"; r.code != 2 || r.stderr != want || r.stdout != "" {
			t.Errorf("%s with a bad config: want exit 2 and %q: %s", c, want, r)
		}
	}
	noURL := daemontest.WriteConfig(t, `views:
  - name: public.app_chargesummary
    unique_key: [id]
    change_detection: none
    query: SELECT 1 AS id
`)
	for _, c := range []string{"status", "refresh", "check"} {
		r := cmd(t, nil, c, "--config", noURL)
		if r.code != 2 || !strings.Contains(r.stderr, "refresherd "+c+": "+noURL+": database.url: no database URL") {
			t.Errorf("%s without a URL: %s", c, r)
		}
	}
	if r := cmd(t, nil, "check", "--config", "/nonexistent/config.yaml"); r.code != 2 || !strings.Contains(r.stderr, "no such file") {
		t.Errorf("missing config file: %s", r)
	}
	if r := cmd(t, nil, "status", "--config", daemontest.ShippedConfig(), "extra"); r.code != 2 {
		t.Errorf("extra argument: want exit 2: %s", r)
	}
}

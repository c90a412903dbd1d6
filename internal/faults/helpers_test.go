package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/internal/daemontest"
	"github.com/refresherd/refresherd/internal/demodata"
	"github.com/refresherd/refresherd/internal/pgcluster"
	"github.com/refresherd/refresherd/internal/pgtest"
)

// view is the summary every test checks with demodata.Diff.
const view = "public.app_chargesummary"

// env is one test's world: a private cluster (so the test may stop, hang or
// kill it), database "app" with the demo tables and data, and a pool on it
// as superuser for the test's own reads and writes.
type env struct {
	cluster *pgcluster.Cluster
	db      string
	url     string
	pool    *pgxpool.Pool
}

// newEnv starts a private cluster and loads `charges` demo charges.
func newEnv(t *testing.T, charges int) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Quiet: the cluster's progress lines are only worth reading on failure,
	// and t.Logf would print them for every passing test under -v.
	var startLog strings.Builder
	var mu sync.Mutex
	c := pgtest.NewCluster(t, pgcluster.Options{Logf: func(f string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(&startLog, f+"\n", a...)
	}})
	t.Cleanup(func() {
		if t.Failed() {
			mu.Lock()
			defer mu.Unlock()
			t.Logf("cluster log:\n%s", startLog.String())
		}
	})
	e := &env{cluster: c, db: "app", url: c.URL("app")}
	if err := c.CreateDatabase(ctx, e.db); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(e.url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 4
	e.pool, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.pool.Close)
	if err := demodata.CreateSchema(ctx, e.pool); err != nil {
		t.Fatal(err)
	}
	if err := demodata.Load(ctx, e.pool, demodata.DefaultSize(charges)); err != nil {
		t.Fatal(err)
	}
	// A switch to make a view's query slow on demand: fault_pause() sleeps
	// fault_delay.secs. It is evaluated once per refresh (an InitPlan), so a
	// refresh takes that long, whatever the data.
	e.exec(t, `CREATE TABLE public.fault_delay (secs double precision NOT NULL);
INSERT INTO public.fault_delay VALUES (0);
CREATE FUNCTION public.fault_pause() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE s double precision;
BEGIN
    SELECT secs INTO s FROM public.fault_delay;
    IF s > 0 THEN PERFORM pg_sleep(s); END IF;
    RETURN true;
END $$`)
	return e
}

// slowQuery is the summary with the fault switch: same rows, so
// demodata.Diff applies, but as slow as fault_delay says.
const slowQuery = `SELECT q.* FROM (` + demodata.SummaryQuery + `) AS q WHERE (SELECT public.fault_pause())`

func (e *env) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.pool.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func (e *env) setDelay(t *testing.T, secs float64) {
	t.Helper()
	e.exec(t, `UPDATE public.fault_delay SET secs = $1`, secs)
}

// change commits one new charge (a change the summary must reflect).
func (e *env) change(t *testing.T) {
	t.Helper()
	e.exec(t, `INSERT INTO app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 12.34, '2026-03-01', 1, NULL)`)
}

func (e *env) mustSettle(t *testing.T, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := daemontest.Settled(ctx, e.pool, view); err != nil {
		t.Fatalf("not settled within %v: %v", within, err)
	}
}

// viewHash fingerprints the view's rows: equal hashes, equal data.
func (e *env) viewHash(t *testing.T) string {
	t.Helper()
	var h *string
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.pool.QueryRow(ctx, `SELECT md5(string_agg(v::text, ',' ORDER BY v.id)) FROM `+demodata.QuoteQualified(view)+` v`).Scan(&h); err != nil {
		t.Fatalf("hash %s: %v", view, err)
	}
	if h == nil {
		return ""
	}
	return *h
}

// statusRow is the view's row in refresherd.view_status.
type statusRow struct {
	DataAsOf    *time.Time
	LastSuccess *time.Time
	LastResult  string
	LastError   string
	Failures    int
}

func (e *env) status(t *testing.T) statusRow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var s statusRow
	err := e.pool.QueryRow(ctx, `SELECT data_as_of, last_success_at, coalesce(last_result, ''), coalesce(last_error, ''), consecutive_failures
		FROM refresherd.view_status WHERE view_name = $1`, view).Scan(&s.DataAsOf, &s.LastSuccess, &s.LastResult, &s.LastError, &s.Failures)
	if err != nil {
		t.Fatalf("read view_status: %v", err)
	}
	return s
}

// countSuccessLog counts committed successes in refresherd.refresh_log.
func (e *env) countSuccessLog(t *testing.T) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM refresherd.refresh_log WHERE view_name = $1 AND result = 'success'`, view).Scan(&n); err != nil {
		t.Fatalf("read refresh_log: %v", err)
	}
	return n
}

// serverRefreshes counts REFRESH statements of the view that the daemon
// (application_name refresherd) is running on the server right now.
func serverRefreshes(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var n int
	err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
		WHERE application_name = 'refresherd' AND state <> 'idle'
		  AND query ILIKE 'REFRESH MATERIALIZED VIEW%' AND query LIKE '%app_chargesummary%'`).Scan(&n)
	return n, err
}

// overlappingLogRows counts pairs of refresh_log rows of the view whose
// started_at..finished_at intervals overlap.
func (e *env) overlappingLogRows(t *testing.T) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM refresherd.refresh_log a JOIN refresherd.refresh_log b
		ON a.view_name = b.view_name AND a.id < b.id
		AND a.started_at < b.finished_at AND b.started_at < a.finished_at
		WHERE a.view_name = $1`, view).Scan(&n); err != nil {
		t.Fatalf("read refresh_log: %v", err)
	}
	return n
}

// config is a test configuration: short timings so faults play out in
// seconds.
type config struct {
	views       string // YAML list items under views:, indented by two spaces
	grace       string // shutdown.grace_period
	stmtTimeout string // refresh.statement_timeout
	lockTimeout string // refresh.lock_timeout
	leaderName  string
	extraTop    string // more top-level YAML
}

func (c config) write(t *testing.T) string {
	t.Helper()
	def := func(v, d string) string {
		if v == "" {
			return d
		}
		return v
	}
	body := `database:
  url: ${DATABASE_URL}
  direct_url: ${DATABASE_DIRECT_URL}
log:
  format: json
  level: info
leader:
  name: ` + def(c.leaderName, "faults") + `
shutdown:
  grace_period: ` + def(c.grace, "2s") + `
max_concurrent_refreshes: 2
` + c.extraTop + `refresh:
  debounce: 200ms
  max_delay: 2s
  statement_timeout: ` + def(c.stmtTimeout, "60s") + `
  lock_timeout: ` + def(c.lockTimeout, "2s") + `
views:
` + def(c.views, daemontest.SummaryView(demodata.SummaryQuery))
	return daemontest.WriteConfig(t, body)
}

// start runs the daemon with cfgPath and env (see daemontest.StartT).
func start(t *testing.T, cfgPath string, envVars ...string) *daemontest.Proc {
	t.Helper()
	return daemontest.StartT(t, daemontest.Options{
		Args: []string{"--config", cfgPath, "--log-format", "json"},
		Env:  envVars,
	})
}

// startDaemon runs the daemon against the env's database as superuser.
func (e *env) startDaemon(t *testing.T, c config) *daemontest.Proc {
	t.Helper()
	return start(t, c.write(t), "DATABASE_URL="+e.url)
}

// startSettled is startDaemon, then settle.
func (e *env) startSettled(t *testing.T, c config) *daemontest.Proc {
	t.Helper()
	p := e.startDaemon(t, c)
	e.settle(t, p)
	return p
}

// settle waits until p's start-up refresh is done: the summary matches the
// data and p is idle.
func (e *env) settle(t *testing.T, p *daemontest.Proc) {
	t.Helper()
	e.mustSettle(t, 30*time.Second)
	waitIdle(t, p, 30*time.Second)
}

// metric reads one series (summed over matching label sets) from /metrics.
func metric(ctx context.Context, p *daemontest.Proc, name string, labels map[string]string) (float64, error) {
	fams, err := p.Metrics(ctx)
	if err != nil {
		return 0, err
	}
	if _, ok := fams.Value(name, labels); !ok {
		return 0, fmt.Errorf("no series %s%v", name, labels)
	}
	return fams.Sum(name, labels), nil
}

func mustMetric(t *testing.T, p *daemontest.Proc, name string, labels map[string]string) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := metric(ctx, p, name, labels)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// refreshes counts refresherd_refreshes_total of the summary for a result
// and any of the triggers (all triggers when none is given).
func refreshes(t *testing.T, p *daemontest.Proc, result string, triggers ...string) float64 {
	t.Helper()
	if len(triggers) == 0 {
		return mustMetric(t, p, "refresherd_refreshes_total", map[string]string{"view": view, "result": result})
	}
	total := 0.0
	for _, tr := range triggers {
		total += mustMetric(t, p, "refresherd_refreshes_total", map[string]string{"view": view, "result": result, "trigger": tr})
	}
	return total
}

// waitMetric waits until the series satisfies ok.
func waitMetric(t *testing.T, p *daemontest.Proc, within time.Duration, name string, labels map[string]string, ok func(float64) bool) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	v, err := p.WaitMetric(ctx, name, labels, ok)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitIdle waits until the summary is clean: no refresh running or pending.
func waitIdle(t *testing.T, p *daemontest.Proc, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := p.WaitIdle(ctx, view); err != nil {
		t.Fatal(err)
	}
}

// waitInProgress waits until a refresh of the summary is running.
func waitInProgress(t *testing.T, p *daemontest.Proc, within time.Duration) {
	t.Helper()
	waitMetric(t, p, within, "refresherd_refresh_in_progress", map[string]string{"view": view}, func(v float64) bool { return v == 1 })
}

// get fetches path and returns the status code, body and how long it took.
func get(p *daemontest.Proc, path string, timeout time.Duration) (int, string, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	t0 := time.Now()
	code, body, err := p.Get(ctx, path)
	return code, string(body), time.Since(t0), err
}

// waitReady waits until /readyz answers 200.
func waitReady(p *daemontest.Proc, within time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	return daemontest.Eventually(ctx, 100*time.Millisecond, func() error {
		code, body, err := p.Get(ctx, "/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("/readyz: %d %s", code, strings.TrimSpace(string(body)))
		}
		return nil
	})
}

// statusDoc is the part of /status the tests read.
type statusDoc struct {
	Leader            bool `json:"leader"`
	ListenerConnected bool `json:"listener_connected"`
	DatabaseReachable bool `json:"database_reachable"`
	Views             []struct {
		View       string `json:"view"`
		Ready      bool   `json:"ready"`
		SetupError string `json:"setup_error"`
		LastResult string `json:"last_result"`
		LastError  string `json:"last_error"`
	} `json:"views"`
}

func getStatus(t *testing.T, p *daemontest.Proc) statusDoc {
	t.Helper()
	code, body, _, err := get(p, "/status", 10*time.Second)
	if err != nil || code != http.StatusOK {
		t.Fatalf("/status: %d %v", code, err)
	}
	var st statusDoc
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/status is not JSON: %v\n%s", err, body)
	}
	return st
}

// logsAfter returns the daemon's log lines from index from on.
func logsAfter(p *daemontest.Proc, from int) []map[string]any {
	lines := p.LogLines()
	if from > len(lines) {
		return nil
	}
	return lines[from:]
}

func msgIs(msg string) func(map[string]any) bool {
	return func(l map[string]any) bool { return l["msg"] == msg }
}

// isRefreshed matches the log line of a successful refresh of the summary.
func isRefreshed(l map[string]any) bool {
	return l["msg"] == "refreshed" && l["view"] == view && l["result"] == "success"
}

// waitLogAfter waits for a line matching f among the lines from index from.
func waitLogAfter(t *testing.T, p *daemontest.Proc, from int, within time.Duration, f func(map[string]any) bool) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	i := 0
	l, err := p.WaitLog(ctx, func(l map[string]any) bool {
		i++
		return i > from && f(l)
	})
	if err != nil {
		t.Fatalf("waiting for a log line: %v", err)
	}
	return l
}

// logTime is when a JSON log line was written (zap's ISO 8601 "ts").
func logTime(l map[string]any) (time.Time, error) {
	s, _ := l["ts"].(string)
	ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", s)
	if err != nil {
		return time.Time{}, fmt.Errorf("log line without a valid ts: %v", l)
	}
	return ts, nil
}

// median of durations (not empty).
func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// connect opens a single connection (for sessions the test holds open).
func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

package pgbouncertest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/internal/daemontest"
	"github.com/refresherd/refresherd/internal/demodata"
)

// TestDaemonThroughPgBouncer runs the shipped config with DATABASE_URL at
// PgBouncer in transaction mode and DATABASE_DIRECT_URL at PostgreSQL, and
// nothing else set: start-up refresh, a change written through PgBouncer
// (as Django would) refreshed through LISTEN, SIGUSR1, and status, refresh
// and check through PgBouncer beside the running daemon.
func TestDaemonThroughPgBouncer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	direct, pool := daemontest.DemoDB(t, 2000)
	b := startBouncer(t, "transaction")
	pooled := via(t, b, direct)
	env := []string{"DATABASE_URL=" + pooled, "DATABASE_DIRECT_URL=" + direct}
	p := daemontest.StartT(t, daemontest.Options{Env: env, Args: []string{"--config", daemontest.ShippedConfig()}})

	// The pool (database.url) is PgBouncer's port.
	var db string
	if err := pool.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		t.Fatal(err)
	}
	started, err := p.WaitLog(ctx, func(l map[string]any) bool { return l["msg"] == "refresherd starting" })
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("postgres@127.0.0.1:%d/%s", b.Port(), db); started["database"] != want {
		t.Errorf("daemon's database = %v, want %s (PgBouncer)", started["database"], want)
	}

	// Start-up: one successful refresh; the view matches the aggregate.
	waitRefreshes(t, ctx, p, "startup", 1)
	if err := settled(ctx, pool); err != nil {
		t.Fatalf("initial population: %v", err)
	}
	fams, err := p.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]float64{"refresherd_leader": 1, "refresherd_listener_connected": 1} {
		if v, ok := fams.Value(name, nil); !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}

	// A change committed through PgBouncer: its trigger's NOTIFY reaches the
	// daemon's direct LISTEN session, and the view catches up.
	writer := connect(t, ctx, pooled)
	if _, err := writer.Exec(ctx, `INSERT INTO app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 12.34, $1, 1, NULL)`,
		demodata.LastMonth); err != nil {
		t.Fatal(err)
	}
	waitRefreshes(t, ctx, p, "change", 1)
	if err := settled(ctx, pool); err != nil {
		t.Fatalf("change not reflected: %v", err)
	}

	// SIGUSR1: one manual refresh.
	manual := count(t, ctx, p, "manual")
	if err := p.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitRefreshes(t, ctx, p, "manual", manual+1)

	// The commands through PgBouncer, beside the daemon.
	r := cmd(t, env, "status", "--config", daemontest.ShippedConfig(), "--json")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("status --json: %s", r)
	}
	var st struct {
		Leader struct {
			Held            bool    `json:"held"`
			ApplicationName *string `json:"application_name"`
		} `json:"leader"`
		Views []struct {
			View       string     `json:"view"`
			DataAsOf   *time.Time `json:"data_as_of"`
			LastResult *string    `json:"last_result"`
		} `json:"views"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	if !st.Leader.Held || st.Leader.ApplicationName == nil || *st.Leader.ApplicationName != "refresherd" {
		t.Errorf("status: leader lock not shown held by the daemon:\n%s", r.stdout)
	}
	if len(st.Views) != 1 || st.Views[0].View != view || st.Views[0].DataAsOf == nil ||
		st.Views[0].LastResult == nil || *st.Views[0].LastResult != "success" {
		t.Errorf("status: unexpected views:\n%s", r.stdout)
	}
	if r := cmd(t, env, "status", "--config", daemontest.ShippedConfig()); r.code != 0 || r.stderr != "" {
		t.Errorf("status: %s", r)
	}

	r = cmd(t, env, "refresh", "--config", daemontest.ShippedConfig())
	if r.code != 0 || r.stderr != "" || len(r.lines()) != 1 || !strings.HasPrefix(r.stdout, view+" refreshed in ") {
		t.Errorf("refresh: %s", r)
	}
	r = cmd(t, env, "check", "--config", daemontest.ShippedConfig())
	if r.code != 0 || r.stderr != "" {
		t.Errorf("check: %s", r)
	}
	if bad := append(r.linesWith("PROBLEM "), r.linesWith("WARNING ")...); len(bad) > 0 {
		t.Errorf("check found problems: %s", r)
	}
	for _, want := range []string{pooledURLOK, directURLOK} {
		if !hasLine(r, want) {
			t.Errorf("check: no line %q: %s", want, r)
		}
	}

	// Nothing went wrong on the way (a prepared-statement clash is logged
	// as an error).
	if n := p.CountLogs(func(l map[string]any) bool { return l["level"] == "error" }); n != 0 {
		t.Errorf("%d error(s) logged", n)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := p.Wait(ctx); err != nil || code != 0 {
		t.Errorf("exit after SIGTERM: code %d, %v", code, err)
	}
}

// check's lines for database.url through a pooler and a direct
// database.direct_url.
const (
	pooledURLOK = "ok database: database.url goes through a connection pooler: refresherd sends it unnamed statements, which every pool mode carries"
	directURLOK = "ok database: database.direct_url connects to PostgreSQL itself (no pooler in between): LISTEN and the leader lock get a session of their own"
)

func hasLine(r result, line string) bool {
	for _, l := range r.lines() {
		if l == line {
			return true
		}
	}
	return false
}

// connect opens a connection that works through a transaction pooler
// (unnamed statements), as a Django app's would.
func connect(t *testing.T, ctx context.Context, url string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// count is refresherd_refreshes_total{view, trigger, result="success"}.
func count(t *testing.T, ctx context.Context, p *daemontest.Proc, trigger string) float64 {
	t.Helper()
	fams, err := p.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := fams.Value("refresherd_refreshes_total", map[string]string{"view": view, "trigger": trigger, "result": "success"})
	return v
}

// waitRefreshes waits until at least n refreshes by trigger succeeded, and
// fails at once if one failed.
func waitRefreshes(t *testing.T, ctx context.Context, p *daemontest.Proc, trigger string, n float64) {
	t.Helper()
	err := daemontest.Eventually(ctx, 50*time.Millisecond, func() error {
		fams, err := p.Metrics(ctx)
		if err != nil {
			return err
		}
		if failed := fams.Sum("refresherd_refreshes_total", map[string]string{"view": view, "result": "error"}); failed != 0 {
			t.Fatalf("%v refresh(es) failed:\n%s", failed, p.Logs())
		}
		got, _ := fams.Value("refresherd_refreshes_total", map[string]string{"view": view, "trigger": trigger, "result": "success"})
		if got < n {
			return fmt.Errorf("%v successful %s refreshes, want %v", got, trigger, n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// settled waits until the summary equals the aggregate exactly.
func settled(ctx context.Context, pool *pgxpool.Pool) error {
	return daemontest.Eventually(ctx, 50*time.Millisecond, func() error {
		missing, extra, err := demodata.Diff(ctx, pool, view)
		if err != nil {
			return err
		}
		if missing != 0 || extra != 0 {
			return fmt.Errorf("summary differs from the aggregate: %d rows missing, %d extra", missing, extra)
		}
		return nil
	})
}

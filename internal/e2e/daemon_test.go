package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/refresherd/refresherd/internal/daemontest"
	"github.com/refresherd/refresherd/internal/demodata"
)

const view = "public.app_chargesummary"

func refreshes(t *testing.T, ctx context.Context, p *daemontest.Proc, labels map[string]string) float64 {
	t.Helper()
	fams, err := p.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l := map[string]string{"view": view}
	for k, v := range labels {
		l[k] = v
	}
	return fams.Sum("refresherd_refreshes_total", l)
}

// TestShippedConfigEndToEnd is the core acceptance: the shipped config over
// Django-shaped tables, driven through the built binary.
func TestShippedConfigEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Start-up: the view is created, populated and matches the aggregate.
	// The password in the URL must never appear in logs, metrics or /status.
	const secret = "Sup3rSecretPw"
	p, pool := startShippedIdle(ctx, t, 20000, secret)

	// Every series is there from the start, for every trigger and result.
	fams, err := p.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"refresherd_staleness_seconds", "refresherd_pending_changes", "refresherd_refresh_in_progress",
		"refresherd_data_as_of_timestamp_seconds", "refresherd_last_success_timestamp_seconds", "refresherd_view_ready"} {
		if _, ok := fams.Value(name, map[string]string{"view": view}); !ok {
			t.Errorf("metric %s{view=%q} missing", name, view)
		}
	}
	if _, ok := fams.Value("refresherd_refreshes_total", map[string]string{"view": view, "trigger": "retry", "result": "skipped"}); !ok {
		t.Error("refreshes_total label sets are not initialised")
	}
	for name, want := range map[string]float64{"refresherd_leader": 1, "refresherd_listener_connected": 1} {
		if v, _ := fams.Value(name, nil); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}

	// Insert, update and delete: each visible within debounce + refresh + 1s.
	steps := []struct{ name, sql string }{
		{"insert", `INSERT INTO app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 12.34, '2026-03-01', 1, NULL)`},
		{"update", `UPDATE app_charge SET amount = amount + 1 WHERE id = (SELECT min(id) FROM app_charge)`},
		{"delete", `DELETE FROM app_charge WHERE id = (SELECT max(id) FROM app_charge)`},
	}
	for _, st := range steps {
		if _, err := pool.Exec(ctx, st.sql); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		committed := time.Now()
		if err := daemontest.Settled(ctx, pool, view); err != nil {
			t.Fatalf("%s not reflected: %v", st.name, err)
		}
		lag := time.Since(committed)
		bound := time.Second + lastDuration(t, ctx, p) + time.Second
		t.Logf("%s visible after %v (bound %v)", st.name, lag.Round(time.Millisecond), bound.Round(time.Millisecond))
		if lag > bound {
			t.Errorf("%s visible after %v, want <= debounce + refresh time + 1s = %v", st.name, lag, bound)
		}
		waitIdle(t, ctx, p)
	}

	// 200 single-row commits in a row: a handful of refreshes, not 200.
	before := refreshes(t, ctx, p, map[string]string{"result": "success"})
	for i := range 200 {
		if _, err := pool.Exec(ctx, `INSERT INTO app_charge (type, amount, month, user_id, job_id) VALUES ('sw', $1, '2026-04-01', 2, 3)`, 1+i%50); err != nil {
			t.Fatal(err)
		}
	}
	if err := daemontest.Settled(ctx, pool, view); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, ctx, p)
	n := refreshes(t, ctx, p, map[string]string{"result": "success"}) - before
	t.Logf("200 commits caused %v refreshes", n)
	if n < 1 || n > 10 {
		t.Errorf("200 commits caused %v refreshes, want between 1 and 10", n)
	}

	// No refresh while idle: TestIdleSkipsScheduledTicks.

	// SIGUSR1 through the CLI, as in a container: a counted manual refresh.
	before = refreshes(t, ctx, p, map[string]string{"trigger": "manual", "result": "success"})
	out, err := exec.CommandContext(ctx, daemontest.Binary(t), "signal", "refresh", "--pid", strconv.Itoa(p.PID())).CombinedOutput()
	if err != nil {
		t.Fatalf("refresherd signal refresh: %v\n%s", err, out)
	}
	if err := daemontest.Eventually(ctx, 50*time.Millisecond, func() error {
		if refreshes(t, ctx, p, map[string]string{"trigger": "manual", "result": "success"}) != before+1 {
			return fmt.Errorf("manual refresh not counted yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Probes and status.
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/status": 200} {
		code, _, err := p.Get(ctx, path)
		if err != nil || code != want {
			t.Errorf("GET %s = %d, %v; want %d", path, code, err, want)
		}
	}
	_, body, _ := p.Get(ctx, "/status")
	var st struct {
		Leader bool `json:"leader"`
		Views  []struct {
			View       string     `json:"view"`
			DataAsOf   *time.Time `json:"data_as_of"`
			LastResult string     `json:"last_result"`
		} `json:"views"`
	}
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("/status is not JSON: %v\n%s", err, body)
	}
	if !st.Leader || len(st.Views) != 1 || st.Views[0].View != view || st.Views[0].DataAsOf == nil || st.Views[0].LastResult != "success" {
		t.Errorf("unexpected /status: %s", body)
	}
	// The status table agrees with /status, written by the refresh itself.
	var dbAsOf time.Time
	if err := pool.QueryRow(ctx, `SELECT refresherd.data_as_of($1)`, view).Scan(&dbAsOf); err != nil {
		t.Fatal(err)
	}
	if !dbAsOf.Equal(*st.Views[0].DataAsOf) {
		t.Errorf("status table as-of %v, /status %v", dbAsOf, *st.Views[0].DataAsOf)
	}

	// SIGTERM: exit 0 well within the grace period.
	// Read for the password check below: a failed read would make it vacuous.
	code, metricsBody, err := p.Get(ctx, "/metrics")
	if err != nil || code != http.StatusOK || !strings.Contains(string(metricsBody), "refresherd_refreshes_total") {
		t.Fatalf("GET /metrics: %d, %v", code, err)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopCtx, stopCancel := context.WithTimeout(ctx, 30*time.Second)
	defer stopCancel()
	code, err = p.Wait(stopCtx)
	if err != nil || code != 0 {
		t.Fatalf("exit after SIGTERM: code %d, %v", code, err)
	}
	for what, text := range map[string]string{"logs": p.Logs(), "metrics": string(metricsBody), "status": string(body)} {
		if strings.Contains(text, secret) {
			t.Errorf("the database password appears in %s", what)
		}
	}
}

// TestIdleSkipsScheduledTicks: a daemon with no change to reflect does no
// refresh. A one-second schedule makes it look again and again; each look
// that finds nothing to do is counted as trigger "schedule", result
// "skipped", so the test waits for three such looks instead of sleeping.
func TestIdleSkipsScheduledTicks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url, pool := daemontest.DemoDB(t, 2000)
	p := daemontest.StartT(t, daemontest.Options{
		Args: []string{"--config", daemontest.WriteConfig(t, `refresh:
  schedule: "@every 1s"
  debounce: 200ms
  max_delay: 2s
views:
`+daemontest.SummaryView(demodata.SummaryQuery))},
		Env: []string{"DATABASE_URL=" + url},
	})
	if err := daemontest.Settled(ctx, pool, view); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, ctx, p)

	done := func() float64 {
		return refreshes(t, ctx, p, map[string]string{"result": "success"}) + refreshes(t, ctx, p, map[string]string{"result": "error"})
	}
	before := done()
	skipped := map[string]string{"view": view, "trigger": "schedule", "result": "skipped"}
	skippedBefore := refreshes(t, ctx, p, skipped)
	if _, err := p.WaitMetric(ctx, "refresherd_refreshes_total", skipped, func(v float64) bool { return v >= skippedBefore+3 }); err != nil {
		t.Fatal(err)
	}
	if d := done() - before; d != 0 {
		t.Errorf("%v refreshes while idle, want 0", d)
	}
	fams, err := p.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := fams.Value("refresherd_staleness_seconds", map[string]string{"view": view}); !ok || v != 0 {
		t.Errorf("staleness while clean = %v (series present: %v), want 0", v, ok)
	}
}

// lastDuration reads the last refresh's duration from /status.
func lastDuration(t *testing.T, ctx context.Context, p *daemontest.Proc) time.Duration {
	t.Helper()
	code, body, err := p.Get(ctx, "/status")
	if err != nil || code != http.StatusOK {
		t.Fatalf("/status: %d %v", code, err)
	}
	var st struct {
		Views []struct {
			LastDurationSeconds float64 `json:"last_duration_seconds"`
		} `json:"views"`
	}
	if err := json.Unmarshal(body, &st); err != nil || len(st.Views) == 0 {
		t.Fatalf("/status: %v %s", err, body)
	}
	return time.Duration(st.Views[0].LastDurationSeconds * float64(time.Second))
}

package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/refresherd/refresherd/internal/daemontest"
	"github.com/refresherd/refresherd/internal/demodata"
)

const monthsView = `
  - name: public.charge_months
    unique_key: [month]
    sources: [public.app_charge]
    query: SELECT month, count(*) AS n, sum(amount) AS total FROM public.app_charge GROUP BY month
`

const monthsViewV2 = `
  - name: public.charge_months
    unique_key: [month]
    sources: [public.app_charge]
    query: SELECT month, count(*) AS n, sum(amount) AS total, max(amount) AS biggest FROM public.app_charge GROUP BY month
`

func reloadConfig(views ...string) string {
	return `
refresh:
  debounce: 200ms
  max_delay: 2s
views:
` + daemontest.SummaryView(demodata.SummaryQuery) + strings.Join(views, "")
}

// TestReload: SIGHUP adds a view, changes one (rebuilt beside the old one),
// removes one (left in place), and a bad config keeps the running one.
func TestReload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	url, pool := daemontest.DemoDB(t, 5000)
	cfgPath := daemontest.WriteConfig(t, reloadConfig())
	p := daemontest.StartT(t, daemontest.Options{
		Args: []string{"--config", cfgPath},
		Env:  []string{"DATABASE_URL=" + url},
	})
	if err := daemontest.Settled(ctx, pool, view); err != nil {
		t.Fatal(err)
	}

	hup := func(body string) {
		t.Helper()
		if err := os.WriteFile(cfgPath, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := p.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	metric := func(name string, labels map[string]string) (float64, bool) {
		fams, err := p.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return fams.Value(name, labels)
	}
	monthsMatch := func(extra string) error {
		var diff int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM (
			(SELECT month, n, total`+extra+` FROM public.charge_months EXCEPT ALL
			 SELECT month, count(*), sum(amount)`+strings.Replace(extra, "biggest", "max(amount)", 1)+` FROM public.app_charge GROUP BY month)
			UNION ALL
			(SELECT month, count(*), sum(amount)`+strings.Replace(extra, "biggest", "max(amount)", 1)+` FROM public.app_charge GROUP BY month EXCEPT ALL
			 SELECT month, n, total`+extra+` FROM public.charge_months)) d`).Scan(&diff)
		if err != nil {
			return err
		}
		if diff != 0 {
			return fmt.Errorf("charge_months differs in %d rows", diff)
		}
		return nil
	}

	// Add a view.
	hup(reloadConfig(monthsView))
	if err := daemontest.Eventually(ctx, 100*time.Millisecond, func() error { return monthsMatch("") }); err != nil {
		t.Fatalf("added view: %v", err)
	}
	if v, ok := metric("refresherd_view_ready", map[string]string{"view": "public.charge_months"}); !ok || v != 1 {
		t.Fatalf("added view not ready in metrics: %v %v", v, ok)
	}
	if v, _ := metric("refresherd_config_last_reload_successful", nil); v != 1 {
		t.Fatalf("reload successful = %v", v)
	}

	// Change its definition: rebuilt beside the old one and swapped in.
	hup(reloadConfig(monthsViewV2))
	if err := daemontest.Eventually(ctx, 100*time.Millisecond, func() error { return monthsMatch(", biggest") }); err != nil {
		t.Fatalf("changed view: %v", err)
	}

	// A bad config is refused; the running one keeps working.
	hup("views: [\n")
	if err := daemontest.Eventually(ctx, 50*time.Millisecond, func() error {
		if v, ok := metric("refresherd_config_last_reload_successful", nil); !ok || v != 0 {
			return fmt.Errorf("reload_successful = %v (series present: %v)", v, ok)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO app_charge (type, amount, month, user_id) VALUES ('hw', 7, '2026-02-01', 1)`); err != nil {
		t.Fatal(err)
	}
	if err := daemontest.Settled(ctx, pool, view); err != nil {
		t.Fatalf("after a bad reload: %v", err)
	}
	if err := daemontest.Eventually(ctx, 100*time.Millisecond, func() error { return monthsMatch(", biggest") }); err != nil {
		t.Fatalf("after a bad reload: %v", err)
	}

	// Remove the charge summary: no longer managed, never dropped.
	hup(reloadConfig(monthsViewV2)[0:0] + `
refresh:
  debounce: 200ms
  max_delay: 2s
views:` + monthsViewV2)
	if err := daemontest.Eventually(ctx, 50*time.Millisecond, func() error {
		if _, ok := metric("refresherd_view_ready", map[string]string{"view": view}); ok {
			return fmt.Errorf("removed view still has series")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('public.app_chargesummary') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		t.Fatalf("removed view was dropped: %v", err)
	}
	if n := p.CountLogs(func(l map[string]any) bool { return l["msg"] == "configuration reloaded" }); n != 3 {
		t.Errorf("%d successful reloads logged, want 3", n)
	}
}

// TestDryRun: `run --dry-run` tells what start-up would change and changes
// nothing.
func TestDryRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url, pool := daemontest.DemoDB(t, 1000)
	dry := func(body string) string {
		t.Helper()
		out, err := execBinary(ctx, t, []string{"DATABASE_URL=" + url}, "run", "--dry-run", "--config", daemontest.WriteConfig(t, body))
		if err != nil {
			t.Fatalf("dry run: %v\n%s", err, out)
		}
		return out
	}
	out := dry(reloadConfig(monthsView))
	for _, want := range []string{"create schema refresherd", "public.app_chargesummary: create the materialized view", "public.charge_months: create the materialized view"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, out)
		}
	}
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('public.charge_months') IS NOT NULL OR to_regnamespace('refresherd') IS NOT NULL`).Scan(&exists); err != nil || exists {
		t.Fatalf("dry run changed the database (%v)", err)
	}
	p := daemontest.StartT(t, daemontest.Options{
		Args: []string{"--config", daemontest.WriteConfig(t, reloadConfig(monthsView))},
		Env:  []string{"DATABASE_URL=" + url},
	})
	if err := daemontest.Settled(ctx, pool, view); err != nil {
		t.Fatal(err)
	}
	// Both views refreshed: the dry run below must see them up to date.
	if err := daemontest.Eventually(ctx, 100*time.Millisecond, func() error {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM refresherd.view_status WHERE last_result = 'success'`).Scan(&n); err != nil {
			return err
		}
		if n < 2 {
			return fmt.Errorf("%d views refreshed", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	p.Kill()
	out = dry(reloadConfig(monthsViewV2))
	if !strings.Contains(out, "public.app_chargesummary: up to date") || !strings.Contains(out, "public.charge_months: definition changed: rebuild") {
		t.Errorf("dry run after a definition change:\n%s", out)
	}
}

package clitest

import (
	"context"
	"strings"
	"testing"

	"github.com/refresherd/refresherd/internal/daemontest"
	"github.com/refresherd/refresherd/internal/demodata"
)

// incrementalConfig is the shipped summary with strategy incremental.
func incrementalConfig(t *testing.T) string {
	t.Helper()
	return daemontest.WriteConfig(t, "database:\n  url: ${DATABASE_URL}\nviews:\n"+
		daemontest.SummaryView(demodata.SummaryQuery)+"    strategy: incremental\n")
}

// TestIncrementalCommands: check names the strategy and the index a round
// needs; refresh builds the summary as a table with the daemon's code;
// verify finds it equal, then finds a corrupted row (exit 1) and prints it;
// status shows the strategy.
func TestIncrementalCommands(t *testing.T) {
	dbURL, pool := demoDB(t, 2000)
	env := []string{"DATABASE_URL=" + dbURL}
	cfg := incrementalConfig(t)

	r := cmd(t, env, "check", "--config", cfg)
	if r.code != 0 || !strings.Contains(r.stdout, "strategy incremental: incremental, group key (user_id, job_id, month) over public.app_charge") {
		t.Fatalf("check: %s", r)
	}
	if !strings.Contains(r.stdout, "CREATE INDEX CONCURRENTLY ON public.app_charge (user_id, month, job_id) INCLUDE (type, amount)") {
		t.Errorf("check does not advise the index a round needs: %s", r)
	}
	r = cmd(t, env, "refresh", "--config", cfg)
	if r.code != 0 || !strings.Contains(r.stdout, "public.app_chargesummary refreshed in") || !strings.Contains(r.stdout, "(incremental, rebuilt: initial)") {
		t.Fatalf("refresh: %s", r)
	}
	var kind string
	if err := pool.QueryRow(context.Background(), `SELECT relkind::text FROM pg_class WHERE oid = 'public.app_chargesummary'::regclass`).Scan(&kind); err != nil || kind != "r" {
		t.Fatalf("summary relkind %q (%v), want a table", kind, err)
	}
	r = cmd(t, env, "verify", "--config", cfg)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "public.app_chargesummary equal (0 pending groups)") {
		t.Fatalf("verify of an exact summary: %s", r)
	}
	// A change not yet applied is pending, not a mismatch.
	if _, err := pool.Exec(context.Background(), `UPDATE public.app_charge SET amount = amount + 1 WHERE id = (SELECT min(id) FROM public.app_charge)`); err != nil {
		t.Fatal(err)
	}
	r = cmd(t, env, "verify", "--config", cfg)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "public.app_chargesummary equal (1 pending groups)") {
		t.Fatalf("verify with a pending change: %s", r)
	}
	if _, err := pool.Exec(context.Background(), `UPDATE public.app_chargesummary SET hardware = hardware + 1000
		WHERE id = (SELECT max(id) FROM public.app_chargesummary)`); err != nil {
		t.Fatal(err)
	}
	r = cmd(t, env, "verify", "--config", cfg)
	if r.code != 1 || !strings.Contains(r.stdout, "public.app_chargesummary MISMATCH: 2 rows differ") ||
		!strings.Contains(r.stdout, "summary only:") || !strings.Contains(r.stdout, "query only:") {
		t.Fatalf("verify of a corrupted summary: %s", r)
	}
	r = cmd(t, env, "status", "--config", cfg)
	if row := tableRow(t, r.stdout, "public.app_chargesummary"); row["STRATEGY"] != "incremental" {
		t.Fatalf("status row %v, want strategy incremental", row)
	}
}

// TestIncrementalNotQualifying: strategy incremental on a query that does
// not qualify is reported by check (a problem naming the reason) and by
// verify (an error); auto falls back to full and says why.
func TestIncrementalNotQualifying(t *testing.T) {
	dbURL, _ := demoDB(t, 200)
	env := []string{"DATABASE_URL=" + dbURL}
	join := `SELECT c.id, u.name FROM public.app_charge c JOIN public.app_user u ON u.id = c.user_id`
	view := func(strategy string) string {
		return daemontest.WriteConfig(t, "database:\n  url: ${DATABASE_URL}\nviews:\n"+
			"  - name: public.joined\n    unique_key: [id]\n    sources: [public.app_charge]\n    strategy: "+strategy+"\n    query: "+join+"\n")
	}
	r := cmd(t, env, "check", "--config", view("incremental"))
	if r.code != 1 || !strings.Contains(r.stdout, "strategy incremental, but the query does not qualify:") || !strings.Contains(r.stdout, "public.app_user") {
		t.Fatalf("check: %s", r)
	}
	r = cmd(t, env, "check", "--config", view("auto"))
	if r.code != 0 || !strings.Contains(r.stdout, "strategy auto: full, because the query does not qualify for incremental:") {
		t.Fatalf("check (auto): %s", r)
	}
	r = cmd(t, env, "verify", "--config", view("auto"))
	if r.code != 0 || !strings.Contains(r.stdout, "public.joined skipped: strategy full (auto:") {
		t.Fatalf("verify (auto): %s", r)
	}
}

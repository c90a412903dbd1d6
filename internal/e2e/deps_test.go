package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/refresherd/refresherd/internal/daemontest"
)

const chainConfig = `
refresh:
  debounce: 200ms
  max_delay: 2s
  vacuum_threshold: 1
views:
  - name: public.chain_c
    unique_key: [y]
    depends_on: [public.chain_b]
    query: SELECT y, sum(total) AS total FROM public.chain_b GROUP BY y
  - name: public.chain_b
    unique_key: [y]
    depends_on: [public.chain_a]
    query: SELECT extract(year FROM month)::int AS y, sum(total) AS total FROM public.chain_a GROUP BY 1
  - name: public.chain_a
    unique_key: [month]
    sources: [public.app_charge]
    query: SELECT month, sum(amount) AS total FROM public.app_charge GROUP BY month
  - name: public.chain_undeclared
    unique_key: [month]
    change_detection: none
    query: SELECT month, total FROM public.chain_a
`

// TestDependencyChain: one base change refreshes a chain of three views in
// order (each after the one it reads), and the last matches the base data.
func TestDependencyChain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url, pool := daemontest.DemoDB(t, 5000)
	p := daemontest.StartT(t, daemontest.Options{
		Args: []string{"--config", daemontest.WriteConfig(t, chainConfig)},
		Env:  []string{"DATABASE_URL=" + url},
	})
	cMatches := func() error {
		var diff int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM (
			(SELECT y, total FROM public.chain_c EXCEPT SELECT extract(year FROM month)::int, sum(amount) FROM app_charge GROUP BY 1)
			UNION ALL
			(SELECT extract(year FROM month)::int, sum(amount) FROM app_charge GROUP BY 1 EXCEPT SELECT y, total FROM public.chain_c)) d`).Scan(&diff)
		if err != nil {
			return err
		}
		if diff != 0 {
			return fmt.Errorf("chain_c differs in %d rows", diff)
		}
		return nil
	}
	if err := daemontest.Eventually(ctx, 100*time.Millisecond, cMatches); err != nil {
		t.Fatalf("initial: %v", err)
	}
	// The start-up round is over: every view refreshed (chain_undeclared
	// after its set-up found the dependency it does not declare), then the
	// chain idle all at once, so its refresh log after the mark below is the
	// base change's doing only. (chain_undeclared is not in that log check,
	// and without change detection its staleness never reads 0.)
	chain := []string{"public.chain_a", "public.chain_b", "public.chain_c"}
	for _, v := range append(chain, "public.chain_undeclared") {
		if _, err := p.WaitMetric(ctx, "refresherd_refreshes_total", map[string]string{"view": v, "result": "success"},
			func(n float64) bool { return n >= 1 }); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.WaitIdle(ctx, chain...); err != nil {
		t.Fatal(err)
	}
	var mark time.Time
	if err := pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&mark); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO app_charge (type, amount, month, user_id) VALUES ('hw', 500, '2026-05-01', 1)`); err != nil {
		t.Fatal(err)
	}
	if err := daemontest.Eventually(ctx, 100*time.Millisecond, cMatches); err != nil {
		t.Fatalf("after a base change: %v", err)
	}
	// The refresh log shows the order: a, then b, then c, each starting
	// after the one before it committed.
	rows, err := pool.Query(ctx, `SELECT view_name, started_at, finished_at FROM refresherd.refresh_log
		WHERE result = 'success' AND started_at > $1 AND view_name LIKE 'public.chain\__' ORDER BY started_at`, mark)
	if err != nil {
		t.Fatal(err)
	}
	type entry struct {
		view            string
		start, finished time.Time
	}
	var log []entry
	for rows.Next() {
		var e entry
		if err := rows.Scan(&e.view, &e.start, &e.finished); err != nil {
			t.Fatal(err)
		}
		log = append(log, e)
	}
	if len(log) != 3 || log[0].view != "public.chain_a" || log[1].view != "public.chain_b" || log[2].view != "public.chain_c" {
		t.Fatalf("refreshes after one base change: %+v, want chain_a, chain_b, chain_c once each", log)
	}
	for i := 1; i < len(log); i++ {
		if log[i].start.Before(log[i-1].finished) {
			t.Errorf("%s started at %v before %s finished at %v", log[i].view, log[i].start, log[i-1].view, log[i-1].finished)
		}
	}
	// The undeclared reader of chain_a was found in pg_depend.
	if n := p.CountLogs(func(l map[string]any) bool {
		return l["view"] == "public.chain_undeclared" && fmt.Sprint(l["msg"]) == "view reads managed views it does not declare in depends_on; treating them as dependencies"
	}); n != 1 {
		t.Errorf("inferred dependency logged %d times, want 1", n)
	}
	// vacuum_threshold 1: concurrent refreshes leave dead rows; they are
	// vacuumed after the refresh.
	if err := daemontest.Eventually(ctx, 200*time.Millisecond, func() error {
		fams, err := p.Metrics(ctx)
		if err != nil {
			return err
		}
		if v := fams.Sum("refresherd_vacuums_total", nil); v < 1 {
			return fmt.Errorf("no vacuum yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

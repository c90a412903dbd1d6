package refresh

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

// smuggling queries: each ends so that the suffix the daemon appends
// ("WITH [NO] DATA") still parses, so with the simple protocol every
// statement would run and commit. Config validation rejects them; these
// views are built directly, as if it had been bypassed.
var smuggling = []struct{ name, query string }{
	{"drop", `SELECT k, sum(v)::bigint AS total, count(*) AS n FROM public.src GROUP BY k;
		DROP TABLE public.victim;
		CREATE MATERIALIZED VIEW public.decoy AS SELECT 1 AS k`},
	{"delete after a string with a semicolon", `SELECT k, sum(v)::bigint AS total, ';' AS n FROM public.src GROUP BY k; DELETE FROM public.victim; CREATE MATERIALIZED VIEW public.decoy AS SELECT 1 AS k`},
}

func victimIntact(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	var rows int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM public.victim`).Scan(&rows); err != nil {
		t.Fatalf("the smuggled statement ran: %v", err)
	}
	if rows != 1 {
		t.Fatalf("the smuggled statement ran: public.victim has %d rows, want 1", rows)
	}
	var decoy bool
	if err := pool.QueryRow(context.Background(), `SELECT to_regclass('public.decoy') IS NOT NULL`).Scan(&decoy); err != nil || decoy {
		t.Fatalf("the smuggled statement ran: public.decoy exists (%v)", err)
	}
}

// TestEnsureViewRunsOneStatement: the CREATE that embeds the configured
// query is parsed as one statement; a second one behind ';' never runs.
func TestEnsureViewRunsOneStatement(t *testing.T) {
	for _, tt := range smuggling {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			pool := testPool(t)
			mustExec(t, pool, `CREATE TABLE public.victim (x int); INSERT INTO public.victim VALUES (1)`)
			v := testView(t, "public.sums", tt.query)
			if _, err := EnsureView(ctx, pool, v); err == nil {
				t.Error("EnsureView accepted a query with a second statement")
			} else {
				t.Logf("EnsureView: %v", err)
			}
			victimIntact(t, pool)
		})
	}
}

// TestSwapRunsOneStatement: the same for the side build of a definition
// change; the old view stays.
func TestSwapRunsOneStatement(t *testing.T) {
	for _, tt := range smuggling {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			pool := testPool(t)
			mustExec(t, pool, `CREATE TABLE public.victim (x int); INSERT INTO public.victim VALUES (1)`)
			v := testView(t, "public.sums", sumQuery)
			if _, err := EnsureView(ctx, pool, v); err != nil {
				t.Fatal(err)
			}
			r := &Refresher{Pool: pool, Identity: "test"}
			if _, err := r.Refresh(ctx, v, TriggerStartup, nil); err != nil {
				t.Fatal(err)
			}
			nv := *v
			nv.Query = tt.query
			if _, err := Swap(ctx, pool, &nv, "test", nil); err == nil {
				t.Error("Swap accepted a query with a second statement")
			} else {
				t.Logf("Swap: %v", err)
			}
			victimIntact(t, pool)
			if got := viewTotal(t, pool, v); got != 500500 {
				t.Fatalf("old view changed: total %d", got)
			}
		})
	}
}

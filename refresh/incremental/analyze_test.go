package incremental

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/internal/demodata"
	"github.com/refresherd/refresherd/internal/pgtest"
)

// analyzeTestDDL adds, beside the demo's Django tables, one relation of each
// kind that cannot be a source and functions of each volatility.
const analyzeTestDDL = `
CREATE VIEW public.charge_view AS SELECT * FROM public.app_charge;
CREATE MATERIALIZED VIEW public.charge_mv AS SELECT * FROM public.app_charge WITH NO DATA;
CREATE FOREIGN DATA WRAPPER analyze_test_fdw;
CREATE SERVER analyze_test_srv FOREIGN DATA WRAPPER analyze_test_fdw;
CREATE FOREIGN TABLE public.remote_charge (user_id bigint, amount numeric) SERVER analyze_test_srv;
CREATE TABLE public.charge_part (user_id bigint NOT NULL, month date NOT NULL, amount numeric)
    PARTITION BY RANGE (month);
CREATE TABLE public.charge_part_2026 PARTITION OF public.charge_part
    FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE public.charge_parent (user_id bigint NOT NULL, amount numeric);
CREATE TABLE public.charge_child () INHERITS (public.charge_parent);
CREATE TABLE public."Odd Table" ("User Id" bigint NOT NULL, "select" text, v numeric);
CREATE FUNCTION public.cents(numeric) RETURNS bigint IMMUTABLE LANGUAGE sql AS 'SELECT ($1 * 100)::bigint';
CREATE FUNCTION public.rate(bigint) RETURNS numeric STABLE LANGUAGE sql AS 'SELECT 1.0';
CREATE FUNCTION public.jitter(numeric, numeric) RETURNS numeric VOLATILE LANGUAGE sql AS 'SELECT $1 + $2 * random()';
CREATE OPERATOR public.+~ (LEFTARG = numeric, RIGHTARG = numeric, FUNCTION = public.jitter);
`

// analyzeDB returns a pool on a fresh database with the demo's schema and
// analyzeTestDDL.
func analyzeDB(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, pgtest.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := demodata.CreateSchema(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, analyzeTestDDL); err != nil {
		t.Fatal(err)
	}
	return pool
}

// analyzeIn runs Analyze in a transaction that it rolls back, as callers do.
func analyzeIn(t *testing.T, pool *pgxpool.Pool, v *config.View, declared []string) (Plan, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	return Analyze(ctx, tx, v, declared)
}

func analyzeView(query string, uniqueKey ...string) *config.View {
	return &config.View{
		Name:      config.QualifiedName{Schema: "public", Name: "summary"},
		Query:     query,
		UniqueKey: uniqueKey,
	}
}

// analyzeShippedView is the charge summary exactly as config.yaml ships it.
func analyzeShippedView(t *testing.T) *config.View {
	t.Helper()
	getenv := func(k string) string {
		if k == "DATABASE_URL" {
			return "postgres://refresherd@db/app"
		}
		return ""
	}
	cfg, err := config.Load("../../config.yaml", getenv, config.Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range cfg.Views {
		if cfg.Views[i].Name.String() == "public.app_chargesummary" {
			return &cfg.Views[i]
		}
	}
	t.Fatal("config.yaml has no view public.app_chargesummary")
	return nil
}

var analyzeShippedKeys = []Key{
	{Column: "user_id", Source: "user_id", Type: "bigint", Nullable: false},
	{Column: "job_id", Source: "job_id", Type: "bigint", Nullable: true},
	{Column: "month", Source: "month", Type: "date", Nullable: false},
}

// shippedReads are the columns the shipped summary reads (Plan.Reads).
var shippedReads = []string{"type", "amount", "month", "user_id", "job_id"}

func TestAnalyzeShippedSummary(t *testing.T) {
	pool := analyzeDB(t)
	v := analyzeShippedView(t)
	if !strings.Contains(v.Query, "FILTER") {
		t.Fatalf("the shipped query changed shape; update this test:\n%s", v.Query)
	}
	for _, declared := range [][]string{nil, {"user_id", "job_id", "month"}, {"month", "job_id", "user_id"}} {
		p, err := analyzeIn(t, pool, v, declared)
		if err != nil {
			t.Fatalf("declared %v: %v", declared, err)
		}
		want := Plan{
			View:   config.QualifiedName{Schema: "public", Name: "app_chargesummary"},
			Query:  v.Query,
			Source: config.QualifiedName{Schema: "public", Name: "app_charge"},
			Keys:   analyzeShippedKeys,
			Columns: []Column{
				{Name: "id", Type: "text"},
				{Name: "user_id", Type: "bigint"},
				{Name: "job_id", Type: "bigint"},
				{Name: "month", Type: "date"},
				{Name: "hardware", Type: "numeric(19,2)"},
				{Name: "software", Type: "numeric(19,2)"},
			},
			UniqueKey:       []string{"id"},
			UniqueFromGroup: true,
			Reads:           shippedReads,
			Hash:            p.Hash,
		}
		if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(p.Hash) {
			t.Errorf("Hash = %q, want 16 hex digits", p.Hash)
		}
		if diff := analyzeDiffPlans(p, want); diff != "" {
			t.Errorf("declared %v: %s", declared, diff)
		}
	}
}

func analyzeDiffPlans(got, want Plan) string {
	var d []string
	if got.View != want.View || got.Query != want.Query || got.Source != want.Source || got.Hash != want.Hash {
		d = append(d, fmt.Sprintf("got view %s, source %s, hash %s, query %q; want %s, %s, %s, %q",
			got.View, got.Source, got.Hash, got.Query, want.View, want.Source, want.Hash, want.Query))
	}
	if !slices.Equal(got.Keys, want.Keys) {
		d = append(d, fmt.Sprintf("Keys: got %+v, want %+v", got.Keys, want.Keys))
	}
	if !slices.Equal(got.Columns, want.Columns) {
		d = append(d, fmt.Sprintf("Columns: got %+v, want %+v", got.Columns, want.Columns))
	}
	if !slices.Equal(got.UniqueKey, want.UniqueKey) {
		d = append(d, fmt.Sprintf("UniqueKey: got %q, want %q", got.UniqueKey, want.UniqueKey))
	}
	if got.UniqueFromGroup != want.UniqueFromGroup {
		d = append(d, fmt.Sprintf("UniqueFromGroup: got %v, want %v", got.UniqueFromGroup, want.UniqueFromGroup))
	}
	if !slices.Equal(got.Reads, want.Reads) {
		d = append(d, fmt.Sprintf("Reads: got %q, want %q", got.Reads, want.Reads))
	}
	return strings.Join(d, "; ")
}

// TestAnalyzeDerived: what Analyze derives from the query tree for the
// round's statement (UniqueFromGroup) and the index advice (Reads).
func TestAnalyzeDerived(t *testing.T) {
	pool := analyzeDB(t)
	tests := []struct {
		query           string
		unique          []string
		uniqueFromGroup bool
		reads           []string
	}{
		{`SELECT user_id, month, count(*) AS n FROM public.app_charge GROUP BY user_id, month`,
			[]string{"user_id", "month"}, true, []string{"month", "user_id"}},
		{`SELECT user_id::text || '/' || to_char(month, 'YYYY-MM') AS id, user_id, month, sum(amount) AS s FROM public.app_charge WHERE type = 'hw' GROUP BY user_id, month`,
			[]string{"id"}, true, []string{"type", "amount", "month", "user_id"}},
		{`SELECT min(id) AS id, user_id, month, sum(amount) AS s FROM public.app_charge GROUP BY user_id, month`,
			[]string{"id"}, false, []string{"id", "amount", "month", "user_id"}},
		{`SELECT user_id::text || sum(amount) AS id, user_id, month FROM public.app_charge GROUP BY user_id, month`,
			[]string{"id"}, false, []string{"amount", "month", "user_id"}},
		{`SELECT user_id, month, count(*) AS n FROM public.app_charge GROUP BY user_id, month`,
			[]string{"user_id", "n"}, false, []string{"month", "user_id"}},
		{`SELECT user_id, month, count(c.*) AS n FROM public.app_charge c GROUP BY user_id, month`,
			[]string{"user_id", "month"}, true, nil}, // a whole row: no index holds it
	}
	for _, tt := range tests {
		p, err := analyzeIn(t, pool, analyzeView(tt.query, tt.unique...), nil)
		if err != nil {
			t.Fatalf("%s: %v", tt.query, err)
		}
		if p.UniqueFromGroup != tt.uniqueFromGroup || !slices.Equal(p.Reads, tt.reads) {
			t.Errorf("%s, unique key %v: UniqueFromGroup %v, Reads %q; want %v, %q", tt.query, tt.unique, p.UniqueFromGroup, p.Reads, tt.uniqueFromGroup, tt.reads)
		}
	}
}

// The hash names capture objects: it must not change between runs and must
// change with the definition.
func TestAnalyzeHash(t *testing.T) {
	pool := analyzeDB(t)
	v := analyzeShippedView(t)
	p1, err := analyzeIn(t, pool, v, nil)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := analyzeIn(t, pool, v, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p1.Hash != p2.Hash {
		t.Errorf("hash not stable: %s, %s", p1.Hash, p2.Hash)
	}
	for name, v2 := range map[string]*config.View{
		"query":      {Name: v.Name, Query: v.Query + " ", UniqueKey: v.UniqueKey},
		"unique key": {Name: v.Name, Query: v.Query, UniqueKey: []string{"user_id", "job_id", "month"}},
	} {
		p, err := analyzeIn(t, pool, v2, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if p.Hash == p1.Hash {
			t.Errorf("%s changed but the hash did not", name)
		}
	}
	// An altered source column needs new capture objects.
	for name, change := range map[string]func(*Plan){
		"key type":     func(p *Plan) { p.Keys[1].Type = "integer" },
		"key nullable": func(p *Plan) { p.Keys[1].Nullable = false },
		"key order":    func(p *Plan) { p.Keys[0], p.Keys[2] = p.Keys[2], p.Keys[0] },
	} {
		p := p1
		p.Keys = slices.Clone(p1.Keys)
		change(&p)
		if analyzeHash(p) == p1.Hash {
			t.Errorf("%s changed but the hash did not", name)
		}
	}
	// Pinned: a change in analyzeHash renames every installed capture object.
	if got := analyzeHash(Plan{Query: "q", Keys: []Key{{Column: "a", Source: "b", Type: "int"}}, UniqueKey: []string{"a"}}); got != "1bae868aa653af71" {
		t.Errorf("analyzeHash of a fixed plan = %s, changed", got)
	}
}

func TestAnalyzeQualification(t *testing.T) {
	pool := analyzeDB(t)
	const idExpr = `c.user_id::text || ':' || coalesce(c.job_id::text, '-') || ':' || to_char(c.month, 'YYYY-MM-DD') AS id`
	tests := []struct {
		name     string
		query    string
		unique   []string // default [id]
		declared []string
		keys     []Key  // when it qualifies
		reason   string // when it does not: a substring of the reason
	}{
		// Qualifying.
		{
			name: "shipped shape with CASE instead of FILTER",
			query: `SELECT ` + idExpr + `, c.user_id, c.job_id, c.month,
			        sum(CASE WHEN c.type = 'hw' THEN c.amount ELSE 0 END)::numeric(19,2) AS hardware,
			        sum(CASE WHEN c.type = 'sw' THEN c.amount ELSE 0 END)::numeric(19,2) AS software
			        FROM public.app_charge c GROUP BY c.user_id, c.job_id, c.month`,
			declared: []string{"user_id", "job_id", "month"},
			keys:     analyzeShippedKeys,
		},
		{
			name: "WHERE, HAVING, renamed key, several aggregates",
			query: `SELECT user_id AS uid, month, count(*) AS n, avg(amount) AS mean, min(amount) AS lo,
			        max(amount) AS hi, count(DISTINCT job_id) AS jobs, string_agg(type, ',' ORDER BY id) AS types
			        FROM public.app_charge WHERE type = 'hw' AND amount > 0
			        GROUP BY user_id, month HAVING sum(amount) > 10`,
			unique: []string{"uid", "month"},
			keys: []Key{
				{Column: "uid", Source: "user_id", Type: "bigint"},
				{Column: "month", Source: "month", Type: "date"},
			},
		},
		{
			name:   "GROUP BY positions, keys in GROUP BY order",
			query:  `SELECT month, user_id, sum(amount) AS total FROM public.app_charge GROUP BY 2, 1 ORDER BY 1`,
			unique: []string{"user_id", "month"},
			keys: []Key{
				{Column: "user_id", Source: "user_id", Type: "bigint"},
				{Column: "month", Source: "month", Type: "date"},
			},
		},
		{
			name:   "GROUP BY the primary key keeps it as the key",
			query:  `SELECT id, user_id, amount * 2 AS doubled FROM public.app_charge GROUP BY id`,
			unique: []string{"id"},
			keys:   []Key{{Column: "id", Source: "id", Type: "bigint"}},
		},
		{
			// The planner drops user_id from its group key (the primary key
			// determines it); the parsed GROUP BY keeps both.
			name:   "GROUP BY the primary key and a dependent column",
			query:  `SELECT id, user_id, sum(amount) AS total FROM public.app_charge GROUP BY id, user_id`,
			unique: []string{"id"},
			keys: []Key{
				{Column: "id", Source: "id", Type: "bigint"},
				{Column: "user_id", Source: "user_id", Type: "bigint"},
			},
		},
		{
			name:   "GROUP BY without aggregates",
			query:  `SELECT user_id, job_id FROM public.app_charge GROUP BY user_id, job_id`,
			unique: []string{"user_id", "job_id"},
			keys: []Key{
				{Column: "user_id", Source: "user_id", Type: "bigint"},
				{Column: "job_id", Source: "job_id", Type: "bigint", Nullable: true},
			},
		},
		{
			name: "immutable user function, casts through text, date comparison",
			query: `SELECT c.month::text || '/' || c.user_id AS id, c.user_id, c.month, public.cents(sum(c.amount)) AS cents,
			        count(*) FILTER (WHERE c.month >= DATE '2026-01-01') AS recent
			        FROM public.app_charge c GROUP BY c.user_id, c.month`,
			keys: []Key{
				{Column: "user_id", Source: "user_id", Type: "bigint"},
				{Column: "month", Source: "month", Type: "date"},
			},
		},
		{
			name:   "trailing semicolon and comment",
			query:  "SELECT user_id AS id, count(*) AS n FROM public.app_charge GROUP BY user_id; -- per user",
			unique: []string{"id"},
			keys:   []Key{{Column: "id", Source: "user_id", Type: "bigint"}},
		},
		{
			name:   "quoted identifiers",
			query:  `SELECT "User Id", "select" AS "Sel", sum(v) AS "Total" FROM public."Odd Table" GROUP BY "User Id", "select"`,
			unique: []string{"User Id", "Sel"},
			keys: []Key{
				{Column: "User Id", Source: "User Id", Type: "bigint"},
				{Column: "Sel", Source: "select", Type: "text", Nullable: true},
			},
		},
		{
			// PostgreSQL writes these names unescaped into the query tree,
			// where they look like field labels.
			name:   "column names that look like query-tree fields",
			query:  `SELECT user_id AS ":ressortgroupref", month AS ":resno", count(*) AS ":resjunk" FROM public.app_charge GROUP BY 1, 2`,
			unique: []string{":ressortgroupref", ":resno"},
			keys: []Key{
				{Column: ":ressortgroupref", Source: "user_id", Type: "bigint"},
				{Column: ":resno", Source: "month", Type: "date"},
			},
		},
		{
			name:   "ONLY an inheritance parent",
			query:  `SELECT user_id, sum(amount) AS total FROM ONLY public.charge_parent GROUP BY user_id`,
			unique: []string{"user_id"},
			keys:   []Key{{Column: "user_id", Source: "user_id", Type: "bigint"}},
		},

		// Not qualifying.
		{
			name:   "join",
			query:  `SELECT c.user_id, u.name, sum(c.amount) AS total FROM public.app_charge c JOIN public.app_user u ON u.id = c.user_id GROUP BY c.user_id, u.name`,
			reason: "it reads 2 relations (public.app_charge, public.app_user), but only an aggregate over a single source table qualifies",
		},
		{
			name:   "subquery over another table",
			query:  `SELECT user_id AS id, sum(amount) FROM public.app_charge WHERE job_id IN (SELECT id FROM public.app_job WHERE name LIKE 'a%') GROUP BY user_id`,
			reason: "it reads 2 relations (public.app_charge, public.app_job)",
		},
		{
			name:   "subquery over the same table",
			query:  `SELECT user_id AS id, count(*) FROM public.app_charge WHERE amount > (SELECT avg(amount) FROM public.app_charge) GROUP BY user_id`,
			reason: "it has a subquery (in its select list, WHERE or HAVING)",
		},
		{
			name:   "self join",
			query:  `SELECT a.user_id AS id, count(*) FROM public.app_charge a JOIN public.app_charge b ON a.job_id = b.job_id GROUP BY a.user_id`,
			reason: "it joins public.app_charge with itself",
		},
		{
			name:   "subquery in FROM",
			query:  `SELECT s.user_id AS id, count(*) FROM (SELECT * FROM public.app_charge) s GROUP BY s.user_id`,
			reason: "it reads public.app_charge through a subquery in FROM",
		},
		{
			name:   "function in FROM",
			query:  `SELECT c.user_id AS id, count(*) FROM public.app_charge c, generate_series(1, 2) g GROUP BY c.user_id`,
			reason: "its FROM clause holds more than the source table public.app_charge",
		},
		{
			name:   "view as source",
			query:  `SELECT user_id AS id, sum(amount) FROM public.charge_view GROUP BY user_id`,
			reason: "its source public.charge_view is a view; the source must be a plain table",
		},
		{
			name:   "materialized view as source",
			query:  `SELECT user_id AS id, sum(amount) FROM public.charge_mv GROUP BY user_id`,
			reason: "its source public.charge_mv is a materialized view",
		},
		{
			name:   "foreign table as source",
			query:  `SELECT user_id AS id, sum(amount) FROM public.remote_charge GROUP BY user_id`,
			reason: "its source public.remote_charge is a foreign table",
		},
		{
			name:   "partitioned table as source",
			query:  `SELECT user_id AS id, sum(amount) FROM public.charge_part GROUP BY user_id`,
			reason: "its source public.charge_part is a partitioned table: writes made directly to a partition would not be captured",
		},
		{
			name:   "inheritance children",
			query:  `SELECT user_id AS id, sum(amount) FROM public.charge_parent GROUP BY user_id`,
			reason: "its source public.charge_parent has inheritance children, whose writes would not be captured; use FROM ONLY public.charge_parent",
		},
		{
			name:   "partition as source",
			query:  `SELECT user_id AS id, sum(amount) FROM public.charge_part_2026 GROUP BY user_id`,
			reason: "its source public.charge_part_2026 is a partition of public.charge_part: writes made through public.charge_part would not be captured",
		},
		{
			name:   "inheritance child as source",
			query:  `SELECT user_id AS id, sum(amount) FROM public.charge_child GROUP BY user_id`,
			reason: "its source public.charge_child inherits from public.charge_parent: writes made through public.charge_parent would not be captured",
		},
		{
			name:   "aggregate without GROUP BY",
			query:  `SELECT count(*) AS id, sum(amount) AS total FROM public.app_charge`,
			reason: "it has no GROUP BY: an aggregate over the whole table is one group that every write changes; use strategy full",
		},
		{
			name:   "GROUP BY ()",
			query:  `SELECT count(*) AS id FROM public.app_charge GROUP BY ()`,
			reason: "it has no GROUP BY: an aggregate over the whole table",
		},
		{
			name:   "no aggregate",
			query:  `SELECT id, amount FROM public.app_charge WHERE amount > 0`,
			reason: "it has no GROUP BY; only an aggregate grouped by plain columns of its source table qualifies",
		},
		{
			name:   "expression group key",
			query:  `SELECT date_trunc('month', month) AS id, sum(amount) AS total FROM public.app_charge GROUP BY 1`,
			reason: `GROUP BY item 1 (output column "id") is an expression, not a plain column of public.app_charge; group by a plain column of the table`,
		},
		{
			name:   "expression group key not in the output",
			query:  `SELECT user_id AS id, sum(amount) AS total FROM public.app_charge GROUP BY user_id, amount > 100`,
			reason: `GROUP BY item 2 is an expression, not a plain column of public.app_charge`,
		},
		{
			name:   "group key missing from the output",
			query:  `SELECT month AS id, sum(amount) AS total FROM public.app_charge GROUP BY user_id, month`,
			reason: "the group key column user_id of public.app_charge (GROUP BY item 1) is not in the output; select it unchanged (it may be renamed, e.g. user_id AS other_name)",
		},
		{
			name:   "group key transformed in the output",
			query:  `SELECT c.user_id AS id, coalesce(c.job_id, 0) AS job_id, sum(c.amount) FROM public.app_charge c GROUP BY c.user_id, c.job_id`,
			reason: `the group key column job_id of public.app_charge (GROUP BY item 2) appears in the output only transformed, in column "job_id"; select it unchanged as a column of its own`,
		},
		{
			name:   "system column key",
			query:  `SELECT tableoid AS id, count(*) FROM public.app_charge GROUP BY tableoid`,
			reason: "GROUP BY item 1 is a system column or a whole row of public.app_charge",
		},
		{
			name:   "DISTINCT",
			query:  `SELECT DISTINCT user_id AS id, count(*) FROM public.app_charge GROUP BY user_id`,
			reason: "it uses SELECT DISTINCT; drop it (GROUP BY already returns each group once)",
		},
		{
			name:   "DISTINCT ON",
			query:  `SELECT DISTINCT ON (month) user_id AS id, month, sum(amount) FROM public.app_charge GROUP BY user_id, month ORDER BY month, 3 DESC`,
			reason: "it uses DISTINCT ON",
		},
		{
			name:   "window function",
			query:  `SELECT user_id AS id, sum(amount) AS total, rank() OVER (ORDER BY sum(amount)) AS r FROM public.app_charge GROUP BY user_id`,
			reason: "it uses a window function (OVER ...), whose value for one group depends on other groups",
		},
		{
			name:   "UNION",
			query:  `SELECT user_id AS id, count(*) FROM public.app_charge GROUP BY user_id UNION ALL SELECT job_id, count(*) FROM public.app_charge GROUP BY job_id`,
			reason: "it combines queries with UNION, INTERSECT or EXCEPT",
		},
		{
			name:   "LIMIT",
			query:  `SELECT user_id AS id, sum(amount) AS total FROM public.app_charge GROUP BY user_id ORDER BY total DESC LIMIT 10`,
			reason: "it has LIMIT, OFFSET or FETCH, so which groups it returns depends on the other groups",
		},
		{
			name:   "OFFSET",
			query:  `SELECT user_id AS id, sum(amount) AS total FROM public.app_charge GROUP BY user_id OFFSET 1`,
			reason: "it has LIMIT, OFFSET or FETCH",
		},
		{
			name:   "ROLLUP",
			query:  `SELECT user_id AS id, month, sum(amount) FROM public.app_charge GROUP BY ROLLUP (user_id, month)`,
			reason: "it uses GROUPING SETS, ROLLUP or CUBE; group by plain columns only",
		},
		{
			name:   "GROUPING SETS",
			query:  `SELECT user_id AS id, month, sum(amount) FROM public.app_charge GROUP BY GROUPING SETS ((user_id), (month))`,
			reason: "it uses GROUPING SETS, ROLLUP or CUBE",
		},
		{
			name:   "WITH",
			query:  `WITH c AS (SELECT * FROM public.app_charge) SELECT user_id AS id, count(*) FROM c GROUP BY user_id`,
			reason: "it has a WITH clause; write it as a single SELECT over the source table",
		},
		{
			name:   "set-returning function in the select list",
			query:  `SELECT user_id AS id, unnest(array_agg(amount)) AS a FROM public.app_charge GROUP BY user_id`,
			reason: "it calls a set-returning function (such as unnest or generate_series) in its select list",
		},
		{
			name:   "TABLESAMPLE",
			query:  `SELECT user_id AS id, count(*) FROM public.app_charge TABLESAMPLE BERNOULLI (10) GROUP BY user_id`,
			reason: "it uses TABLESAMPLE, which picks rows at random",
		},
		{
			name:   "no table",
			query:  `SELECT 1 AS id`,
			reason: "it reads no table; only an aggregate over one source table qualifies",
		},
		{
			name:   "now() in WHERE",
			query:  `SELECT user_id AS id, sum(amount) FROM public.app_charge WHERE month > now() - interval '1 year' GROUP BY user_id`,
			reason: "it calls now(), a stable function: its result can change without a write to public.app_charge (only immutable functions qualify, and built-ins that depend on session settings alone, such as to_char)",
		},
		{
			name:   "random() in an aggregate",
			query:  `SELECT user_id AS id, sum(amount * random()) FROM public.app_charge GROUP BY user_id`,
			reason: "it calls random(), a volatile function: its result changes without any write to public.app_charge",
		},
		{
			name:   "CURRENT_DATE",
			query:  `SELECT user_id AS id, count(*) FILTER (WHERE month < CURRENT_DATE) FROM public.app_charge GROUP BY user_id`,
			reason: "it uses CURRENT_DATE, whose value can change without any write to public.app_charge",
		},
		{
			name:   "current_user",
			query:  `SELECT user_id AS id, current_user AS who, count(*) FROM public.app_charge GROUP BY user_id`,
			reason: "it uses CURRENT_USER, whose value can change",
		},
		{
			name:   "age of one argument reads the clock",
			query:  `SELECT user_id AS id, max(age(month::timestamp)) AS oldest FROM public.app_charge GROUP BY user_id`,
			reason: "it calls age(timestamp without time zone), a stable function",
		},
		{
			name:   "stable user function",
			query:  `SELECT user_id AS id, sum(amount) * public.rate(user_id) AS total FROM public.app_charge GROUP BY user_id`,
			reason: "it calls rate(bigint), a stable function",
		},
		{
			name:   "operator over a volatile function",
			query:  `SELECT user_id AS id, sum(amount +~ 1) FROM public.app_charge GROUP BY user_id`,
			reason: "it uses the operator +~(numeric,numeric), whose function jitter(numeric,numeric) is volatile: its result changes without any write to public.app_charge",
		},
		{
			name:     "declared key differs",
			query:    demodata.SummaryQuery,
			declared: []string{"user_id", "month"},
			reason:   "the declared group_key (user_id, month) does not match the query's GROUP BY, whose output columns are (user_id, job_id, month)",
		},
		{
			name:   "unique key not in the output",
			query:  demodata.SummaryQuery,
			unique: []string{"pk"},
			reason: `unique_key column "pk" is not an output column of the query (its columns: id, user_id, job_id, month, hardware, software)`,
		},
	}
	qualifying, not := 0, 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			unique := tt.unique
			if unique == nil {
				unique = []string{"id"}
			}
			p, err := analyzeIn(t, pool, analyzeView(tt.query, unique...), tt.declared)
			var nq *NotQualified
			if tt.reason != "" {
				if !errors.As(err, &nq) {
					t.Fatalf("got plan %+v, error %v; want NotQualified %q", p, err, tt.reason)
				}
				if !strings.Contains(nq.Reason, tt.reason) {
					t.Fatalf("reason:\n  %s\nwant it to contain:\n  %s", nq.Reason, tt.reason)
				}
				t.Logf("not incremental: %s", nq.Reason)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(p.Keys, tt.keys) {
				t.Errorf("Keys = %+v\nwant %+v", p.Keys, tt.keys)
			}
			if p.Source.Schema != "public" || p.Source.Name == "" || p.Query != tt.query || !slices.Equal(p.UniqueKey, unique) {
				t.Errorf("plan = %+v", p)
			}
		})
		if tt.reason != "" {
			not++
		} else {
			qualifying++
		}
	}
	if qualifying < 5 || not < 15 {
		t.Errorf("table has %d qualifying and %d non-qualifying queries", qualifying, not)
	}
}

// Queries PostgreSQL rejects are errors, not reasons; the caller's
// transaction stays usable and nothing is left behind.
func TestAnalyzeErrors(t *testing.T) {
	pool := analyzeDB(t)
	tests := []struct {
		name  string
		query string
		want  string // substring of the error
		code  string // SQLSTATE
	}{
		{"syntax error", `SELEC user_id FROM public.app_charge GROUP BY user_id`, `syntax error at or near "SELEC"`, "42601"},
		{"unknown table", `SELECT x, count(*) FROM public.no_such_table GROUP BY x`, `relation "public.no_such_table" does not exist`, "42P01"},
		{"second statement", `SELECT user_id, count(*) FROM public.app_charge GROUP BY user_id; DROP TABLE public.app_job`, "must be a single SELECT", "42601"},
		{"not a SELECT", `DELETE FROM public.app_charge`, `syntax error`, "42601"},
		{"empty", ``, `syntax error`, "42601"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			tx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx.Rollback(ctx) }()
			_, err = Analyze(ctx, tx, analyzeView(tt.query, "id"), nil)
			var nq *NotQualified
			var pgErr *pgconn.PgError
			switch {
			case err == nil:
				t.Fatal("no error")
			case errors.As(err, &nq):
				t.Fatalf("got NotQualified %q, want an error", nq.Reason)
			case !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "incremental: analyze public.summary"):
				t.Fatalf("error %q, want it to name the operation and contain %q", err, tt.want)
			case !errors.As(err, &pgErr) || pgErr.Code != tt.code:
				t.Fatalf("error %v does not wrap a PostgreSQL error %s", err, tt.code)
			}
			assertAnalyzeTxClean(ctx, t, tx)
		})
	}
	t.Run("after success", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(ctx) }()
		if _, err := Analyze(ctx, tx, analyzeView(demodata.SummaryQuery, "id"), nil); err != nil {
			t.Fatal(err)
		}
		assertAnalyzeTxClean(ctx, t, tx)
	})
	t.Run("cancelled context", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(context.Background()) }()
		cctx, ccancel := context.WithCancel(ctx)
		ccancel()
		_, err = Analyze(cctx, tx, analyzeView(demodata.SummaryQuery, "id"), nil)
		var nq *NotQualified
		if !errors.Is(err, context.Canceled) || errors.As(err, &nq) {
			t.Fatalf("error = %v, want one wrapping context.Canceled", err)
		}
	})
	t.Run("nil view", func(t *testing.T) {
		if _, err := analyzeIn(t, pool, nil, nil); err == nil {
			t.Fatal("no error")
		}
	})
}

// assertAnalyzeTxClean checks that tx still runs statements, holds no temporary
// relation and that the demo tables are intact.
func assertAnalyzeTxClean(ctx context.Context, t *testing.T, tx pgx.Tx) {
	t.Helper()
	var temps, tables int
	err := tx.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()),
		       (SELECT count(*) FROM pg_class WHERE relname IN ('app_user', 'app_job', 'app_charge') AND relnamespace = 'public'::regnamespace)`).
		Scan(&temps, &tables)
	if err != nil {
		t.Fatalf("transaction unusable after Analyze: %v", err)
	}
	if temps != 0 || tables != 3 {
		t.Errorf("after Analyze: %d temporary relations, %d of 3 demo tables", temps, tables)
	}
}

// Every function allowed as "stable only through settings" must exist as a
// built-in STABLE function, so a typo cannot hide in the list.
func TestSettingsOnlyStableExist(t *testing.T) {
	pool := analyzeDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := pool.Query(ctx, `
		SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
		FROM pg_proc p WHERE p.provolatile = 's' AND p.pronamespace = 'pg_catalog'::regnamespace`)
	if err != nil {
		t.Fatal(err)
	}
	stable, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for f := range settingsOnlyStable {
		if !slices.Contains(stable, f) {
			t.Errorf("%s is not a built-in stable function", f)
		}
	}
	if len(settingsOnlyStable) < 40 {
		t.Errorf("only %d entries", len(settingsOnlyStable))
	}
}

func TestCheckIndex(t *testing.T) {
	tests := []struct {
		name  string
		ddl   string // run before the check, on top of Django's indexes
		keys  []Key  // default: the shipped keys
		table config.QualifiedName
		reads []string // Plan.Reads; nil: unknown
		want  string
		// selective: the advice is for a covering index where a
		// selective one exists.
		selective bool
	}{
		{
			name: "Django's indexes only",
			want: "CREATE INDEX CONCURRENTLY ON public.app_charge (user_id, month)",
		},
		{
			name: "the advised index",
			ddl:  `CREATE INDEX ON public.app_charge (user_id, month)`,
		},
		{
			name: "key columns in another order, more columns after",
			ddl:  `CREATE INDEX ON public.app_charge (month, user_id, job_id, amount)`,
		},
		{
			name: "nullable column among the leading ones",
			ddl:  `CREATE INDEX ON public.app_charge (user_id, job_id, month)`,
			want: "CREATE INDEX CONCURRENTLY ON public.app_charge (user_id, month)",
		},
		{
			name: "partial index",
			ddl:  `CREATE INDEX ON public.app_charge (user_id, month) WHERE amount > 0`,
			want: "CREATE INDEX CONCURRENTLY ON public.app_charge (user_id, month)",
		},
		{
			name: "expression index",
			ddl:  `CREATE INDEX ON public.app_charge (user_id, (month + 1))`,
			want: "CREATE INDEX CONCURRENTLY ON public.app_charge (user_id, month)",
		},
		{
			name: "same column twice",
			ddl:  `CREATE INDEX ON public.app_charge (user_id, user_id)`,
			want: "CREATE INDEX CONCURRENTLY ON public.app_charge (user_id, month)",
		},
		{
			name: "one key column and its Django index",
			keys: []Key{{Column: "user_id", Source: "user_id"}, {Column: "job_id", Source: "job_id", Nullable: true}},
		},
		{
			name: "a unique index on some key columns",
			keys: []Key{{Column: "id", Source: "id"}, {Column: "user_id", Source: "user_id"}},
		},
		{
			name: "a unique index on a column that is not a key",
			keys: []Key{{Column: "user_id", Source: "user_id"}, {Column: "type", Source: "type"}},
			want: "CREATE INDEX CONCURRENTLY ON public.app_charge (user_id, type)",
		},
		{
			name: "a unique index with an expression",
			ddl:  `CREATE UNIQUE INDEX ON public.app_charge (user_id, (month + id::int))`,
			want: "CREATE INDEX CONCURRENTLY ON public.app_charge (user_id, month)",
		},
		{
			name: "only nullable key columns",
			keys: []Key{{Column: "job_id", Source: "job_id", Nullable: true}, {Column: "type", Source: "type", Nullable: true}},
			want: "CREATE INDEX CONCURRENTLY ON public.app_charge (job_id, type)",
		},
		{
			name:  "quoted names",
			ddl:   `CREATE TABLE public."Charge Log" ("Month" date NOT NULL, "select" int NOT NULL, user_id int NOT NULL)`,
			table: config.QualifiedName{Schema: "public", Name: "Charge Log"},
			keys:  []Key{{Column: "m", Source: "Month"}, {Column: "s", Source: "select"}, {Column: "user_id", Source: "user_id"}},
			want:  `CREATE INDEX CONCURRENTLY ON public."Charge Log" ("Month", "select", user_id)`,
		},
		{
			name:  "hash index on a one-column key",
			ddl:   `CREATE TABLE public.h (k int NOT NULL, v int); CREATE INDEX ON public.h USING hash (k)`,
			table: config.QualifiedName{Schema: "public", Name: "h"},
			keys:  []Key{{Column: "k", Source: "k"}},
		},
		{
			name:  "covering: Django's indexes only",
			reads: shippedReads,
			want:  "CREATE INDEX CONCURRENTLY ON public.app_charge (user_id, month, job_id) INCLUDE (type, amount)",
		},
		{
			name:      "covering: a selective index that does not cover",
			ddl:       `CREATE INDEX ON public.app_charge (user_id, month)`,
			reads:     shippedReads,
			want:      "CREATE INDEX CONCURRENTLY ON public.app_charge (user_id, month, job_id) INCLUDE (type, amount)",
			selective: true,
		},
		{
			name:      "covering: one column read missing",
			ddl:       `CREATE INDEX ON public.app_charge (user_id, month) INCLUDE (type, amount)`,
			reads:     shippedReads,
			want:      "CREATE INDEX CONCURRENTLY ON public.app_charge (user_id, month, job_id) INCLUDE (type, amount)",
			selective: true,
		},
		{
			name:  "covering: the advised index",
			ddl:   `CREATE INDEX ON public.app_charge (user_id, month, job_id) INCLUDE (type, amount)`,
			reads: shippedReads,
		},
		{
			name:  "covering: other order, read columns as keys",
			ddl:   `CREATE INDEX ON public.app_charge (month, user_id, amount) INCLUDE (job_id, type)`,
			reads: shippedReads,
		},
		{
			name:  "covering: not selective",
			ddl:   `CREATE INDEX ON public.app_charge (job_id, user_id, month) INCLUDE (type, amount)`,
			reads: shippedReads,
			want:  "CREATE INDEX CONCURRENTLY ON public.app_charge (user_id, month, job_id) INCLUDE (type, amount)",
		},
		{
			name:  "covering: partial",
			ddl:   `CREATE INDEX ON public.app_charge (user_id, month, job_id) INCLUDE (type, amount) WHERE amount > 0`,
			reads: shippedReads,
			want:  "CREATE INDEX CONCURRENTLY ON public.app_charge (user_id, month, job_id) INCLUDE (type, amount)",
		},
		{
			name:      "covering: a hash index cannot be read alone",
			ddl:       `CREATE TABLE public.h (k int NOT NULL, v int); CREATE INDEX ON public.h USING hash (k)`,
			table:     config.QualifiedName{Schema: "public", Name: "h"},
			keys:      []Key{{Column: "k", Source: "k"}},
			reads:     []string{"k", "v"},
			want:      "CREATE INDEX CONCURRENTLY ON public.h (k) INCLUDE (v)",
			selective: true,
		},
		{
			name:  "covering: only key columns read",
			keys:  []Key{{Column: "user_id", Source: "user_id"}, {Column: "month", Source: "month"}},
			reads: []string{"month", "user_id"},
			want:  "CREATE INDEX CONCURRENTLY ON public.app_charge (user_id, month)",
		},
		{
			name:  "covering: only nullable key columns",
			keys:  []Key{{Column: "job_id", Source: "job_id", Nullable: true}, {Column: "type", Source: "type", Nullable: true}},
			reads: []string{"type", "amount", "job_id"},
			want:  "CREATE INDEX CONCURRENTLY ON public.app_charge (job_id, type) INCLUDE (amount)",
		},
	}
	pool := analyzeDB(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			tx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx.Rollback(ctx) }()
			if tt.ddl != "" {
				if _, err := tx.Exec(ctx, tt.ddl); err != nil {
					t.Fatal(err)
				}
			}
			p := Plan{Source: config.QualifiedName{Schema: "public", Name: "app_charge"}, Keys: analyzeShippedKeys}
			if tt.keys != nil {
				p.Keys = tt.keys
			}
			if tt.table.Name != "" {
				p.Source = tt.table
			}
			p.Reads = tt.reads
			got, err := CheckIndex(ctx, tx, p)
			if err != nil {
				t.Fatal(err)
			}
			if got != (IndexAdvice{SQL: tt.want, Selective: tt.selective}) {
				t.Errorf("advice = %+v, want %q (selective %v)", got, tt.want, tt.selective)
			}
		})
	}
	t.Run("missing source", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := CheckIndex(ctx, pool, Plan{Source: config.QualifiedName{Schema: "public", Name: "nope"}, Keys: analyzeShippedKeys})
		if err == nil || !strings.Contains(err.Error(), "public.nope does not exist") {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("advice works", func(t *testing.T) {
		// The statement as advised runs, and afterwards there is no advice;
		// then the covering one, the same.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		p := Plan{Source: config.QualifiedName{Schema: "public", Name: "app_charge"}, Keys: analyzeShippedKeys}
		for _, reads := range [][]string{nil, shippedReads} {
			p.Reads = reads
			advice, err := CheckIndex(ctx, pool, p)
			if err != nil || advice.SQL == "" {
				t.Fatalf("reads %q: advice %+v, %v", reads, advice, err)
			}
			if _, err := pool.Exec(ctx, advice.SQL); err != nil {
				t.Fatal(err)
			}
			if advice, err := CheckIndex(ctx, pool, p); err != nil || advice.SQL != "" {
				t.Fatalf("reads %q: after creating it: advice %+v, %v", reads, advice, err)
			}
		}
	})
}

func TestParseQueryTree(t *testing.T) {
	tests := []struct {
		name string
		in   string
		ok   bool
		// checks on the first node of the top list
		check func(t *testing.T, n *qtNode)
	}{
		{
			name: "fields, lists, NULL, datum",
			in:   `({QUERY :a 1 :b <> :c ({X :v 2} {X :v 3}) :d (o 10 20) :e (b) :k 4 [ 1 0 0 0 ] :f true})`,
			ok:   true,
			check: func(t *testing.T, n *qtNode) {
				if n.typ != "QUERY" || n.int("a") != 1 || n.get("b") != nil || len(n.list("c")) != 2 ||
					qtNodeOf(n.list("c")[1]).int("v") != 3 || !slices.Equal(n.uint32s("d"), []uint32{10, 20}) ||
					n.int("k") != 4 || !n.bool("f") || n.int("missing") != -1 {
					t.Errorf("node = %+v", n)
				}
			},
		},
		{
			name: "escaped characters stay in one token",
			in:   `({ALIAS :aliasname a\ b\(c\) :colnames ("x\ y" "z") :n 5})`,
			ok:   true,
			check: func(t *testing.T, n *qtNode) {
				if n.scalar("aliasname") != `a\ b\(c\)` || len(n.list("colnames")) != 2 || n.int("n") != 5 {
					t.Errorf("node = %+v", n)
				}
			},
		},
		{name: "unterminated node", in: `({QUERY :a 1`},
		{name: "unterminated list", in: `({QUERY :a (1 2`},
		{name: "unterminated datum", in: `({CONST :v 4 [ 1 2`},
		{name: "trailing garbage", in: `({QUERY :a 1}) x`},
		{name: "value without a field", in: `({QUERY 1})`},
		{name: "empty", in: ``},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := parseQueryTree(tt.in)
			if !tt.ok {
				if err == nil {
					t.Fatalf("parsed %+v, want an error", v)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l, _ := v.([]qtValue)
			if len(l) != 1 {
				t.Fatalf("top = %+v", v)
			}
			tt.check(t, qtNodeOf(l[0]))
		})
	}
}

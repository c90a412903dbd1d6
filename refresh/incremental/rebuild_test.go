package incremental

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/refresherd/refresherd/refresh/relation"
)

// fullStrategyView makes the summary as the full strategy does: a
// materialized view with its unique index.
func fullStrategyView(t *testing.T, pool *pgxpool.Pool, p Plan) {
	t.Helper()
	mustExec(t, pool, `CREATE MATERIALIZED VIEW `+p.View.Sanitized()+` AS `+p.Query)
	mustExec(t, pool, `CREATE UNIQUE INDEX `+ident(relation.CutName(p.View.Name, "_refresherd_key"))+` ON `+p.View.Sanitized()+` (id)`)
}

func appRole(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	role := ident("rd_reader_" + hex.EncodeToString(b))
	mustExec(t, pool, `CREATE ROLE `+role)
	t.Cleanup(func() {
		mustExec(t, pool, `DROP OWNED BY `+role)
		mustExec(t, pool, `DROP ROLE `+role)
	})
	return role
}

// TestRebuildConvertsMaterializedView: switching from the full strategy
// replaces the materialized view with a table of the same name, rows,
// grants and unique index name, with nothing left beside it.
func TestRebuildConvertsMaterializedView(t *testing.T) {
	pool := testPool(t, true)
	p := chargePlan()
	seed(t, pool, 300, 4, 2)
	install(t, pool, p)
	fullStrategyView(t, pool, p)
	role := appRole(t, pool)
	mustExec(t, pool, `GRANT SELECT ON public.app_chargesummary TO `+role)
	if got := needsRebuild(t, pool, p); got != ReasonMatview {
		t.Fatalf("needs rebuild %q, want %q", got, ReasonMatview)
	}
	mustExec(t, pool, `UPDATE public.app_charge SET amount = amount + 1 WHERE user_id = 1`) // logged, and in the build

	res := rebuild(t, pool, p)
	if res.Replaced != "materialized view" || res.Rows == 0 || res.Drained == 0 {
		t.Errorf("conversion: %+v", res)
	}
	if n := count(t, pool, `SELECT count(*) FROM pg_class WHERE oid = 'public.app_chargesummary'::regclass AND relkind = 'r'`); n != 1 {
		t.Fatal("the summary is not a table")
	}
	// Room for a round's updates to stay on their page (HOT).
	if n := count(t, pool, `SELECT count(*) FROM pg_class WHERE oid = 'public.app_chargesummary'::regclass AND reloptions = '{fillfactor=90}'`); n != 1 {
		t.Error("the summary's fillfactor is not 90")
	}
	if n := count(t, pool, `SELECT count(*) FROM pg_class WHERE relname LIKE '%rfd%'`); n != 0 {
		t.Error("side relations left")
	}
	if n := count(t, pool, `SELECT count(*) FROM pg_class WHERE has_table_privilege($1, oid, 'SELECT') AND oid = 'public.app_chargesummary'::regclass`,
		strings.Trim(role, `"`)); n != 1 {
		t.Error("grant not copied")
	}
	var indexes string
	if err := pool.QueryRow(context.Background(), `SELECT string_agg(indexname || ':' || (indexdef LIKE '%UNIQUE%'), ',' ORDER BY indexname)
		FROM pg_indexes WHERE tablename = 'app_chargesummary'`).Scan(&indexes); err != nil {
		t.Fatal(err)
	}
	if want := "app_chargesummary_refresherd_group:false,app_chargesummary_refresherd_key:true"; indexes != want {
		t.Errorf("indexes %s, want %s", indexes, want)
	}
	assertEqual(t, pool, p)
	if r := round(t, pool, p); r.Touched != 0 {
		t.Errorf("round after the rebuild found %d keys: the build had them", r.Touched)
	}
	mustExec(t, pool, `INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 1, '2027-01-01', 1, NULL)`)
	round(t, pool, p)
	assertEqual(t, pool, p)
}

// TestRebuildReplacesNothingElse: a plain view of the summary's name is the
// user's, and a view reading the summary would have to be dropped: both
// are errors that leave everything as it was.
func TestRebuildReplacesNothingElse(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t, true)
	p := chargePlan()
	seed(t, pool, 100, 3, 2)
	install(t, pool, p)
	mustExec(t, pool, `CREATE VIEW public.app_chargesummary AS `+p.Query)
	if _, err := NeedsRebuild(ctx, pool, p); err == nil || !strings.Contains(err.Error(), "a view") {
		t.Errorf("needs rebuild over a plain view: %v, want an error", err)
	}
	err := inTx(t, pool, pgx.RepeatableRead, func(tx pgx.Tx) error { _, err := Rebuild(ctx, tx, p); return err })
	if err == nil || !strings.Contains(err.Error(), "does not replace") {
		t.Errorf("rebuild over a plain view: %v, want a refusal", err)
	}
	if n := count(t, pool, `SELECT count(*) FROM pg_class WHERE relname = 'app_chargesummary' AND relkind = 'v'`); n != 1 {
		t.Fatal("the user's view is gone")
	}
	mustExec(t, pool, `DROP VIEW public.app_chargesummary`)

	rebuild(t, pool, p)
	mustExec(t, pool, `CREATE VIEW public.user_totals AS SELECT user_id, sum(hardware) FROM public.app_chargesummary GROUP BY user_id`)
	err = inTx(t, pool, pgx.RepeatableRead, func(tx pgx.Tx) error { _, err := Rebuild(ctx, tx, p); return err })
	if err == nil || !strings.Contains(err.Error(), "public.user_totals") {
		t.Errorf("rebuild under a dependent view: %v, want a refusal naming it", err)
	}
	assertEqual(t, pool, p)
}

// TestRebuildLongName: side names and index names are cut to 63 bytes at a
// character boundary, and the swap finds them again.
func TestRebuildLongName(t *testing.T) {
	pool := testPool(t, true)
	seed(t, pool, 100, 3, 2)
	p := chargePlan()
	p.View.Name = strings.Repeat("é", 31) + "x" // 63 bytes
	install(t, pool, p)
	rebuild(t, pool, p)
	if res := rebuild(t, pool, p); res.Replaced != "table" {
		t.Fatalf("second rebuild: %+v", res)
	}
	assertEqual(t, pool, p)
	rows, err := pool.Query(context.Background(), `SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relname LIKE 'é%'`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 3 {
		t.Errorf("relations %q, want the table and its 2 indexes", names)
	}
	for _, n := range names {
		if !utf8.ValidString(n) || len(n) > 63 {
			t.Errorf("name %q: cut badly", n)
		}
	}
	mustExec(t, pool, `UPDATE public.app_charge SET amount = 0 WHERE user_id = 1`)
	round(t, pool, p)
	assertEqual(t, pool, p)
}

func TestCutName(t *testing.T) {
	for _, c := range []struct{ name, suffix, want string }{
		{"short", "_rfd_new", "short_rfd_new"},
		{strings.Repeat("a", 63), "_rfd_new", strings.Repeat("a", 55) + "_rfd_new"},
		{strings.Repeat("é", 31) + "x", "_rfd_new", strings.Repeat("é", 27) + "_rfd_new"}, // 55 bytes would split an é
	} {
		if got := relation.CutName(c.name, c.suffix); got != c.want || len(got) > 63 {
			t.Errorf("relation.CutName(%q, %q) = %q, want %q", c.name, c.suffix, got, c.want)
		}
	}
}

// TestReadersDuringRebuild: readers of the summary never see an error, an
// empty or a partial result while it is rebuilt, converted from the
// materialized view and then replaced again; and at that size a round
// reaches the summary's touched rows through its group index.
func TestReadersDuringRebuild(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pool := testPool(t, true)
	p := chargePlan()
	seed(t, pool, 150000, 20000, 5)
	mustExec(t, pool, `ANALYZE public.app_charge`)
	install(t, pool, p)
	fullStrategyView(t, pool, p)
	want := count(t, pool, `SELECT count(*) FROM public.app_chargesummary`)
	t.Logf("%d summary rows", want)

	var reads atomic.Int64
	stop := make(chan struct{})
	errs := make(chan error, 4)
	var readers sync.WaitGroup
	for range 2 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				// The default exec mode prepares the statement: the cached
				// plan must survive the swap too.
				var n int64
				if err := pool.QueryRow(ctx, `SELECT count(*) FROM public.app_chargesummary`).Scan(&n); err != nil {
					errs <- err
					return
				}
				if n != want {
					errs <- fmt.Errorf("a reader saw %d rows, want %d", n, want)
					return
				}
				reads.Add(1)
			}
		})
	}
	for i, replaced := range []string{"materialized view", "table"} {
		before := reads.Load()
		start := time.Now()
		res := rebuild(t, pool, p)
		t.Logf("rebuild %d: %+v in %v, %d reads meanwhile", i, res, time.Since(start).Round(time.Millisecond), reads.Load()-before)
		if res.Replaced != replaced || res.Rows != want {
			t.Errorf("rebuild %d: %+v, want %d rows replacing a %s", i, res, want, replaced)
		}
	}
	close(stop)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if reads.Load() == 0 {
		t.Fatal("no read ran")
	}
	assertEqual(t, pool, p)

	mustExec(t, pool, `UPDATE public.app_charge SET amount = amount + 1 WHERE id IN (7, 70, 700, 7000, 70000)`)
	if text := explainRound(t, pool, p, ""); regexp.MustCompile(`Seq Scan on app_chargesummary\b`).MatchString(text) {
		t.Errorf("the round reads the whole summary:\n%s", text)
	}
	round(t, pool, p)
	assertEqual(t, pool, p)
}

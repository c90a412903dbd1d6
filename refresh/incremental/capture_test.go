package incremental

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestInstallIdempotentUninstallComplete: installing twice changes
// nothing; uninstalling removes every capture object, writes go on without
// them, and uninstalling again is no error.
func TestInstallIdempotentUninstallComplete(t *testing.T) {
	pool := testPool(t, true)
	p := chargePlan()
	seed(t, pool, 50, 2, 2)
	install(t, pool, p)
	install(t, pool, p)
	triggersOn := func() []string {
		rows, err := pool.Query(context.Background(), `SELECT tgname::text FROM pg_trigger WHERE tgrelid = 'public.app_charge'::regclass AND NOT tgisinternal ORDER BY 1`)
		if err != nil {
			t.Fatal(err)
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return names
	}
	want := slices.Sorted(slices.Values(TriggerNames(p)))
	if got := triggersOn(); !slices.Equal(got, want) {
		t.Fatalf("triggers %v, want %v", got, want)
	}
	for _, name := range want {
		if !strings.HasPrefix(name, Prefix) || !strings.Contains(name, token(p)) {
			t.Errorf("trigger %s: not recognisable as the plan's", name)
		}
	}
	var comment string
	if err := pool.QueryRow(context.Background(), `SELECT obj_description($1::regclass, 'pg_class')`, LogTable(p).Sanitized()).Scan(&comment); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(comment, "k2 = job_id") {
		t.Errorf("log comment %q does not map its columns", comment)
	}
	if missing, err := MissingTriggers(context.Background(), pool, p); err != nil || len(missing) != 0 {
		t.Fatalf("missing triggers %v, %v", missing, err)
	}
	rebuild(t, pool, p)

	if err := inTx(t, pool, pgx.ReadCommitted, func(tx pgx.Tx) error { return Uninstall(context.Background(), tx, p) }); err != nil {
		t.Fatal(err)
	}
	if got := triggersOn(); len(got) != 0 {
		t.Errorf("triggers left: %v", got)
	}
	if n := count(t, pool, `SELECT count(*) FROM pg_proc WHERE proname LIKE $1`, Prefix+"%"); n != 0 {
		t.Errorf("%d functions left", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM pg_class WHERE relname = $1`, LogTable(p).Name); n != 0 {
		t.Error("log left")
	}
	if n := count(t, pool, `SELECT count(*) FROM refresherd.incremental_sentinel`); n != 0 {
		t.Error("sentinel left")
	}
	mustExec(t, pool, `INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 1, '2027-01-01', 1, NULL)`)
	mustExec(t, pool, `TRUNCATE public.app_charge`)
	if err := inTx(t, pool, pgx.ReadCommitted, func(tx pgx.Tx) error { return Uninstall(context.Background(), tx, p) }); err != nil {
		t.Fatalf("second uninstall: %v", err)
	}
	if got := needsRebuild(t, pool, p); got != ReasonNotInstalled {
		t.Errorf("needs rebuild %q after uninstall, want %q", got, ReasonNotInstalled)
	}
}

// TestWriterNeedsNoPrivileges: the trigger functions are SECURITY DEFINER,
// so an app role with rights on its own table only can still write (a
// missing grant on the refresherd schema would make its writes fail), and
// its writes are logged.
func TestWriterNeedsNoPrivileges(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t, true)
	p := chargePlan()
	seed(t, pool, 50, 2, 2)
	ready(t, pool, p)
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	role := ident("rd_app_" + hex.EncodeToString(b))
	mustExec(t, pool, `CREATE ROLE `+role)
	t.Cleanup(func() {
		mustExec(t, pool, `REVOKE ALL ON public.app_charge FROM `+role)
		mustExec(t, pool, `REVOKE ALL ON SEQUENCE public.app_charge_id_seq FROM `+role)
		mustExec(t, pool, `DROP ROLE `+role)
	})
	mustExec(t, pool, `GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON public.app_charge TO `+role)
	mustExec(t, pool, `GRANT USAGE ON SEQUENCE public.app_charge_id_seq TO `+role)
	asApp := func(sql string) {
		t.Helper()
		if err := inTx(t, pool, pgx.ReadCommitted, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SET LOCAL ROLE `+role); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, sql)
			return err
		}); err != nil {
			t.Fatalf("%s as an unprivileged role: %v", sql, err)
		}
	}
	// The role cannot touch the log itself.
	if err := inTx(t, pool, pgx.ReadCommitted, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL ROLE `+role); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `SELECT * FROM `+LogTable(p).Sanitized())
		return err
	}); err == nil {
		t.Fatal("the app role can read the log: the test proves nothing")
	}
	asApp(`INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 1, '2027-01-01', 1, NULL)`)
	asApp(`UPDATE public.app_charge SET job_id = 1 WHERE user_id = 2`)
	asApp(`DELETE FROM public.app_charge WHERE user_id = 1 AND job_id = 2`)
	if n := logRows(t, pool, p); n == 0 {
		t.Fatal("the app role's writes were not logged")
	}
	round(t, pool, p)
	assertEqual(t, pool, p)
	// A session in replica mode (logical replication's apply, a bulk load
	// skipping triggers) is captured too.
	if err := inTx(t, pool, pgx.ReadCommitted, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL session_replication_role = replica`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE public.app_charge SET job_id = NULL WHERE user_id = 2`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n := logRows(t, pool, p); n == 0 {
		t.Fatal("a write in replica mode was not logged")
	}
	round(t, pool, p)
	assertEqual(t, pool, p)
	asApp(`TRUNCATE public.app_charge`)
	if got := needsRebuild(t, pool, p); got != ReasonTruncated {
		t.Fatalf("after the app role's TRUNCATE: %q, want %q", got, ReasonTruncated)
	}
}

// TestWriterSearchPathIgnored: the trigger functions have no SET
// search_path, so they must resolve nothing through the writer's: a writer
// whose search_path is empty, or puts look-alike objects first, still logs
// into the plan's log (with the real transaction time) and nowhere else.
func TestWriterSearchPathIgnored(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t, true)
	p := chargePlan()
	seed(t, pool, 50, 2, 2)
	ready(t, pool, p)
	log := LogTable(p).Name
	mustExec(t, pool, `CREATE SCHEMA lookalike`)
	mustExec(t, pool, `CREATE TABLE lookalike.`+ident(log)+` (k1 int, k2 int, k3 date, logged_at timestamptz)`)
	mustExec(t, pool, `CREATE TABLE lookalike.incremental_rebuild (log_name text PRIMARY KEY, reason text, requested_at timestamptz)`)
	mustExec(t, pool, `CREATE FUNCTION lookalike.transaction_timestamp() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'epoch'::timestamptz $$`)
	mustExec(t, pool, `CREATE FUNCTION lookalike.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'epoch'::timestamptz $$`)

	for _, path := range []string{`''`, `lookalike, pg_catalog, public`, `pg_temp, lookalike, public`} {
		t.Run(path, func(t *testing.T) {
			write := func(sql string) {
				t.Helper()
				if err := inTx(t, pool, pgx.ReadCommitted, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, `SET LOCAL search_path = `+path); err != nil {
						return err
					}
					if _, err := tx.Exec(ctx, `CREATE TEMP TABLE `+ident(log)+` (k1 int, k2 int, k3 date, logged_at timestamptz) ON COMMIT DROP`); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, sql)
					return err
				}); err != nil {
					t.Fatalf("%s with search_path %s: %v", sql, path, err)
				}
			}
			write(`INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 1, '2027-01-01', 1, NULL)`)
			write(`UPDATE public.app_charge SET amount = 2 WHERE user_id = 2`)
			write(`DELETE FROM public.app_charge WHERE id = (SELECT max(id) FROM public.app_charge)`)
			if n := count(t, pool, `SELECT count(*) FROM `+LogTable(p).Sanitized()+` WHERE logged_at > now() - interval '1 hour'`); n < 3 {
				t.Errorf("%d recent keys in the log, want at least 3", n)
			}
			if n := count(t, pool, `SELECT count(*) FROM lookalike.`+ident(log)); n != 0 {
				t.Errorf("%d keys in the look-alike log", n)
			}
			round(t, pool, p)
			assertEqual(t, pool, p)

			write(`TRUNCATE public.app_charge`)
			if n := count(t, pool, `SELECT count(*) FROM refresherd.incremental_rebuild WHERE requested_at > now() - interval '1 hour'`); n != 1 {
				t.Errorf("%d recent rebuild requests, want 1", n)
			}
			if n := count(t, pool, `SELECT count(*) FROM lookalike.incremental_rebuild`); n != 0 {
				t.Errorf("%d rows in the look-alike rebuild table", n)
			}
			rebuild(t, pool, p)
			seed(t, pool, 50, 2, 2)
			round(t, pool, p)
			assertEqual(t, pool, p)
		})
	}
}

// TestNeedsRebuildReasons: each way the summary can stop being
// maintainable by rounds is named, and a Rebuild (after Install where
// capture objects went missing) makes it maintainable again.
func TestNeedsRebuildReasons(t *testing.T) {
	pool := testPool(t, true)
	p := chargePlan()
	seed(t, pool, 200, 4, 2)
	if got := needsRebuild(t, pool, p); got != ReasonSummaryMissing {
		t.Fatalf("before anything: %q, want %q", got, ReasonSummaryMissing)
	}
	mustExec(t, pool, `CREATE TABLE public.app_chargesummary (id text)`)
	if got := needsRebuild(t, pool, p); got != ReasonNotInstalled {
		t.Fatalf("summary table without capture: %q, want %q", got, ReasonNotInstalled)
	}
	mustExec(t, pool, `DROP TABLE public.app_chargesummary`)
	install(t, pool, p)
	if got := needsRebuild(t, pool, p); got != ReasonSummaryMissing {
		t.Fatalf("installed: %q, want %q", got, ReasonSummaryMissing)
	}
	res := rebuild(t, pool, p)
	if res.Replaced != "" || res.Rows == 0 {
		t.Errorf("first population: %+v", res)
	}
	if got := needsRebuild(t, pool, p); got != "" {
		t.Fatalf("after the first rebuild: %q", got)
	}

	// TRUNCATE logs no key: it asks for a rebuild.
	mustExec(t, pool, `TRUNCATE public.app_charge`)
	if got := needsRebuild(t, pool, p); got != ReasonTruncated {
		t.Fatalf("after TRUNCATE: %q, want %q", got, ReasonTruncated)
	}
	seed(t, pool, 100, 3, 2)
	if res := rebuild(t, pool, p); res.Replaced != "table" || res.Rows == 0 || res.Drained == 0 {
		t.Errorf("rebuild after TRUNCATE: %+v", res)
	}
	assertEqual(t, pool, p)
	if got := needsRebuild(t, pool, p); got != "" {
		t.Fatalf("after the rebuild: %q", got)
	}

	// Crash recovery empties unlogged tables: the sentinel goes with the log.
	mustExec(t, pool, `DELETE FROM refresherd.incremental_sentinel`)
	if got := needsRebuild(t, pool, p); got != ReasonLogLost {
		t.Fatalf("sentinel gone: %q, want %q", got, ReasonLogLost)
	}
	rebuild(t, pool, p)

	names := TriggerNames(p)
	mustExec(t, pool, `DROP TRIGGER `+ident(names[1])+` ON public.app_charge`)
	mustExec(t, pool, `ALTER TABLE public.app_charge DISABLE TRIGGER `+ident(names[2]))
	mustExec(t, pool, `ALTER TABLE public.app_charge ENABLE REPLICA TRIGGER `+ident(names[3]))
	mustExec(t, pool, `ALTER TABLE public.app_charge ENABLE TRIGGER `+ident(names[0])) // 'O' still fires
	want := ReasonTriggerMissing + ": " + names[1] + ", " + names[2] + ", " + names[3]
	if got := needsRebuild(t, pool, p); got != want {
		t.Fatalf("trigger dropped and disabled: %q, want %q", got, want)
	}
	// A rebuild without the triggers back would be stale at once.
	if err := inTx(t, pool, pgx.RepeatableRead, func(tx pgx.Tx) error { _, err := Rebuild(context.Background(), tx, p); return err }); err == nil ||
		!strings.Contains(err.Error(), "install") {
		t.Fatalf("rebuild with triggers missing: %v, want a refusal", err)
	}
	mustExec(t, pool, `UPDATE public.app_charge SET user_id = 9 WHERE user_id = 1`) // unlogged
	install(t, pool, p)
	if n := count(t, pool, `SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.app_charge'::regclass AND tgenabled = 'A'`); n != 4 {
		t.Errorf("%d triggers enabled ALWAYS after install, want 4", n)
	}
	rebuild(t, pool, p)
	assertEqual(t, pool, p)
	if got := needsRebuild(t, pool, p); got != "" {
		t.Fatalf("after install and rebuild: %q", got)
	}
	mustExec(t, pool, `UPDATE public.app_charge SET user_id = 8 WHERE user_id = 9`)
	round(t, pool, p)
	assertEqual(t, pool, p)

	// Rebuild needs its snapshot.
	if err := inTx(t, pool, pgx.ReadCommitted, func(tx pgx.Tx) error { _, err := Rebuild(context.Background(), tx, p); return err }); err == nil ||
		!strings.Contains(err.Error(), "REPEATABLE READ") {
		t.Fatalf("rebuild at READ COMMITTED: %v, want a refusal", err)
	}
}

// TestPending: the poll's check says whether keys wait and since when.
func TestPending(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t, true)
	p := chargePlan()
	seed(t, pool, 50, 2, 2)
	ready(t, pool, p)
	for _, oldest := range []bool{true, false} {
		if pending, at, err := Pending(ctx, pool, p, oldest); err != nil || pending || !at.IsZero() {
			t.Fatalf("empty log (oldest %v): %v %v %v", oldest, pending, at, err)
		}
	}
	var first time.Time
	for i := range 2 {
		if err := inTx(t, pool, pgx.ReadCommitted, func(tx pgx.Tx) error {
			if i == 0 {
				if err := tx.QueryRow(ctx, `SELECT now()`).Scan(&first); err != nil {
					return err
				}
			}
			_, err := tx.Exec(ctx, `INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 1, '2027-01-01', 1, NULL)`)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	pending, oldest, err := Pending(ctx, pool, p, true)
	if err != nil || !pending || !oldest.Equal(first) {
		t.Fatalf("after two writes: %v %v %v, want pending since %v", pending, oldest, err, first)
	}
	if pending, at, err := Pending(ctx, pool, p, false); err != nil || !pending || !at.IsZero() {
		t.Fatalf("after two writes, existence only: %v %v %v, want pending, no time", pending, at, err)
	}
	if r := round(t, pool, p); !r.Oldest.Equal(first) || r.Touched != 1 {
		t.Errorf("round %+v, want 1 group since %v", r, first)
	}
	for _, oldest := range []bool{true, false} {
		if pending, _, err := Pending(ctx, pool, p, oldest); err != nil || pending {
			t.Fatalf("after the round (oldest %v): %v %v", oldest, pending, err)
		}
	}
}

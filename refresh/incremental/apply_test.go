package incremental

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestRoundsFollowEveryKindOfWrite: after each write (every kind a Django
// app does, NULL jobs included) one round makes the summary equal the
// query, with counts that say what the round did.
func TestRoundsFollowEveryKindOfWrite(t *testing.T) {
	pool := testPool(t, true)
	p := chargePlan()
	seed(t, pool, 500, 5, 3)
	ready(t, pool, p)
	if r := round(t, pool, p); r != (Round{}) {
		t.Fatalf("round with nothing logged: %+v", r)
	}

	steps := []struct {
		name  string
		sql   []string // one transaction
		round Round    // Oldest is checked apart
	}{
		{"insert with a job, new group", []string{`INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 10, '2027-01-01', 100, 7)`},
			Round{Touched: 1, Upserted: 1}},
		{"insert without a job, new group", []string{`INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ('sw', 5, '2027-01-01', 100, NULL)`},
			Round{Touched: 1, Upserted: 1}},
		{"insert into the NULL-job group", []string{`INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 1, '2027-01-01', 100, NULL)`},
			Round{Touched: 1, Upserted: 1}},
		{"update amount", []string{`UPDATE public.app_charge SET amount = amount + 1 WHERE user_id = 100 AND job_id = 7`},
			Round{Touched: 1, Upserted: 1}},
		{"update that changes no total", []string{`UPDATE public.app_charge SET amount = amount WHERE user_id = 100 AND job_id = 7`},
			Round{Touched: 1}},
		{"update moving the group's only charge to another user", []string{`UPDATE public.app_charge SET user_id = 101 WHERE user_id = 100 AND job_id = 7`},
			Round{Touched: 2, Deleted: 1, Upserted: 1}},
		{"update moving a charge to a NULL job", []string{`UPDATE public.app_charge SET job_id = NULL WHERE user_id = 101 AND job_id = 7`},
			Round{Touched: 2, Deleted: 1, Upserted: 1}},
		{"update moving a charge from a NULL job", []string{`UPDATE public.app_charge SET job_id = 8 WHERE user_id = 100 AND job_id IS NULL AND type = 'sw'`},
			Round{Touched: 2, Upserted: 2}},
		{"update moving month", []string{`UPDATE public.app_charge SET month = '2027-02-01' WHERE user_id = 100 AND job_id = 8`},
			Round{Touched: 2, Deleted: 1, Upserted: 1}},
		{"update moving many charges between existing groups", []string{`UPDATE public.app_charge SET user_id = 2 WHERE user_id = 1`},
			Round{Touched: 96, Deleted: 48, Upserted: 48}}, // user 1's 48 groups move onto user 2's 48
		{"delete a group's only charge", []string{`DELETE FROM public.app_charge WHERE user_id = 100 AND job_id = 8`},
			Round{Touched: 1, Deleted: 1}},
		{"delete one charge of each group of a user", []string{`DELETE FROM public.app_charge WHERE id IN (SELECT min(id) FROM public.app_charge WHERE user_id = 3 GROUP BY job_id, month)`},
			Round{Touched: 48, Deleted: 10, Upserted: 38}}, // 10 of user 3's groups had one charge
		{"insert many", []string{`INSERT INTO public.app_charge (type, amount, month, user_id, job_id)
			SELECT 'hw', 1, '2028-01-01', 200 + g % 10, nullif(g % 3, 0) FROM generate_series(1, 100) g`},
			Round{Touched: 30, Upserted: 30}},
		{"multi-statement transaction", []string{
			`INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 3, '2029-01-01', 300, NULL)`,
			`UPDATE public.app_charge SET amount = 4 WHERE user_id = 300`,
			`INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ('sw', 3, '2029-01-01', 301, 1)`,
			`DELETE FROM public.app_charge WHERE user_id = 301`,
		}, Round{Touched: 2, Upserted: 1}},
		{"statement touching no row", []string{`UPDATE public.app_charge SET amount = 0 WHERE user_id = -1`}, Round{}},
	}
	for _, s := range steps {
		var txStart time.Time
		if err := inTx(t, pool, pgx.ReadCommitted, func(tx pgx.Tx) error {
			if err := tx.QueryRow(context.Background(), `SELECT now()`).Scan(&txStart); err != nil {
				return err
			}
			for _, q := range s.sql {
				if _, err := tx.Exec(context.Background(), q); err != nil {
					return fmt.Errorf("%s: %w", q, err)
				}
			}
			return nil
		}); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		r := round(t, pool, p)
		want := s.round
		if want.Touched > 0 {
			want.Oldest = txStart
		}
		if !r.Oldest.Equal(want.Oldest) {
			t.Errorf("%s: oldest %v, want the writer's transaction start %v", s.name, r.Oldest, want.Oldest)
		}
		r.Oldest, want.Oldest = time.Time{}, time.Time{}
		if r != want {
			t.Errorf("%s: round %+v, want %+v", s.name, r, want)
		}
		assertEqual(t, pool, p)
		if n := logRows(t, pool, p); n != 0 {
			t.Errorf("%s: %d keys left in the log after the round", s.name, n)
		}
	}
}

// TestRolledBackWriteLogsNothing: the log is written in the writer's
// transaction, so a rollback takes its keys with it.
func TestRolledBackWriteLogsNothing(t *testing.T) {
	pool := testPool(t, true)
	p := chargePlan()
	seed(t, pool, 100, 3, 2)
	ready(t, pool, p)
	errRollback := errors.New("roll back")
	err := inTx(t, pool, pgx.ReadCommitted, func(tx pgx.Tx) error {
		mustExec(t, tx, `INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 10, '2027-01-01', 100, NULL)`)
		mustExec(t, tx, `UPDATE public.app_charge SET user_id = 9 WHERE user_id = 1`)
		mustExec(t, tx, `DELETE FROM public.app_charge WHERE user_id = 2`)
		if n := count(t, tx, `SELECT count(*) FROM `+LogTable(p).Sanitized()); n == 0 {
			t.Error("the writer's own transaction sees no logged key")
		}
		return errRollback
	})
	if !errors.Is(err, errRollback) {
		t.Fatal(err)
	}
	if n := logRows(t, pool, p); n != 0 {
		t.Fatalf("%d keys logged by a rolled-back transaction", n)
	}
	if r := round(t, pool, p); r != (Round{}) {
		t.Fatalf("round after a rollback: %+v", r)
	}
	assertEqual(t, pool, p)
}

// TestKeyCommittedAfterSnapshotStaysForNextRound: a write committed after
// the round's snapshot is invisible to its drain as well as to its
// recompute, so it stays in the log and the next round applies it.
func TestKeyCommittedAfterSnapshotStaysForNextRound(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t, true)
	p := chargePlan()
	seed(t, pool, 100, 3, 2)
	ready(t, pool, p)
	mustExec(t, pool, `INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 1, '2027-01-01', 1, NULL)`)

	roundConn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer roundConn.Release()
	tx, err := roundConn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT 1`); err != nil { // takes the snapshot
		t.Fatal(err)
	}
	// Another connection commits after the snapshot: a new group and a
	// change to the group the round is about to recompute.
	mustExec(t, pool, `INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ('sw', 2, '2027-01-01', 500, 5)`)
	mustExec(t, pool, `INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ('sw', 7, '2027-01-01', 1, NULL)`)
	r, err := Apply(ctx, tx, p)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if r.Touched != 1 || r.Upserted != 1 {
		t.Errorf("round %+v, want the one key logged before the snapshot", r)
	}
	if n := logRows(t, pool, p); n != 2 {
		t.Fatalf("%d keys in the log after the round, want the 2 committed after its snapshot", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM public.app_chargesummary WHERE id = '1:-:2027-01-01' AND software = 0`); n != 1 {
		t.Errorf("1:-:2027-01-01 has software after the first round: the later write is for the next round")
	}
	r = round(t, pool, p)
	if r.Touched != 2 || r.Upserted != 2 {
		t.Errorf("next round %+v, want the 2 later keys", r)
	}
	assertEqual(t, pool, p)
}

// TestNullableUniqueKey: a summary whose unique key is the group key,
// with a nullable job: the NULL-job row must be updated in place, not
// added again every round. A second plan on the same source also shows
// that two views' captures coexist.
func TestNullableUniqueKey(t *testing.T) {
	pool := testPool(t, true)
	seed(t, pool, 200, 3, 2)
	charge := chargePlan()
	ready(t, pool, charge)
	byKey := Plan{
		View:   summaryName.WithName("charge_by_key"),
		Query:  `SELECT user_id, job_id, month, sum(amount) AS total, count(*) AS n FROM public.app_charge GROUP BY user_id, job_id, month`,
		Source: chargeName,
		Keys:   charge.Keys,
		Columns: []Column{{Name: "user_id"}, {Name: "job_id"}, {Name: "month"},
			{Name: "total"}, {Name: "n"}},
		UniqueKey: []string{"user_id", "job_id", "month"},
		Hash:      charge.Hash, // same hash, other view: must not share a log
	}
	ready(t, pool, byKey)
	if LogTable(byKey) == LogTable(charge) {
		t.Fatal("two views share a log")
	}
	for range 3 {
		mustExec(t, pool, `UPDATE public.app_charge SET amount = amount + 1 WHERE job_id IS NULL AND user_id = 1`)
		if r := round(t, pool, byKey); r.Touched == 0 || r.Upserted != r.Touched {
			t.Errorf("round %+v: every touched NULL-job group should be updated", r)
		}
		assertEqual(t, pool, byKey)
	}
	round(t, pool, charge)
	assertEqual(t, pool, charge)
	// Only the unique index: it covers the group key.
	if n := count(t, pool, `SELECT count(*) FROM pg_indexes WHERE tablename = 'charge_by_key'`); n != 1 {
		t.Errorf("%d indexes on charge_by_key, want the unique one only", n)
	}
}

// TestRoundUsesSourceIndex: the recompute reaches the touched groups
// through the source's index, not by reading the whole table.
func TestRoundUsesSourceIndex(t *testing.T) {
	pool := testPool(t, false)
	mustExec(t, pool, `CREATE INDEX app_charge_user_month ON public.app_charge (user_id, month)`)
	seed(t, pool, 40000, 2000, 5)
	mustExec(t, pool, `ANALYZE public.app_charge`)
	p := chargePlan()
	ready(t, pool, p)
	mustExec(t, pool, `UPDATE public.app_charge SET amount = amount + 1 WHERE id IN (5, 500, 5000, 20000, 39000)`)
	mustExec(t, pool, `INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 1, '2026-03-01', 7, NULL)`)

	text := explainRound(t, pool, p, "")
	if regexp.MustCompile(`Seq Scan on app_charge\b`).MatchString(text) ||
		!(strings.Contains(text, "Index Scan using app_charge_user_month") || strings.Contains(text, "Bitmap Index Scan on app_charge_user_month")) {
		t.Fatalf("the round does not read app_charge through app_charge_user_month:\n%s", text)
	}
	if r := round(t, pool, p); r.Touched != 6 {
		t.Errorf("round %+v, want 6 touched groups", r)
	}
	assertEqual(t, pool, p)
}

// TestRoundUsesCoveringIndex: with the index check advises, a round reads
// the source by index-only scan (no table page per charge), and it looks
// up in the summary only the groups that are gone (the unique key comes
// from the group key), so a round where none is gone reads no summary row
// before its upsert.
func TestRoundUsesCoveringIndex(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t, false)
	seed(t, pool, 40000, 2000, 5)
	p := chargePlan()
	advice, err := CheckIndex(ctx, pool, p)
	if err != nil || advice.SQL == "" {
		t.Fatalf("advice %+v, %v", advice, err)
	}
	mustExec(t, pool, strings.Replace(advice.SQL, "CONCURRENTLY ON", "app_charge_covering ON", 1))
	mustExec(t, pool, `VACUUM ANALYZE public.app_charge`) // sets the visibility map, as autovacuum would
	ready(t, pool, p)
	mustExec(t, pool, `UPDATE public.app_charge SET amount = amount + 1 WHERE id IN (5, 500, 5000, 20000, 39000)`)

	text := explainRound(t, pool, p, "(ANALYZE, COSTS OFF)") // rolled back: the round is applied below
	if !strings.Contains(text, "Index Only Scan using app_charge_covering") {
		t.Errorf("the round does not read app_charge by index-only scan:\n%s", text)
	}
	summaryScan := regexp.MustCompile(`(?m)^.*Scan.* on app_chargesummary v\b.*$`).FindAllString(text, -1)
	if len(summaryScan) != 1 || !strings.Contains(summaryScan[0], "never executed") {
		t.Errorf("the round looked up summary rows of groups that still exist: %q\n%s", summaryScan, text)
	}
	if r := round(t, pool, p); r.Touched != 5 || r.Upserted != 5 || r.Deleted != 0 {
		t.Errorf("round %+v, want 5 touched and upserted groups", r)
	}
	mustExec(t, pool, `DELETE FROM public.app_charge WHERE (user_id, month) = (SELECT user_id, month FROM public.app_charge WHERE id = 5)`)
	if r := round(t, pool, p); r.Deleted == 0 {
		t.Errorf("round %+v, want deleted groups", r)
	}
	assertEqual(t, pool, p)
}

// TestConcurrentWritersAndRounds: writers in READ COMMITTED run random
// transactions (every kind of write, rollbacks) while rounds run back to
// back; once they stop, a last round leaves the summary exact.
func TestConcurrentWritersAndRounds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := testPool(t, true)
	p := chargePlan()
	seed(t, pool, 300, 5, 3)
	ready(t, pool, p)

	// Each op writes with random values: type, amount, month, user, job
	// (nil: no job).
	ops := []func(typ string, amount int, month string, user int, job any) (string, []any){
		func(typ string, amount int, month string, user int, job any) (string, []any) {
			return `INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ($1, $2, $3, $4, $5)`,
				[]any{typ, amount, month, user, job}
		},
		func(_ string, amount int, _ string, user int, _ any) (string, []any) {
			return `UPDATE public.app_charge SET amount = $1 WHERE id = (SELECT min(id) FROM public.app_charge WHERE user_id = $2)`,
				[]any{amount, user}
		},
		func(typ string, amount int, month string, user int, job any) (string, []any) {
			return `UPDATE public.app_charge SET user_id = $1, job_id = $2, month = $3
				WHERE id IN (SELECT id FROM public.app_charge WHERE type = $4 AND amount < $5 LIMIT 3)`,
				[]any{user, job, month, typ, amount}
		},
		func(typ string, _ int, _ string, user int, _ any) (string, []any) {
			return `DELETE FROM public.app_charge WHERE id IN (SELECT id FROM public.app_charge WHERE user_id = $1 AND type = $2 LIMIT 2)`,
				[]any{user, typ}
		},
	}
	var writers sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 3 {
		writers.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(w), 1))
			for range 150 {
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					for range 1 + rnd.IntN(3) {
						var job any
						if rnd.IntN(3) > 0 {
							job = 1 + rnd.IntN(3)
						}
						typ := []string{"hw", "sw"}[rnd.IntN(2)]
						month := fmt.Sprintf("2026-%02d-01", 1+rnd.IntN(3))
						sql, args := ops[rnd.IntN(len(ops))](typ, rnd.IntN(100), month, 1+rnd.IntN(6), job)
						if _, err := tx.Exec(ctx, sql, args...); err != nil {
							return err
						}
					}
					if rnd.IntN(5) == 0 {
						return errRolledBack
					}
					return nil
				})
				// Writers may deadlock with each other (random updates);
				// a round never takes their locks.
				var pgErr *pgconn.PgError
				if errors.As(err, &pgErr) && pgErr.Code == "40P01" {
					continue
				}
				if err != nil && !errors.Is(err, errRolledBack) {
					errs <- err
					return
				}
			}
		})
	}
	stop := make(chan struct{})
	var rounds sync.WaitGroup
	var applied int
	rounds.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
				_, err := Apply(ctx, tx, p)
				return err
			})
			if err != nil {
				errs <- fmt.Errorf("round: %w", err)
				return
			}
			applied++
		}
	})
	writers.Wait()
	close(stop)
	rounds.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	round(t, pool, p)
	assertEqual(t, pool, p)
	t.Logf("%d rounds ran during the writes", applied)
}

var errRolledBack = errors.New("rolled back on purpose")

// TestQueryIsOneStatement: a second statement smuggled into the query is
// refused by the server, never run, by every statement embedding it.
func TestQueryIsOneStatement(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t, true)
	seed(t, pool, 50, 2, 2)
	good := chargePlan()
	ready(t, pool, good)
	bad := good
	bad.Query = good.Query + "; DROP TABLE public.app_charge; SELECT 1"
	for name, fn := range map[string]func(pgx.Tx) error{
		"apply":   func(tx pgx.Tx) error { _, err := Apply(ctx, tx, bad); return err },
		"rebuild": func(tx pgx.Tx) error { _, err := Rebuild(ctx, tx, bad); return err },
		"verify":  func(tx pgx.Tx) error { _, err := Verify(ctx, tx, bad, 10); return err },
	} {
		if err := inTx(t, pool, pgx.RepeatableRead, fn); err == nil {
			t.Errorf("%s with two statements: no error", name)
		}
	}
	// Smuggled at the end of the query, so the statement around it is
	// whole: the server must refuse a second statement as such.
	bad.Query = good.Query + "; DROP TABLE public.app_charge"
	err := inTx(t, pool, pgx.RepeatableRead, func(tx pgx.Tx) error { _, err := exec(ctx, tx, bad.Query); return err })
	if err == nil || !strings.Contains(err.Error(), "single statement") {
		t.Errorf("two statements: %v, want a refusal naming the cause", err)
	}
	if n := count(t, pool, `SELECT count(*) FROM public.app_charge`); n != 50 {
		t.Fatalf("app_charge has %d rows", n)
	}
}

// TestOtherWritePaths: INSERT ... ON CONFLICT, MERGE and COPY fill the
// transition tables too.
func TestOtherWritePaths(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t, true)
	p := chargePlan()
	seed(t, pool, 200, 3, 2)
	ready(t, pool, p)
	for _, sql := range []string{
		`INSERT INTO public.app_charge (id, type, amount, month, user_id, job_id) VALUES (1, 'hw', 99, '2026-01-01', 7, NULL), (100000, 'sw', 1, '2026-02-01', 8, 1)
			ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, amount = excluded.amount`,
		`MERGE INTO public.app_charge c USING (VALUES (2, 5), (3, NULL), (100001, 6)) v (id, job) ON c.id = v.id
			WHEN MATCHED AND v.job IS NULL THEN DELETE
			WHEN MATCHED THEN UPDATE SET job_id = v.job
			WHEN NOT MATCHED THEN INSERT (id, type, amount, month, user_id, job_id) VALUES (v.id, 'hw', 3, '2026-03-01', 9, v.job)`,
	} {
		mustExec(t, pool, sql)
		round(t, pool, p)
		assertEqual(t, pool, p)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Conn().CopyFrom(ctx, pgx.Identifier{"public", "app_charge"}, []string{"type", "amount", "month", "user_id", "job_id"},
		pgx.CopyFromRows([][]any{{"hw", "1.5", time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC), 11, nil}, {"sw", "2.5", time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC), 11, 3}}))
	conn.Release()
	if err != nil {
		t.Fatal(err)
	}
	if r := round(t, pool, p); r.Touched != 2 {
		t.Errorf("round after COPY: %+v, want 2 groups", r)
	}
	assertEqual(t, pool, p)
}

// TestUniqueKeyNotFromGroup: with a unique key that is not a function of
// the group (min(id)), a group keeps its row when its key changes, and a
// key that passes from one group to another does not collide.
func TestUniqueKeyNotFromGroup(t *testing.T) {
	pool := testPool(t, true)
	seed(t, pool, 200, 3, 2)
	p := chargePlan()
	p.View = summaryName.WithName("charge_min_id")
	p.Query = `SELECT min(id) AS id, user_id, job_id, month, sum(amount) AS total FROM public.app_charge GROUP BY user_id, job_id, month`
	p.Columns = []Column{{Name: "id"}, {Name: "user_id"}, {Name: "job_id"}, {Name: "month"}, {Name: "total"}}
	p.UniqueFromGroup = false // as Analyze finds: min(id) is an aggregate
	ready(t, pool, p)
	for _, sql := range []string{
		// Each group's key changes: its smallest charge goes.
		`DELETE FROM public.app_charge WHERE id IN (SELECT min(id) FROM public.app_charge WHERE user_id = 1 GROUP BY job_id, month)`,
		// The smallest charges of user 2 move to user 3 (new groups): each
		// id passes from a row of user 2 that stays, with a new id, to a
		// new row, in one round.
		`UPDATE public.app_charge SET user_id = 3 WHERE id IN (SELECT min(id) FROM public.app_charge WHERE user_id = 2 GROUP BY job_id, month)`,
	} {
		mustExec(t, pool, sql)
		round(t, pool, p)
		assertEqual(t, pool, p)
	}
}

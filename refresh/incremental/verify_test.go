package incremental

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

func verify(t *testing.T, pool *pgxpool.Pool, p Plan, limit int) Verification {
	t.Helper()
	var v Verification
	if err := inTx(t, pool, pgx.RepeatableRead, func(tx pgx.Tx) error {
		var err error
		v, err = Verify(context.Background(), tx, p, limit)
		return err
	}); err != nil {
		t.Fatalf("verify: %v", err)
	}
	return v
}

// TestVerify: an exact summary has no mismatch; a corrupted, a missing and
// an extra row are each reported with their side and values; a change not
// yet applied is pending, not a mismatch.
func TestVerify(t *testing.T) {
	pool := testPool(t, true)
	p := chargePlan()
	seed(t, pool, 300, 4, 2)
	ready(t, pool, p)
	if v := verify(t, pool, p, 10); v.Mismatched != 0 || len(v.Rows) != 0 || v.PendingGroups != 0 {
		t.Fatalf("exact summary: %+v", v)
	}

	// Not applied yet: pending, not wrong.
	mustExec(t, pool, `UPDATE public.app_charge SET amount = amount + 5 WHERE user_id = 1 AND month = '2026-01-01'`)
	mustExec(t, pool, `INSERT INTO public.app_charge (type, amount, month, user_id, job_id) VALUES ('sw', 3, '2027-01-01', 50, NULL)`)
	groups := count(t, pool, `SELECT count(DISTINCT job_id) + bool_or(job_id IS NULL)::int + 1 FROM public.app_charge WHERE user_id = 1 AND month = '2026-01-01'`)
	if v := verify(t, pool, p, 10); v.Mismatched != 0 || v.PendingGroups != groups {
		t.Fatalf("with changes pending: %+v, want 0 mismatches and %d pending groups", v, groups)
	}
	round(t, pool, p)

	mustExec(t, pool, `UPDATE public.app_chargesummary SET hardware = hardware + 1 WHERE id = '2:1:2026-02-01'`)
	mustExec(t, pool, `DELETE FROM public.app_chargesummary WHERE id = '3:-:2026-03-01'`)
	mustExec(t, pool, `INSERT INTO public.app_chargesummary VALUES ('x', 9, NULL, '2030-01-01', 1, 2)`)
	v := verify(t, pool, p, 10)
	if v.Mismatched != 4 || len(v.Rows) != 4 || v.PendingGroups != 0 {
		t.Fatalf("corrupted summary: %+v, want 4 mismatched rows", v)
	}
	type key struct{ side, id string }
	got := map[key]map[string]string{}
	for _, r := range v.Rows {
		got[key{r.Side, r.Row["id"]}] = r.Row
	}
	for _, k := range []key{{SideSummary, "2:1:2026-02-01"}, {SideQuery, "2:1:2026-02-01"}, {SideQuery, "3:-:2026-03-01"}, {SideSummary, "x"}} {
		if got[k] == nil {
			t.Errorf("no %s row %s in %+v", k.side, k.id, v.Rows)
		}
	}
	if extra := got[key{SideSummary, "x"}]; extra != nil && (extra["job_id"] != NullText || extra["month"] != "2030-01-01" || extra["software"] != "2") {
		t.Errorf("extra row printed as %v", extra)
	}
	if v := verify(t, pool, p, 1); v.Mismatched != 4 || len(v.Rows) != 1 {
		t.Errorf("limit 1: %d mismatched, %d rows", v.Mismatched, len(v.Rows))
	}

	// A rebuild makes it exact again.
	rebuild(t, pool, p)
	if v := verify(t, pool, p, 10); v.Mismatched != 0 {
		t.Fatalf("after rebuild: %+v", v)
	}
}

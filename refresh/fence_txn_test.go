package refresh

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
)

// lockSession opens a connection of its own, as the elector does, and
// returns it with its backend pid.
func lockSession(t *testing.T, pool *pgxpool.Pool) (*pgx.Conn, uint32) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn, conn.PgConn().PID()
}

func connExec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// dbState is what a refresh commits: the view's data, its status row and
// the refresh log.
type dbState struct {
	total  int64
	status string
	logged int
}

func readDBState(t *testing.T, pool *pgxpool.Pool, v *config.View) dbState {
	t.Helper()
	ctx := context.Background()
	s := dbState{total: viewTotal(t, pool, v)}
	if err := pool.QueryRow(ctx, `SELECT coalesce((SELECT row_to_json(s)::text FROM refresherd.view_status s WHERE view_name = $1), '')`,
		v.Name.String()).Scan(&s.status); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM refresherd.refresh_log WHERE view_name = $1`, v.Name.String()).Scan(&s.logged); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRefreshFencedByLeaderLock: a refresh fenced on a leader lock that its
// backend does not hold (never held, released, held by another backend, or
// the same numbers taken as two int4 keys) fails with ErrNotLeader and
// commits nothing; held by that backend, it commits.
func TestRefreshFencedByLeaderLock(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t)
	v := testView(t, "public.sums", sumQuery)
	if _, err := EnsureView(ctx, pool, v); err != nil {
		t.Fatal(err)
	}
	r := &Refresher{Pool: pool, Identity: "test"}
	if _, err := r.Refresh(ctx, v, TriggerStartup, nil); err != nil {
		t.Fatal(err)
	}
	leader, leaderPID := lockSession(t, pool)
	other, otherPID := lockSession(t, pool)

	// -1 puts all-ones in both halves: oids above the int4 range.
	for _, key := range []int64{LeaderLockKey("fence-test"), -1} {
		classid, objid := AdvisoryLockIDs(key)
		mustExec(t, pool, `INSERT INTO public.src VALUES (1, 1000)`)
		before := readDBState(t, pool, v)
		notLeader := []struct {
			name   string
			pid    uint32
			take   func()
			unlock func()
		}{
			{"lock not held", leaderPID, func() {}, func() {}},
			{"lock held by another backend", leaderPID,
				func() { connExec(t, other, `SELECT pg_advisory_lock($1)`, key) },
				func() { connExec(t, other, `SELECT pg_advisory_unlock($1)`, key) }},
			{"same numbers as two int4 keys", leaderPID,
				func() { connExec(t, leader, `SELECT pg_advisory_lock($1, $2)`, int32(classid), int32(objid)) },
				func() { connExec(t, leader, `SELECT pg_advisory_unlock($1, $2)`, int32(classid), int32(objid)) }},
			{"lock held, fence names another backend", otherPID,
				func() { connExec(t, leader, `SELECT pg_advisory_lock($1)`, key) },
				func() { connExec(t, leader, `SELECT pg_advisory_unlock($1)`, key) }},
		}
		for _, tt := range notLeader {
			tt.take()
			_, err := r.Refresh(ctx, v, TriggerChange, LeaderFence(key, tt.pid))
			tt.unlock()
			if !errors.Is(err, ErrNotLeader) {
				t.Fatalf("key %d, %s: Refresh error = %v, want ErrNotLeader", key, tt.name, err)
			}
			if after := readDBState(t, pool, v); after != before {
				t.Fatalf("key %d, %s: a fenced-off refresh committed:\nbefore %+v\nafter  %+v", key, tt.name, before, after)
			}
		}

		connExec(t, leader, `SELECT pg_advisory_lock($1)`, key)
		out, err := r.Refresh(ctx, v, TriggerChange, LeaderFence(key, leaderPID))
		if err != nil {
			t.Fatalf("key %d: leader's refresh: %v", key, err)
		}
		after := readDBState(t, pool, v)
		if after.total != before.total+1000 || after.logged != before.logged+1 {
			t.Fatalf("key %d: leader's refresh did not commit: before %+v, after %+v", key, before, after)
		}
		if st := readStatus(t, pool, v); st.asOf == nil || !st.asOf.Equal(out.AsOf) {
			t.Fatalf("key %d: status as-of %v, want %v", key, st.asOf, out.AsOf)
		}
		connExec(t, leader, `SELECT pg_advisory_unlock($1)`, key)
	}
}

// TestSwapFencedByLeaderLock: a definition swap fenced off keeps the old
// view and definition and leaves no side build; by the leader it swaps.
func TestSwapFencedByLeaderLock(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t)
	v := testView(t, "public.sums", sumQuery)
	if _, err := EnsureView(ctx, pool, v); err != nil {
		t.Fatal(err)
	}
	r := &Refresher{Pool: pool, Identity: "test"}
	if _, err := r.Refresh(ctx, v, TriggerStartup, nil); err != nil {
		t.Fatal(err)
	}
	leader, leaderPID := lockSession(t, pool)
	key := LeaderLockKey("fence-test")
	nv := *v
	nv.Query = `SELECT k, (2 * sum(v))::bigint AS total, count(*) AS n FROM public.src GROUP BY k`

	_, err := Swap(ctx, pool, &nv, "test", LeaderFence(key, leaderPID))
	if !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Swap error = %v, want ErrNotLeader", err)
	}
	if got := viewTotal(t, pool, v); got != 500500 {
		t.Fatalf("old view changed by a fenced-off swap: total %d", got)
	}
	if ch, err := CheckDefinition(ctx, pool, &nv); err != nil || ch != DefinitionChanged {
		t.Fatalf("after a fenced-off swap: %v, %v; want the definition still changed", ch, err)
	}
	var leftovers int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_class WHERE relname LIKE 'sums_rfd_%'`).Scan(&leftovers); err != nil || leftovers != 0 {
		t.Fatalf("%d leftover relations (%v)", leftovers, err)
	}

	connExec(t, leader, `SELECT pg_advisory_lock($1)`, key)
	if _, err := Swap(ctx, pool, &nv, "test", LeaderFence(key, leaderPID)); err != nil {
		t.Fatalf("leader's swap: %v", err)
	}
	if got := viewTotal(t, pool, v); got != 2*500500 {
		t.Fatalf("total after the leader's swap = %d, want %d", got, 2*500500)
	}
}

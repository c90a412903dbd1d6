package faults

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/refresherd/refresherd/internal/daemontest"
)

// failoverBound is the bound: after the leader dies, another replica
// leads and completes a refresh within 10 s.
const failoverBound = 10 * time.Second

// TestReplicasFailover runs three replicas with one config (same leader
// name, their own HTTP ports). Exactly one leads. Five times over, the
// leader is killed with SIGKILL right after a change: another replica must
// complete a refresh within 10 s (the failover time, measured from the kill
// to the new leader's first successful refresh log line) and the change
// must be reflected; a fresh replica replaces the dead one. Then the leader
// is stopped with SIGTERM and must hand over within 10 s too. Throughout,
// the refresh_log intervals of the view never overlap.
func TestReplicasFailover(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2000)
	cfgPath := config{leaderName: "failover-test"}.write(t)
	startReplica := func() *daemontest.Proc { return start(t, cfgPath, "DATABASE_URL="+e.url) }
	replicas := []*daemontest.Proc{startReplica(), startReplica(), startReplica()}
	e.mustSettle(t, 30*time.Second)

	var failovers []time.Duration
	for round := 1; round <= 5; round++ {
		leader := oneLeader(t, replicas)
		e.change(t)
		from := make([]int, len(replicas))
		for i, r := range replicas {
			from[i] = len(r.LogLines())
		}
		killedAt := time.Now()
		replicas[leader].Kill()
		next, took := firstRefreshAfter(t, replicas, leader, from, killedAt)
		failovers = append(failovers, took)
		t.Logf("round %d: killed leader %d (pid %d); replica %d refreshed %v later",
			round, leader, replicas[leader].PID(), next, took.Round(time.Millisecond))
		if took > failoverBound {
			t.Errorf("round %d: failover took %v, want <= %v", round, took, failoverBound)
		}
		// Nothing lost: the change committed just before the kill is in.
		e.mustSettle(t, failoverBound)
		replicas[leader] = startReplica()
	}
	t.Logf("kill -9 failover times %v, median %v", roundAll(failovers), median(failovers).Round(time.Millisecond))

	// Graceful hand-over: SIGTERM releases the lock at once.
	leader := oneLeader(t, replicas)
	e.change(t)
	from := make([]int, len(replicas))
	for i, r := range replicas {
		from[i] = len(r.LogLines())
	}
	termAt := time.Now()
	if err := replicas[leader].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	next, took := firstRefreshAfter(t, replicas, leader, from, termAt)
	t.Logf("SIGTERM hand-over: replica %d refreshed %v after the signal", next, took.Round(time.Millisecond))
	if took > failoverBound {
		t.Errorf("SIGTERM hand-over took %v, want <= %v", took, failoverBound)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if code, err := replicas[leader].Wait(ctx); err != nil || code != 0 {
		t.Errorf("leader after SIGTERM: exit code %d, %v; want 0", code, err)
	}
	e.mustSettle(t, failoverBound)
	remaining := append(append([]*daemontest.Proc(nil), replicas[:leader]...), replicas[leader+1:]...)
	oneLeader(t, remaining)

	if n := e.overlappingLogRows(t); n != 0 {
		t.Errorf("%d pairs of refresh_log rows of the view overlap in time", n)
	}
	var rows int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM refresherd.refresh_log WHERE view_name = $1`, view).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	t.Logf("refresh_log: %d rows of the view, none overlapping", rows)
}

// oneLeader waits until exactly one replica reports refresherd_leader 1 and
// the others 0, and returns its index.
func oneLeader(t *testing.T, replicas []*daemontest.Proc) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leader := -1
	err := daemontest.Eventually(ctx, 100*time.Millisecond, func() error {
		leader = -1
		n := 0
		for i, r := range replicas {
			v, err := metric(ctx, r, "refresherd_leader", nil)
			if err != nil {
				return err
			}
			if v == 1 {
				leader = i
				n++
			}
		}
		if n != 1 {
			return fmt.Errorf("%d replicas report refresherd_leader 1", n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("want exactly one leader: %v", err)
	}
	return leader
}

// firstRefreshAfter waits for the first successful refresh logged by a
// replica other than `gone` after its log index from[i], and returns the
// replica and the time from `since` to that line.
func firstRefreshAfter(t *testing.T, replicas []*daemontest.Proc, gone int, from []int, since time.Time) (int, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*failoverBound)
	defer cancel()
	next, at := -1, time.Time{}
	err := daemontest.Eventually(ctx, 20*time.Millisecond, func() error {
		for i, r := range replicas {
			if i == gone {
				continue
			}
			for _, l := range logsAfter(r, from[i]) {
				if !isRefreshed(l) {
					continue
				}
				ts, err := logTime(l)
				if err != nil {
					return err
				}
				next, at = i, ts
				return nil
			}
		}
		return errors.New("no replica has refreshed yet")
	})
	if err != nil {
		t.Fatalf("no replica completed a refresh within %v: %v", 2*failoverBound, err)
	}
	return next, at.Sub(since)
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

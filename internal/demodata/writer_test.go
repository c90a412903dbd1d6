package demodata_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/refresherd/refresherd/internal/demodata"
)

func TestWriterPaced(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := demodata.DefaultSize(2_000)
	pool := loaded(t, ctx, s)

	var mu sync.Mutex
	committed := map[int64]time.Time{}
	w := demodata.NewWriter(pool, s, 7, t.Logf)
	w.OnCommit = func(id int64, at time.Time) {
		mu.Lock()
		defer mu.Unlock()
		committed[id] = at
	}
	runCtx, stop := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer stop()
	t0 := time.Now()
	c, err := w.Run(runCtx, 200, demodata.Mix{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v in %s", c, time.Since(t0))
	if c.Errors != 0 || c.Updates != 0 || c.Deletes != 0 {
		t.Fatalf("counts %+v", c)
	}
	// 200/s for 1.5 s: 300 writes, give or take scheduling.
	if c.Inserts < 240 || c.Inserts > 302 {
		t.Fatalf("inserts %d, want about 300", c.Inserts)
	}
	if int64(len(committed)) != c.Inserts {
		t.Fatalf("OnCommit saw %d inserts, counted %d", len(committed), c.Inserts)
	}
	var n, badJobs int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM app_charge WHERE id > $1`, s.Charges).Scan(&n); err != nil || n != c.Inserts {
		t.Fatalf("new rows %d (%v), counted %d", n, err, c.Inserts)
	}
	for id, at := range committed {
		if id <= int64(s.Charges) || at.Before(t0) {
			t.Fatalf("OnCommit(%d, %v)", id, at)
		}
	}
	// New charges follow Load's shape: a job always belongs to the same user.
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM (SELECT job_id FROM app_charge WHERE job_id IS NOT NULL
		GROUP BY job_id HAVING count(DISTINCT user_id) > 1) x`).Scan(&badJobs); err != nil || badJobs != 0 {
		t.Fatalf("jobs with several users: %d %v", badJobs, err)
	}
}

func TestWriterMixUnpaced(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := demodata.DefaultSize(2_000)
	pool := loaded(t, ctx, s)
	var before, after int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM app_charge`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	w := demodata.NewWriter(pool, s, 1, t.Logf)
	w.Concurrency = 4
	runCtx, stop := context.WithTimeout(ctx, time.Second)
	defer stop()
	c, err := w.Run(runCtx, 0, demodata.Mix{Insert: 2, Update: 1, Delete: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", c)
	if c.Errors != 0 || c.Inserts == 0 || c.Updates == 0 || c.Deletes == 0 || c.Skipped != 0 {
		t.Fatalf("counts %+v", c)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM app_charge`).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if after != before+c.Inserts-c.Deletes {
		t.Fatalf("rows %d -> %d, counts %+v", before, after, c)
	}
	if _, err := w.Run(ctx, 1, demodata.Mix{Insert: -1}); err == nil {
		t.Fatal("negative weight accepted")
	}
}

// Writes fail while the server is down and resume when it is back.
func TestWriterSurvivesRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := newCluster(t)
	s := demodata.DefaultSize(100)
	pool := poolOn(t, ctx, cl.URL("postgres"))
	if err := demodata.CreateSchema(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if err := demodata.Load(ctx, pool, s); err != nil {
		t.Fatal(err)
	}
	// The writer's own signals: each commit, and each failure it logs.
	commits := make(chan struct{}, 1000)
	failures := make(chan struct{}, 1000)
	w := demodata.NewWriter(pool, s, 1, func(format string, args ...any) {
		t.Logf(format, args...)
		select {
		case failures <- struct{}{}:
		default:
		}
	})
	w.OnCommit = func(int64, time.Time) {
		select {
		case commits <- struct{}{}:
		default:
		}
	}
	await := func(what string, ch <-chan struct{}, n int) {
		t.Helper()
		for range n {
			select {
			case <-ch:
			case <-ctx.Done():
				t.Fatalf("waiting for %d %s: %v", n, what, ctx.Err())
			}
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	var c demodata.Counts
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		var err error
		if c, err = w.Run(runCtx, 100, demodata.Mix{}); err != nil {
			t.Error(err)
		}
	}()
	// Also on a failure below: the writer must not log after the test.
	defer func() {
		stop()
		<-finished
	}()
	await("commits before the kill", commits, 25)
	if err := cl.Kill(); err != nil {
		t.Fatal(err)
	}
	await("failed writes while the server is down", failures, 1)
	if err := cl.StartAgain(ctx); err != nil {
		t.Fatal(err)
	}
	// Drop the commits signalled so far: those awaited next happened after
	// the restart.
	for len(commits) > 0 {
		<-commits
	}
	await("commits after the restart", commits, 25)
	stop()
	<-finished
	t.Logf("%+v", c)
	if c.Errors == 0 || c.Inserts < 50 {
		t.Fatalf("counts %+v", c)
	}
}

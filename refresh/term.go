package refresh

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/robfig/cron/v3"
	"go.uber.org/zap"

	"github.com/refresherd/refresherd/config"
)

// term is one leadership term: refreshes run within its context, which
// ends with the term, and commit only through its fence.
type term struct {
	ctx    context.Context
	cancel context.CancelFunc
	fence  Fence
	seq    int
}

// termGate holds the active term (nil: workers may not refresh); its
// changes can be waited for.
type termGate struct {
	mu sync.Mutex
	t  *term
	ch chan struct{} // closed at the next change
}

func newTermGate() termGate { return termGate{ch: make(chan struct{})} }

func (g *termGate) get() (*term, <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.t, g.ch
}

func (g *termGate) set(t *term) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.t == t {
		return
	}
	g.t = t
	close(g.ch)
	g.ch = make(chan struct{})
}

// active reports whether a term is active (refreshes may have started).
func (g *termGate) active() bool {
	t, _ := g.get()
	return t != nil
}

// setLeader starts or ends a leadership term. lockPID is the backend
// holding the leader lock: the term's refreshes commit only while it still
// does.
func (e *Engine) setLeader(leader bool, lockPID uint32) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if leader == e.leader {
		return
	}
	e.leader = leader
	if leader {
		e.m.Leader.Set(1)
		e.termCount++
		ctx, cancel := context.WithCancel(context.Background())
		t := &term{ctx: ctx, cancel: cancel, seq: e.termCount,
			fence: LeaderFence(LeaderLockKey(e.cfg.Leader.Name), lockPID)}
		e.term = t
		e.termWG.Go(func() {
			defer cancel()
			e.lead(t)
		})
		return
	}
	e.m.Leader.Set(0)
	// Deactivate before cancelling, so no worker starts a refresh in a term
	// that is over; cancelling stops the refreshes in flight.
	e.terms.set(nil)
	e.term.cancel()
	e.term = nil
	e.checkHealthSoon() // leadership mostly ends because its connection failed
}

// activate lets workers refresh in t, unless t has ended meanwhile (a
// listener connect racing the end of its term must not revive it).
func (e *Engine) activate(t *term) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.term != t || t.ctx.Err() != nil {
		return false
	}
	e.terms.set(t)
	return true
}

// lead runs one leadership term: schema, known status, then the change
// detectors; the notify detector's first LISTEN marks every view for a
// start-up refresh and opens the term to refreshes.
func (e *Engine) lead(t *term) {
	ctx := t.ctx
	log := e.log.Named("lead")
	for attempt := 1; ; attempt++ {
		err := e.prepare(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		d := e.opts.ConnectBackoff.Delay(attempt)
		if attempt == 1 {
			log.Warn("cannot prepare the database; retrying", zap.Error(err), zap.Duration("retry_in", d))
		}
		if !sleep(ctx, d) {
			return
		}
	}
	for _, w := range e.snapshot() {
		w.mu.Lock()
		w.ready, w.setupAt, w.setupTry = false, time.Time{}, 0
		w.mu.Unlock()
	}
	e.runDetectors(t)
	e.setListener(false)
}

// prepare readies the database for a term: the daemon's schema, the change
// triggers, and each view's last recorded status; bounded as a whole.
func (e *Engine) prepare(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, termPrepareTimeout)
	defer cancel()
	if err := EnsureSchema(pctx, e.pool); err != nil {
		return err
	}
	e.ensureTriggers(pctx, e.log.Named("lead"))
	return e.loadStatus(pctx)
}

// startTerm marks views for their first refresh of a leadership term. With
// change detection, changes made while no one watched are unknown, so the
// view is caught up; without, only when its data is older than its schedule
// period (or of unknown age).
func (e *Engine) startTerm(t *term) {
	now := e.opts.Now()
	trigger := TriggerStartup
	if t.seq > 1 {
		trigger = TriggerCatchup
	}
	for _, w := range e.snapshot() {
		w.mu.Lock()
		w.sched.newTerm()
		since := w.asOf
		if since.IsZero() {
			since = e.started
		}
		switch {
		case w.sched.settings.ChangeDetection != config.DetectNone:
			w.sched.p.catchup(since, now, trigger)
		case w.asOf.IsZero() || olderThanPeriod(w.view.ScheduleSpec, w.asOf, now):
			w.sched.p.catchup(since, now, trigger)
		}
		w.mu.Unlock()
		w.poke()
	}
}

// olderThanPeriod reports whether data as of asOf has missed a scheduled
// refresh: it is older than one period of the schedule.
func olderThanPeriod(spec cron.Schedule, asOf, now time.Time) bool {
	if spec == nil {
		return false
	}
	next := spec.Next(now)
	return now.Sub(asOf) > spec.Next(next).Sub(next)
}

// loadStatus reads each view's last recorded refresh, so staleness and
// metrics are right from the first scrape of a new term. It only ever
// raises a view's as-of: a refresh may have committed after the read.
func (e *Engine) loadStatus(ctx context.Context) error {
	rows, err := e.pool.Query(ctx, `SELECT view_name, data_as_of, last_success_at, coalesce(last_result, ''), coalesce(last_error, '')
		FROM refresherd.view_status`)
	if err != nil {
		return fmt.Errorf("read view status: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, result, lastErr string
		var asOf, success *time.Time
		if err := rows.Scan(&name, &asOf, &success, &result, &lastErr); err != nil {
			return fmt.Errorf("read view status: %w", err)
		}
		e.mu.Lock()
		w := e.byName[name]
		e.mu.Unlock()
		if w == nil {
			continue
		}
		var a, s time.Time
		if asOf != nil {
			a = *asOf
		}
		if success != nil {
			s = *success
		}
		w.setAsOf(a, s)
		w.mu.Lock()
		if w.lastResult == "" {
			w.lastResult, w.lastError = Result(result), lastErr
		}
		w.mu.Unlock()
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read view status: %w", err)
	}
	return nil
}

package refresh

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/metrics"
)

// worker owns one view: its pending changes, its schedule and its refreshes.
// Running refreshes from this one goroutine makes them single-flight per
// view by construction; events only update `p` under mu and poke `wake`.
type worker struct {
	e    *Engine
	view *config.View
	name string
	log  *zap.Logger
	// wake has a buffer of one and is sent to without blocking: any burst of
	// events becomes one wake-up.
	wake chan struct{}
	// cancel stops the worker (set when started); done closes when it has.
	cancel context.CancelFunc
	done   chan struct{}

	mu         sync.Mutex
	p          pending
	ready      bool // set-up succeeded in this leadership term
	setupErr   error
	defErr     error                  // a definition change that could not be applied
	inferred   []config.QualifiedName // undeclared upstream views found in pg_depend
	setupAt    time.Time              // next set-up attempt
	setupTries int
	inProgress bool
	failures   int
	retryAt    time.Time
	nextTick   time.Time
	// Last known results, for /status and staleness at start-up.
	asOf        time.Time
	lastSuccess time.Time
	lastResult  string
	lastError   string
	lastTrigger string
	lastDur     time.Duration
}

func newWorker(e *Engine, v *config.View) *worker {
	return &worker{
		e:    e,
		view: v,
		name: v.Name.String(),
		log:  e.log.With(zap.String("view", v.Name.String())),
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
}

func (w *worker) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// update applies fn to the state under the lock and wakes the worker.
func (w *worker) update(fn func(p *pending)) {
	w.mu.Lock()
	fn(&w.p)
	w.mu.Unlock()
	w.poke()
}

// run is the worker loop: wait for the engine to be active (leader with
// schema in place), set the view up, then refresh when the state or the
// schedule says so. refreshCtx outlives ctx by the shutdown grace period so
// a running refresh can finish.
func (w *worker) run(ctx, refreshCtx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	w.mu.Lock()
	if w.view.ScheduleSpec != nil {
		w.nextTick = w.view.ScheduleSpec.Next(time.Now())
	}
	w.mu.Unlock()
	for ctx.Err() == nil {
		active, changed := w.e.active.get()
		now := time.Now()
		var wakeAt time.Time
		if active {
			wakeAt = w.step(ctx, refreshCtx, now)
		} else {
			w.skipTicks(now)
		}
		if wakeAt.IsZero() || !active {
			wakeAt = now.Add(time.Hour)
		}
		if !wakeAt.After(now) {
			continue
		}
		timer.Reset(wakeAt.Sub(now))
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-w.wake:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// skipTicks advances the schedule while not leading.
func (w *worker) skipTicks(now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.view.ScheduleSpec != nil && !w.nextTick.After(now) {
		w.nextTick = w.view.ScheduleSpec.Next(now)
	}
}

// step does whatever is due now and returns when to look again.
func (w *worker) step(ctx, refreshCtx context.Context, now time.Time) time.Time {
	w.mu.Lock()
	ready, setupAt := w.ready, w.setupAt
	w.mu.Unlock()
	if !ready {
		if now.Before(setupAt) {
			return setupAt
		}
		if w.upstreamNotReady() {
			// Its query reads them: create them first.
			return now.Add(200 * time.Millisecond)
		}
		if !w.setup(ctx) {
			w.mu.Lock()
			defer w.mu.Unlock()
			return w.setupAt
		}
	}

	w.mu.Lock()
	pl := w.p.nextRefresh(w.view.Settings, now, w.retryAt)
	tick := w.view.ScheduleSpec != nil && !w.nextTick.After(now)
	var skipped bool
	if tick {
		for !w.nextTick.After(now) {
			w.nextTick = w.view.ScheduleSpec.Next(now)
		}
		if w.p.scheduledTickRefreshes(w.view.Settings) {
			if pl.at.IsZero() || pl.at.After(now) {
				pl = plan{at: now, trigger: metrics.TriggerSchedule}
			}
		} else {
			skipped = true
		}
	}
	nextTick := w.nextTick
	w.mu.Unlock()

	if skipped {
		w.e.m.Refreshes.WithLabelValues(w.name, metrics.TriggerSchedule, metrics.ResultSkipped).Inc()
		w.log.Debug("scheduled refresh skipped: no change since the last refresh")
	}
	if !pl.at.IsZero() && !pl.at.After(now) {
		if w.waitingForUpstream() {
			// The upstream's refresh pokes us; the timer is a backstop.
			return now.Add(500 * time.Millisecond)
		}
		w.refresh(ctx, refreshCtx, pl.trigger)
		return time.Now() // look again: more may have arrived meanwhile
	}
	return earliest(pl.at, nextTick)
}

func earliest(a, b time.Time) time.Time {
	switch {
	case a.IsZero():
		return b
	case b.IsZero():
		return a
	case a.Before(b):
		return a
	}
	return b
}

// setup makes the view exist as declared; on failure it schedules a retry.
// A broken view is reported (metric, status, log) and retried, never fatal.
func (w *worker) setup(ctx context.Context) bool {
	created, err := EnsureView(ctx, w.e.pool, w.view)
	if err == nil && !created {
		w.applyDefinition(ctx)
	}
	if err == nil {
		w.checkDependencies(ctx)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		w.setupTries++
		d := w.e.opts.SetupBackoff.Delay(w.setupTries)
		w.setupAt = time.Now().Add(d)
		if w.setupErr == nil || w.setupErr.Error() != err.Error() {
			w.log.Error("view set-up failed; will retry", zap.Error(err), zap.Duration("retry_in", d))
		}
		w.setupErr = err
		w.e.m.ViewReady.WithLabelValues(w.name).Set(0)
		return false
	}
	if w.setupErr != nil {
		w.log.Info("view set-up succeeded after failures")
	}
	w.ready, w.setupErr, w.setupTries = true, nil, 0
	if created {
		w.log.Info("created materialized view (WITH NO DATA); populating it")
		w.asOf = time.Time{}
		w.p.catchup(time.Now(), time.Now(), metrics.TriggerStartup)
	}
	w.e.m.ViewReady.WithLabelValues(w.name).Set(1)
	return true
}

// applyDefinition rebuilds the view beside the old one when its configured
// definition differs from the one it was built with. A failed rebuild keeps
// the old definition refreshing and is reported.
func (w *worker) applyDefinition(ctx context.Context) {
	change, err := CheckDefinition(ctx, w.e.pool, w.view)
	if err == nil && change == DefinitionUnknown {
		w.log.Info("adopted an existing materialized view: its definition is assumed to match the configuration")
	}
	if err == nil && change == DefinitionChanged {
		w.log.Info("view definition changed: rebuilding it beside the old one")
		start := time.Now()
		if err = Swap(ctx, w.e.pool, w.view, w.e.opts.Identity, nil); err == nil {
			w.log.Info("view rebuilt with the new definition and swapped in", zap.Duration("duration", time.Since(start)))
			w.mu.Lock()
			w.asOf = time.Time{} // reloaded from the status row below
			w.mu.Unlock()
			_ = w.e.loadStatus(ctx)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.defErr = err
	if err != nil {
		w.log.Error("view definition not applied; the old definition stays in use", zap.Error(err))
	}
}

// refresh runs one refresh now (waiting for a concurrency slot first) and
// folds its result into the state.
func (w *worker) refresh(ctx, refreshCtx context.Context, trigger string) {
	w.e.mu.Lock()
	sem := w.e.sem // a reload may replace it; release to the one we took
	w.e.mu.Unlock()
	select {
	case sem <- struct{}{}:
	case <-ctx.Done():
		return
	}
	defer func() { <-sem }()

	// Take what is owed now: changes seen from here on may not be in this
	// refresh's snapshot and cause one follow-up.
	w.mu.Lock()
	taken := w.p
	w.p = pending{}
	w.inProgress = true
	w.mu.Unlock()

	out, err := w.e.refresher.Refresh(refreshCtx, w.view, Trigger(trigger), nil)
	canceled := err != nil && isCanceled(refreshCtx, err)
	if err != nil && !canceled {
		if rerr := w.e.refresher.RecordFailure(refreshCtx, w.view, Trigger(trigger), out.Duration, err); rerr != nil {
			w.log.Warn("could not record failed refresh", zap.Error(rerr))
		}
	}

	w.e.m.Duration.WithLabelValues(w.name).Observe(out.Duration.Seconds())
	w.e.m.Refreshes.WithLabelValues(w.name, trigger, resultOf(err)).Inc()

	if err == nil {
		// Deferred before the unlock below, so it runs after it.
		defer w.afterRefresh(refreshCtx, taken, out)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.inProgress = false
	w.lastTrigger = trigger
	w.lastDur = out.Duration
	fields := []zap.Field{zap.String("trigger", trigger), zap.Duration("duration", out.Duration)}
	if err != nil {
		w.p.merge(taken)
		w.p.manual = false // a manual request is answered by this attempt
		w.failures++
		w.lastResult, w.lastError = metrics.ResultError, errorText(err)
		if canceled {
			w.log.Warn("refresh cancelled; the view keeps its previous data", append(fields, zap.Error(err))...)
			return
		}
		d := w.e.opts.RetryBackoff.Delay(w.failures)
		w.retryAt = time.Now().Add(d)
		w.log.Error("refresh failed; the view keeps its previous data",
			append(fields, zap.String("result", metrics.ResultError), zap.Error(err), zap.Duration("retry_in", d))...)
		return
	}
	w.failures, w.retryAt = 0, time.Time{}
	w.asOf, w.lastSuccess = out.AsOf, out.FinishedAt
	w.lastResult, w.lastError = metrics.ResultSuccess, ""
	w.e.m.LastSuccess.WithLabelValues(w.name).Set(float64(out.FinishedAt.UnixNano()) / 1e9)
	w.e.m.DataAsOf.WithLabelValues(w.name).Set(float64(out.AsOf.UnixNano()) / 1e9)
	w.log.Info("refreshed", append(fields,
		zap.String("result", metrics.ResultSuccess),
		zap.Bool("concurrently", out.Concurrently),
		zap.Int64("changes", taken.count),
		zap.Time("data_as_of", out.AsOf))...)
}

// afterRefresh runs outside the worker's lock: dependents learn of the new
// data, and a concurrent refresh's dead rows are vacuumed when they pile up
// (VACUUM cannot run inside the refresh's transaction).
func (w *worker) afterRefresh(ctx context.Context, taken pending, out Outcome) {
	w.refreshedUpstream(taken, out.AsOf)
	if !out.Concurrently || w.view.VacuumThreshold <= 0 {
		return
	}
	dead, vacuumed, err := w.e.refresher.MaybeVacuum(ctx, w.view)
	switch {
	case err != nil:
		w.log.Warn("vacuum after refresh failed", zap.Error(err))
	case vacuumed:
		w.e.m.Vacuums.WithLabelValues(w.name).Inc()
		w.log.Info("vacuumed the view", zap.Int64("dead_rows", dead))
	}
}

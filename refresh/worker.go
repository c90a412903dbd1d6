package refresh

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/refresherd/refresherd/config"
)

// recorder is what a worker records in metrics (metrics.ViewRecorder).
type recorder interface {
	Refresh(trigger, result string, d time.Duration)
	Skipped(trigger string)
	Success(asOf, finished time.Time)
	Ready(ok bool)
	Vacuumed()
	Rebuilt(reason string)
	Verified(mismatched int64)
	Target(lag time.Duration, met bool)
}

// dependencies is what a worker knows of the other views: the state of the
// managed views it reads, and whom to tell when its data changed.
type dependencies interface {
	// upstreamStates describes the managed views among names.
	upstreamStates(names []config.QualifiedName, now time.Time) []upstreamState
	// upstreamsReady reports whether the managed views among names are set
	// up in this term (a view's query reads them: create them first).
	upstreamsReady(names []config.QualifiedName) bool
	// refreshed marks the views reading view dirty: they miss what it now
	// has, dated at.
	refreshed(view config.QualifiedName, at, now time.Time)
	// inferUpstreams lists the managed views v reads without declaring them.
	inferUpstreams(ctx context.Context, v *config.View) ([]config.QualifiedName, error)
	// detectionChanged says that a view's change detection changed (auto
	// chose incremental): the source index and triggers follow.
	detectionChanged()
}

// worker owns one view: its scheduling state and its refreshes. Running
// refreshes from this one goroutine makes them single-flight per view by
// construction; events only update the state under mu and poke wake. It
// knows its collaborators, not the engine: the strategy that does the work,
// a metrics recorder, the dependency view, the term gate and the
// concurrency slots.
type worker struct {
	view     *config.View
	name     string
	log      *zap.Logger
	now      func() time.Time
	started  time.Time // the engine's start: the age of data of unknown age
	strategy Strategy
	rec      recorder
	deps     dependencies
	terms    *termGate
	slots    func() chan struct{} // the engine's current concurrency slots
	setupBo  Backoff
	// wake has a buffer of one and is sent to without blocking: any burst of
	// events becomes one wake-up.
	wake chan struct{}
	// cancel stops the worker (set when started); done closes when it has.
	cancel context.CancelFunc
	done   chan struct{}
	// prev is the worker this one replaces (reload): it runs only after
	// prev has finished, and takes over its state first.
	prev *worker

	mu         sync.Mutex
	sched      schedule
	successor  *worker // set when replaced: late events go there
	removed    bool    // no longer configured: its series go when it ends
	ready      bool    // set-up succeeded in this leadership term
	setupErr   error
	defErr     error                  // a definition change that could not be applied
	inferred   []config.QualifiedName // undeclared upstream views found in pg_depend
	setupAt    time.Time              // next set-up attempt
	setupTry   int
	refreshing bool
	// refreshes counts refresh starts: a change-log poll that overlapped one
	// is stale (the refresh reports the log after its commit instead).
	refreshes uint64
	// Last known results, for /status and staleness at start-up.
	asOf        time.Time
	lastSuccess time.Time
	lastResult  Result
	lastError   string
	lastTrigger Trigger
	lastDur     time.Duration
	// strategyNote is why auto chose full (logged once per change).
	strategyNote string
	// targetMissed: the freshness target is out of reach (logged and
	// exported once per change).
	targetMissed bool
}

// detection is the change detection the view uses now: configured, or
// capture once it runs incrementally.
func (w *worker) detection() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sched.settings.ChangeDetection
}

// noteTarget reports a change of whether the target is met. Caller holds
// w.mu.
func (w *worker) noteTarget(s targetState) {
	if s == targetNone || (s == targetMissed) == w.targetMissed {
		return
	}
	w.targetMissed = s == targetMissed
	w.rec.Target(w.view.TargetLag, !w.targetMissed)
	if w.targetMissed {
		w.log.Warn("freshness target out of reach: refreshing back to back within max_load",
			zap.Duration("target_lag", w.view.TargetLag), zap.Duration("refresh_estimate", w.sched.estimate),
			zap.Float64("max_load", w.view.MaxLoad))
		return
	}
	w.log.Info("freshness target met again", zap.Duration("target_lag", w.view.TargetLag), zap.Duration("refresh_estimate", w.sched.estimate))
}

func (w *worker) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// update applies fn to the pending state under the lock and wakes the
// worker. A replaced worker passes it on to its successor, so an event that
// raced with a reload is not lost.
func (w *worker) update(fn func(p *pending)) {
	w.mu.Lock()
	if s := w.successor; s != nil {
		w.mu.Unlock()
		s.update(fn)
		return
	}
	fn(&w.sched.p)
	w.mu.Unlock()
	w.poke()
}

// run is the worker loop: wait for a leadership term, set the view up, then
// do what the policy says. refreshCtx outlives ctx by the shutdown grace
// period so a running refresh can finish.
func (w *worker) run(ctx, refreshCtx context.Context) {
	if w.prev != nil {
		// Unconditionally: prev was cancelled when replaced and ends after
		// its current refresh; what it owes must pass on even if w is
		// itself replaced (or stopped) before it ran.
		<-w.prev.done
		w.inherit(w.prev)
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for ctx.Err() == nil {
		t, changed := w.terms.get()
		now := w.now()
		var next time.Time
		if t != nil {
			next = w.step(ctx, refreshCtx, t, now)
		} else {
			w.mu.Lock()
			w.sched.idle(now)
			w.mu.Unlock()
		}
		if next.IsZero() {
			next = now.Add(time.Hour)
		}
		if !next.After(now) {
			continue
		}
		timer.Reset(next.Sub(now))
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

// step does whatever is due now in term t and returns when to look again.
func (w *worker) step(ctx, refreshCtx context.Context, t *term, now time.Time) time.Time {
	w.mu.Lock()
	ready, setupAt := w.ready, w.setupAt
	w.mu.Unlock()
	if !ready {
		if now.Before(setupAt) {
			return setupAt
		}
		if !w.deps.upstreamsReady(w.view.DependsOn) {
			return now.Add(upstreamSetupWait)
		}
		if !w.setup(ctx, t) {
			w.mu.Lock()
			defer w.mu.Unlock()
			return w.setupAt
		}
	}
	ups := w.deps.upstreamStates(w.upstreams(), now)
	w.mu.Lock()
	d := w.sched.decide(now, ups)
	w.noteTarget(d.target)
	w.mu.Unlock()
	if d.skippedTick {
		w.rec.Skipped(string(TriggerSchedule))
		w.log.Debug("scheduled refresh skipped: no change since the last refresh")
	}
	if !d.refresh {
		return d.next
	}
	w.refresh(ctx, refreshCtx, t, d.trigger)
	return w.now() // look again: more may have arrived meanwhile
}

// termContext returns a context that ends with parent or with the term,
// whichever comes first.
func termContext(parent context.Context, t *term) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	stop := context.AfterFunc(t.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

// setup makes the view exist as declared; on failure it schedules a retry.
// A broken view is reported (metric, status, log) and retried, never fatal.
func (w *worker) setup(ctx context.Context, t *term) bool {
	sctx, cancel := termContext(ctx, t)
	defer cancel()
	res, err := w.strategy.Setup(sctx, w.view, t.fence)
	if err == nil {
		w.checkDependencies(sctx)
	}
	now := w.now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		if sctx.Err() != nil {
			return false
		}
		w.setupTry++
		d := w.setupBo.Delay(w.setupTry)
		w.setupAt = now.Add(d)
		if w.setupErr == nil || w.setupErr.Error() != err.Error() {
			w.log.Error("view set-up failed; will retry", zap.Error(err), zap.Duration("retry_in", d))
		}
		w.setupErr = err
		w.rec.Ready(false)
		return false
	}
	if w.setupErr != nil {
		w.log.Info("view set-up succeeded after failures")
	}
	if name, _ := w.strategyName(); name != "" {
		w.log.Info("view set up", zap.String("strategy", name), zap.String("change_detection", w.sched.settings.ChangeDetection))
	}
	w.ready, w.setupErr, w.setupTry = true, nil, 0
	if vs, ok := w.strategy.(*viewStrategy); ok {
		name, reason := vs.describe()
		mode := w.view.ChangeDetection
		if name == config.StrategyIncremental {
			mode = config.DetectCapture
		}
		if mode != w.sched.settings.ChangeDetection {
			w.sched.settings.ChangeDetection = mode
			defer w.deps.detectionChanged() // after w.mu is released
		}
		if reason != "" && w.strategyNote != reason {
			w.log.Info("strategy auto: using full; the query does not qualify for incremental", zap.String("reason", reason))
		}
		w.strategyNote = reason
	}
	switch {
	case res.Created:
		w.log.Info("created the view empty; populating it")
		w.asOf = time.Time{}
		w.sched.p.catchup(now, now, TriggerStartup)
	case res.Adopted:
		w.log.Info("adopted an existing materialized view: its definition is assumed to match the configuration")
	case res.RebuildDue:
		w.log.Info("the summary does not match its definition or strategy; rebuilding it")
		w.sched.p.catchup(now, now, TriggerCatchup)
	case res.Rebuilt:
		w.log.Info("view rebuilt with the new definition and swapped in", zap.Time("data_as_of", res.AsOf))
		// The rebuilt data is as of the build, whatever the old as-of was.
		w.asOf, w.lastSuccess = res.AsOf, now
		w.rec.Success(res.AsOf, now)
	}
	if len(res.RemovedCapture) > 0 {
		w.log.Info("removed incremental capture the view no longer uses (triggers and key logs)", zap.Strings("logs", res.RemovedCapture))
	}
	if res.CleanupErr != nil {
		w.log.Warn("could not remove incremental capture the view no longer uses; the next set-up tries again", zap.Error(res.CleanupErr))
	}
	if res.DefinitionErr != nil && (w.defErr == nil || w.defErr.Error() != res.DefinitionErr.Error()) {
		w.log.Error("view definition not applied; the old definition stays in use", zap.Error(res.DefinitionErr))
	}
	w.defErr = res.DefinitionErr
	w.rec.Ready(true)
	return true
}

// refresh runs one refresh now (waiting for a concurrency slot first) and
// folds its result into the state. It runs within the term: when the term
// ends, the refresh is cancelled (and its commit is fenced anyway).
func (w *worker) refresh(ctx, refreshCtx context.Context, t *term, trigger Trigger) {
	sem := w.slots() // a reload may replace it; release to the one we took
	select {
	case sem <- struct{}{}:
	case <-ctx.Done():
		return
	case <-t.ctx.Done():
		return
	}
	defer func() { <-sem }()
	rctx, cancel := termContext(refreshCtx, t)
	defer cancel()

	w.mu.Lock()
	taken := w.sched.begin()
	w.refreshing = true
	w.refreshes++
	w.mu.Unlock()

	out, err := w.strategy.Refresh(rctx, w.view, trigger, t.fence)
	deposed := errors.Is(err, ErrNotLeader) || (err != nil && t.ctx.Err() != nil)
	canceled := err != nil && (deposed || isCanceled(rctx, err))
	if err != nil && !canceled {
		if rerr := w.strategy.RecordFailure(refreshCtx, w.view, trigger, out.Duration, err); rerr != nil {
			w.log.Warn("could not record failed refresh", zap.Error(rerr))
		}
	}
	result := ResultSuccess
	if err != nil {
		result = ResultError
	}
	w.rec.Refresh(string(trigger), string(result), out.Duration)

	now := w.now()
	w.mu.Lock()
	w.refreshing = false
	w.lastTrigger, w.lastDur = trigger, out.Duration
	w.sched.ran(now, out.Duration)
	retryIn := w.sched.finished(now, taken, err != nil, canceled)
	fields := []zap.Field{zap.String("trigger", string(trigger)), zap.Duration("duration", out.Duration)}
	if err != nil {
		w.lastResult, w.lastError = ResultError, errorText(err)
		w.mu.Unlock()
		switch {
		case deposed:
			w.log.Warn("refresh stopped: this replica no longer leads; the view keeps its previous data", append(fields, zap.Error(err))...)
		case canceled:
			w.log.Warn("refresh cancelled; the view keeps its previous data", append(fields, zap.Error(err))...)
		default:
			w.log.Error("refresh failed; the view keeps its previous data",
				append(fields, zap.String("result", string(ResultError)), zap.Error(err), zap.Duration("retry_in", retryIn))...)
		}
		return
	}
	if out.AsOf.After(w.asOf) {
		w.asOf = out.AsOf
	}
	if out.Backlog != nil {
		// What is owed now was committed after the round's snapshot, so
		// seen no earlier than the round's start: the debounce counts from
		// there, and under a steady stream rounds run back to back instead
		// of a debounce apart (at 10M charges and 500 commits/s, rounds of
		// ~110 ms were ~90 ms apart).
		w.sched.p.settle(*out.Backlog, now, now.Add(-out.Duration))
	}
	w.lastSuccess = out.FinishedAt
	w.lastResult, w.lastError = ResultSuccess, ""
	w.mu.Unlock()
	w.rec.Success(out.AsOf, out.FinishedAt)
	if out.Rebuilt != "" {
		w.rec.Rebuilt(out.Rebuilt)
		fields = append(fields, zap.String("rebuilt", out.Rebuilt))
	}
	if out.Touched > 0 {
		fields = append(fields, zap.Int64("groups", out.Touched))
	}
	w.log.Info("refreshed", append(fields,
		zap.String("result", string(ResultSuccess)),
		zap.Bool("concurrently", out.Concurrently),
		zap.Int64("changes", taken.count),
		zap.Time("data_as_of", out.AsOf))...)
	w.afterRefresh(refreshCtx, taken, out)
}

// afterRefresh runs outside the worker's lock: dependents learn of the new
// data, and the strategy does its upkeep.
func (w *worker) afterRefresh(ctx context.Context, taken pending, out Outcome) {
	at := out.AsOf
	if taken.dirty && taken.oldest.Before(at) {
		at = taken.oldest
	}
	w.deps.refreshed(w.view.Name, at, w.now())
	mctx, cancel := context.WithTimeout(ctx, w.view.StatementTimeout)
	defer cancel()
	m, err := w.strategy.Maintain(mctx, w.view, out)
	switch {
	case err != nil:
		w.log.Warn("upkeep after refresh failed", zap.Error(err))
	case m.Vacuumed:
		w.rec.Vacuumed()
		w.log.Info("vacuumed the view", zap.Int64("dead_rows", m.DeadRows))
	}
}

// checkDependencies infers undeclared dependencies on other managed views
// (declaring them is better: it also orders the first refresh), logging
// each once.
func (w *worker) checkDependencies(ctx context.Context) {
	inferred, err := w.deps.inferUpstreams(ctx, w.view)
	if err != nil {
		w.log.Warn("could not check dependencies", zap.Error(err))
		return
	}
	w.mu.Lock()
	old := w.inferred
	w.inferred = inferred
	w.mu.Unlock()
	if len(inferred) > 0 && !slices.Equal(old, inferred) {
		names := make([]string, len(inferred))
		for i, r := range inferred {
			names[i] = r.String()
		}
		w.log.Warn("view reads managed views it does not declare in depends_on; treating them as dependencies", zap.Strings("inferred", names))
	}
}

// upstreams are the managed views w reads: declared and inferred.
func (w *worker) upstreams() []config.QualifiedName {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append(slices.Clone(w.view.DependsOn), w.inferred...)
}

// upstreamState is what w's dependents need to know of it.
func (w *worker) upstreamState(now time.Time) upstreamState {
	w.mu.Lock()
	defer w.mu.Unlock()
	us := upstreamState{refreshing: w.refreshing}
	if w.ready {
		us.due = w.sched.planned(now)
	}
	return us
}

// inherit takes over a replaced worker's state (reload). From here on,
// events that still reach old are passed on to w.
func (w *worker) inherit(old *worker) {
	old.mu.Lock()
	owed := old.sched.begin()
	old.successor = w
	failures := old.sched.failures
	asOf, lastSuccess := old.asOf, old.lastSuccess
	result, lastErr, trigger, dur := old.lastResult, old.lastError, old.lastTrigger, old.lastDur
	old.mu.Unlock()
	w.mu.Lock()
	w.sched.p.merge(owed)
	w.sched.failures = failures
	if asOf.After(w.asOf) {
		w.asOf = asOf
	}
	if lastSuccess.After(w.lastSuccess) {
		w.lastSuccess = lastSuccess
	}
	w.lastResult, w.lastError, w.lastTrigger, w.lastDur = result, lastErr, trigger, dur
	w.mu.Unlock()
	w.poke()
}

// staleness is the age of the oldest change not in the view. Without change
// detection any change may be missing, so it is the age of the data. A
// follower tracks no changes and reports 0: the leader's figure is the one
// that counts (alert on the maximum over replicas). Caller holds w.mu.
func (w *worker) staleness(now time.Time, leader bool) time.Duration {
	if !leader {
		return 0
	}
	if w.sched.settings.ChangeDetection == config.DetectNone {
		since := w.asOf
		if since.IsZero() {
			since = w.started
		}
		return max(now.Sub(since), 0)
	}
	return w.sched.p.staleness(now)
}

// setAsOf raises the known data time and last success from the status
// table; it never lowers them (a read may be older than a refresh that
// committed meanwhile).
func (w *worker) setAsOf(asOf, success time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if asOf.After(w.asOf) {
		w.asOf = asOf
	}
	if success.After(w.lastSuccess) {
		w.lastSuccess = success
	}
	w.rec.Success(w.asOf, w.lastSuccess)
}

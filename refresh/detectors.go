package refresh

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/refresh/incremental"
)

// idleRecheck is how often a poller whose mode no view uses looks again (a
// reload may start using it).
const idleRecheck = time.Second

// changeDetector is one change_detection mode at work during a leadership
// term: it watches the sources of the views that use it and tells a
// changeSink what changed, what it may have missed and when it is blind.
// notify is pushed to us (detect_notify.go); changelog and stats are polled
// (a poller around a detector).
type changeDetector interface {
	mode() string
	run(ctx context.Context)
}

// runDetectors runs every change detector for term t until it ends. Each
// reads the current views as it goes, so it follows a reload, and idles
// while no view uses its mode; notify also carries the term's start (see
// notifyDetector) and manual requests from other replicas.
func (e *Engine) runDetectors(t *term) {
	logFor := func(mode string) *zap.Logger {
		return e.log.Named("detector").With(zap.String("change_detection", mode))
	}
	detectors := []changeDetector{e.notifyDetector(t), &captureDetector{e: e, log: logFor(config.DetectCapture)}}
	for _, d := range []detector{
		newChangelogDetector(e.pool, logFor(config.DetectChangelog)),
		newStatsDetector(e.pool),
	} {
		detectors = append(detectors, e.newPoller(d, logFor(d.mode())))
	}
	var wg sync.WaitGroup
	for _, d := range detectors {
		wg.Go(func() { d.run(t.ctx) })
	}
	wg.Go(func() { e.runVerifier(t.ctx) })
	wg.Wait()
}

// newPoller runs the polling detector d over the views using its mode.
func (e *Engine) newPoller(d detector, log *zap.Logger) *poller {
	return &poller{
		d:       d,
		sink:    e.pollerSink(d.mode()),
		plan:    func() watchPlan { return e.watchPlan(d.mode()) },
		active:  e.terms.active,
		log:     log,
		backoff: e.opts.ConnectBackoff,
		polled:  func() { e.countPoll(d.mode()) },
	}
}

// countPoll counts a successful poll of mode.
func (e *Engine) countPoll(mode string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.polls[mode]++
}

// pollCount is how many successful polls mode has made (tests wait on it:
// a poll that starts after a write has seen it).
func (e *Engine) pollCount(mode string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.polls[mode]
}

// watchPlan is what one polling detector watches now.
type watchPlan struct {
	sources []config.QualifiedName // sorted, distinct
	every   time.Duration          // the shortest poll_interval among the views
}

// watchPlan collects the sources and poll interval of the views using mode.
func (e *Engine) watchPlan(mode string) watchPlan {
	var wp watchPlan
	for _, w := range e.snapshot() {
		if w.detection() != mode {
			continue
		}
		wp.sources = append(wp.sources, w.view.Sources...)
		if iv := w.view.PollInterval; iv > 0 && (wp.every == 0 || iv < wp.every) {
			wp.every = iv
		}
	}
	if wp.every == 0 {
		wp.every = config.DefaultPollInterval
	}
	slices.SortFunc(wp.sources, compareNames)
	wp.sources = slices.Compact(wp.sources)
	return wp
}

func compareNames(a, b config.QualifiedName) int {
	return cmp.Or(cmp.Compare(a.Schema, b.Schema), cmp.Compare(a.Name, b.Name))
}

// changeSink receives what the detectors see: the engine, or a recorder in
// tests.
type changeSink interface {
	SourceChanged(mode string, src config.QualifiedName, at, seen time.Time) bool
	ChangesMissed(mode string, since time.Time)
	ChangesUnseen(mode string, since time.Time)
}

// pollRound describes one poll to a detector.
type pollRound struct {
	start time.Time // daemon clock just before the poll's statement
	// prev is the start of the previous successful poll of this watch; zero
	// for the first one, which establishes what the detector compares with.
	prev    time.Time
	sources []config.QualifiedName
}

// pollResult is what one poll found beyond the changes it reported.
type pollResult struct {
	// lost: changes before this poll may have gone unrecorded (the
	// detector's sentinel vanished with a crash, or this first poll took a
	// baseline that hides what came before).
	lost bool
}

// detector is one polling change detection mode.
type detector interface {
	mode() string
	// poll looks once, reports changes to sink and returns what else it
	// found. Changes it reported before an error stay reported.
	poll(ctx context.Context, r pollRound, sink changeSink) (pollResult, error)
	// blindSince dates the start of a blind spot that began after the
	// successful poll that started at lastGood: no later than the commit of
	// any change the detector may not have seen.
	blindSince(lastGood time.Time) time.Time
	// reset forgets what the detector knew (its mode went unused).
	reset()
	// timeout bounds one poll: a poll stuck behind a lock or on a dead
	// connection counts as failed, so the views say "blind" instead of
	// silently waiting.
	timeout() time.Duration
}

// poller runs one detector on the leader: polls at the plan's interval,
// turns errors into a blind spot and a catch-up, and keeps the first poll's
// baseline honest.
type poller struct {
	d       detector
	sink    changeSink
	plan    func() watchPlan
	active  func() bool // refreshes of this term may have started
	log     *zap.Logger
	backoff Backoff
	// polled, when set, is told of every successful poll (tests wait on it).
	polled func()
	// wake, when set, is the doorbell: a receive from it starts the next
	// poll before it is due, but no sooner than min(every, ringGap) after
	// the start of a poll that a ring started too, when it came within
	// streamWindow of that poll's end (see next).
	wake         <-chan struct{}
	ringGap      time.Duration
	streamWindow time.Duration
}

func (p *poller) mode() string { return p.d.mode() }

func (p *poller) run(ctx context.Context) {
	mode := p.d.mode()
	// watchSince is when this watch began (term start, or when a reload
	// started using the mode); lastGood the start of the last successful
	// poll, zero before the first; blindFrom, when set, the start of the
	// blind spot declared to the sink (ChangesUnseen) and not yet ended.
	watchSince := time.Now()
	var lastGood, blindFrom time.Time
	failures := 0
	rung := false // the last poll answered the doorbell
	for ctx.Err() == nil {
		wp := p.plan()
		if len(wp.sources) == 0 {
			// No view left to catch up; a returning view starts over.
			p.d.reset()
			lastGood, blindFrom, failures = time.Time{}, time.Time{}, 0
			if !sleep(ctx, idleRecheck) {
				return
			}
			watchSince = time.Now()
			continue
		}
		start := time.Now()
		pctx, cancel := context.WithTimeout(ctx, p.d.timeout())
		res, err := p.d.poll(pctx, pollRound{start: start, prev: lastGood, sources: wp.sources}, p.sink)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			if failures == 1 {
				p.log.Warn("change detection poll failed; views using it are blind until it recovers", zap.Error(err))
			}
			// Before the first good poll of a term, while no refresh may run
			// yet, the term's start-up catch-up covers the gap: nothing to
			// declare. Otherwise staleness grows from the last poll that saw
			// everything, and a catch-up follows the recovery.
			if blindFrom.IsZero() && (!lastGood.IsZero() || p.active()) {
				blindFrom = watchSince
				if !lastGood.IsZero() {
					blindFrom = p.d.blindSince(lastGood)
				}
				p.sink.ChangesUnseen(mode, blindFrom)
			}
			if !sleep(ctx, max(wp.every, p.backoff.Delay(failures))) {
				return
			}
			continue
		}
		// Whether a refresh may already have taken its snapshot: asked after
		// the poll, so "no" means every refresh of the term comes later.
		active := p.active()
		switch {
		case !blindFrom.IsZero():
			p.sink.ChangesMissed(mode, blindFrom)
			blindFrom = time.Time{}
		case lastGood.IsZero():
			// First poll of this watch. At the start of a term, before any
			// refresh may run, the term's start-up catch-up covers whatever
			// the baseline hides; otherwise catch up now.
			if res.lost && active {
				p.sink.ChangesMissed(mode, watchSince)
			}
		case res.lost:
			p.sink.ChangesMissed(mode, p.d.blindSince(lastGood))
		}
		if failures > 0 {
			p.log.Info("change detection poll recovered", zap.Int("failed_polls", failures))
		}
		lastGood, failures = start, 0
		if p.polled != nil {
			p.polled()
		}
		var ok bool
		if rung, ok = p.next(ctx, start, wp.every, rung); !ok {
			return
		}
	}
}

// next waits for the next poll after the successful one that started at
// start: due every later, or when the doorbell rings. It returns whether
// the doorbell started it, and false for ok once ctx ends. Under a steady
// stream of writes each re-arm is rung at once (or was rung during the
// poll): a ring that comes within streamWindow of the end of a poll that a
// ring started waits until min(every, ringGap) after that poll's start, so
// the polls (and the few notifying commits each re-arm lets through) come
// at most that often when writers keep the database busy, which is when
// they pay for them; the debounce, not detection, decides when a refresh
// starts then. Any other ring, such as a lone write's, is answered at once.
func (p *poller) next(ctx context.Context, start time.Time, every time.Duration, rung bool) (ringing, ok bool) {
	polled := time.Now()
	due := time.NewTimer(time.Until(start.Add(every)))
	defer due.Stop()
	select {
	case <-ctx.Done():
		return false, false
	case <-due.C:
		return false, true
	case <-p.wake: // never, for a nil channel
	}
	stream := rung && time.Since(polled) < p.streamWindow
	if stream && !sleep(ctx, time.Until(start.Add(min(every, p.ringGap)))) {
		return false, false
	}
	return true, true
}

// ensureTriggers makes every source table's triggers match the current views
// (EnsureTriggers) and removes the incremental capture of views no longer
// configured; lead calls it once the schema exists. A failure is
// logged, not retried: each view's set-up still adds the trigger it needs
// and reports its own table's problem; a trigger left over is dropped at the
// next term.
func (e *Engine) ensureTriggers(ctx context.Context, log *zap.Logger) {
	ws := e.snapshot()
	views := make([]config.View, len(ws))
	for i, w := range ws {
		views[i] = *w.view
		views[i].ChangeDetection = w.detection()
	}
	if err := EnsureTriggers(ctx, e.pool, views); err != nil && ctx.Err() == nil {
		log.Warn("could not make the change triggers of every source table match the views", zap.Error(err))
	}
	names := make([]config.QualifiedName, len(views))
	for i := range views {
		names[i] = views[i].Name
	}
	var removed []string
	err := withSetupLock(ctx, e.pool, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		removed, err = incremental.UninstallOrphans(ctx, tx, names)
		return err
	})
	switch {
	case err != nil && ctx.Err() == nil:
		log.Warn("could not remove the incremental capture of views no longer configured; the next term tries again", zap.Error(err))
	case len(removed) > 0:
		log.Info("removed the incremental capture (triggers and key logs) of views no longer configured; their summaries stay", zap.Strings("views", removed))
	}
}

// Package refresh keeps summaries fresh: per-view workers that execute one
// scheduling policy (policy.go) through a refresh strategy (strategy.go),
// the change detectors and the LISTEN connection that feed them, and leader
// election between replicas. docs/architecture.md draws the data flow.
package refresh

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/metrics"
)

// Options tune the engine's timings; zero values take the defaults.
type Options struct {
	Identity          string        // recorded with each refresh (host/pod)
	ListenerPingEvery time.Duration // ping a quiet LISTEN connection
	LeaderRetryEvery  time.Duration // follower's lock attempts
	LeaderCheckEvery  time.Duration // leader's connection checks
	HealthEvery       time.Duration // database reachability checks
	ConnectBackoff    Backoff
	RetryBackoff      Backoff // failed refreshes
	SetupBackoff      Backoff // failed view set-up
	// Now is the clock the scheduling policy reads; nil is time.Now.
	Now func() time.Time
	// Strategy, when set, does every view's refresh work (tests); nil picks
	// per view what its strategy: key says.
	Strategy Strategy
}

func (o *Options) defaults(pool *pgxpool.Pool) {
	set := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	set(&o.ListenerPingEvery, defaultListenerPingEvery)
	set(&o.LeaderRetryEvery, defaultLeaderRetryEvery)
	set(&o.LeaderCheckEvery, defaultLeaderCheckEvery)
	set(&o.HealthEvery, defaultHealthEvery)
	if o.ConnectBackoff.Base == 0 {
		o.ConnectBackoff = Backoff{Base: 250 * time.Millisecond, Max: 10 * time.Second}
	}
	if o.RetryBackoff.Base == 0 {
		o.RetryBackoff = Backoff{Base: time.Second, Max: time.Minute}
	}
	if o.SetupBackoff.Base == 0 {
		o.SetupBackoff = Backoff{Base: 2 * time.Second, Max: time.Minute}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Engine runs the workers of all views of one configuration: the view
// registry (reloadable), leadership terms (term.go), change intake
// (intake.go), detectors (detectors.go) and health (health.go).
type Engine struct {
	pool       *pgxpool.Pool
	sessionCfg *pgx.ConnConfig
	m          *metrics.Metrics
	log        *zap.Logger
	opts       Options
	full       *MatviewStrategy
	inc        *IncrementalStrategy
	terms      termGate // the current leadership term, once workers may refresh
	started    time.Time
	workerWG   sync.WaitGroup
	termWG     sync.WaitGroup // leadership terms and their helpers

	mu sync.Mutex
	// The view registry changes on reload; guarded by mu. Lock order: e.mu
	// before w.mu.
	cfg        *config.Config
	workers    []*worker
	bySource   map[sourceKey][]*worker // views to wake per detector and source table
	byName     map[string]*worker
	retiring   map[string]*worker // removed workers that have not ended yet
	sem        chan struct{}
	runCtx     context.Context // set by Run: workers' lifetime
	refreshCtx context.Context // set by Run: outlives runCtx by the grace period

	leader            bool
	term              *term // the current term, also before it is active
	listenerConnected bool
	dbErr             error
	checks            int            // database checks done
	polls             map[string]int // successful polls per detector mode
	healthNow         chan struct{}  // buffer 1: a connection was lost or made, check the database now
	stopping          bool
	termCount         int // leadership terms so far
}

// New builds an engine. pool serves refreshes; sessionCfg is for the
// listener, leader and health connections (a direct URL when pool goes
// through a transaction pooler).
func New(cfg *config.Config, pool *pgxpool.Pool, sessionCfg *pgx.ConnConfig, m *metrics.Metrics, log *zap.Logger, opts Options) *Engine {
	opts.defaults(pool)
	e := &Engine{
		full:       NewMatviewStrategy(pool, opts.Identity),
		inc:        NewIncrementalStrategy(pool, opts.Identity),
		cfg:        cfg,
		pool:       pool,
		sessionCfg: sessionCfg,
		m:          m,
		log:        log,
		opts:       opts,
		byName:     map[string]*worker{},
		retiring:   map[string]*worker{},
		polls:      map[string]int{},
		sem:        make(chan struct{}, cfg.MaxConcurrentRefreshes),
		terms:      newTermGate(),
		started:    opts.Now(),
		dbErr:      errNotChecked,
		healthNow:  make(chan struct{}, 1),
	}
	for i := range cfg.Views {
		e.addWorker(e.newWorker(&cfg.Views[i]))
	}
	m.RegisterState(e)
	return e
}

// Run runs until ctx is done, then stops gracefully: no new refreshes; a
// running refresh gets the configured grace period before it is cancelled
// (server-side: the view keeps its previous data); leadership is released.
func (e *Engine) Run(ctx context.Context) error {
	refreshCtx, cancelRefresh := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRefresh()
	stopGrace := context.AfterFunc(ctx, func() {
		grace := e.stop()
		e.log.Info("stopping: no new refreshes; a running refresh may finish", zap.Duration("grace_period", grace))
		t := time.AfterFunc(grace, cancelRefresh)
		context.AfterFunc(refreshCtx, func() { t.Stop() })
	})
	defer stopGrace()

	var wg sync.WaitGroup
	wg.Go(func() { e.checkHealth(ctx) })
	e.mu.Lock()
	e.runCtx, e.refreshCtx = ctx, refreshCtx
	for _, w := range e.workers {
		e.startWorker(w)
	}
	cfg := e.cfg
	e.mu.Unlock()
	// Workers must be done before leadership is released, so a successor
	// never starts while we may still refresh (fencing and the per-view lock
	// would hold it off anyway, but a clean hand-over does not lean on that).
	electCtx, stopElect := context.WithCancel(context.WithoutCancel(ctx))
	var ew sync.WaitGroup
	ew.Go(func() {
		(&Elector{
			ConnConfig: e.sessionCfg,
			Name:       cfg.Leader.Name,
			RetryEvery: e.opts.LeaderRetryEvery,
			CheckEvery: e.opts.LeaderCheckEvery,
			Backoff:    e.opts.ConnectBackoff,
			Log:        e.log.Named("leader"),
			OnChange:   e.setLeader,
		}).Run(electCtx)
	})
	<-ctx.Done()
	e.stop() // before waiting: no worker or helper starts from here on
	wg.Wait()
	e.workerWG.Wait()
	stopElect()
	ew.Wait()
	e.termWG.Wait()
	e.terms.set(nil)
	return nil
}

// stop marks the engine stopping (idempotent) and returns the grace period.
func (e *Engine) stop() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopping = true
	return e.cfg.Shutdown.GracePeriod
}

// newWorker builds the worker of one view with its collaborators.
func (e *Engine) newWorker(v *config.View) *worker {
	name := v.Name.String()
	now := e.opts.Now()
	return &worker{
		view:     v,
		name:     name,
		log:      e.log.With(zap.String("view", name)),
		now:      e.opts.Now,
		started:  e.started,
		strategy: e.strategyFor(v),
		rec:      e.m.View(name),
		deps:     e,
		terms:    &e.terms,
		slots:    e.slots,
		setupBo:  e.opts.SetupBackoff,
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		sched:    newSchedule(v.Settings, e.opts.RetryBackoff, now),
	}
}

// strategyFor returns the strategy of v's worker.
func (e *Engine) strategyFor(v *config.View) Strategy {
	if e.opts.Strategy != nil {
		return e.opts.Strategy
	}
	return &viewStrategy{full: e.full, inc: e.inc, mode: v.Strategy}
}

// slots returns the current concurrency semaphore (a reload may replace it).
func (e *Engine) slots() chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.sem
}

// addWorker registers a worker (not yet running). Caller holds e.mu or is
// the constructor.
func (e *Engine) addWorker(w *worker) {
	e.workers = append(e.workers, w)
	e.byName[w.name] = w
	e.indexSources()
	e.m.InitView(w.name)
	w.rec.Target(w.view.TargetLag, true)
}

// indexSources rebuilds the source-table index. Caller holds e.mu.
func (e *Engine) indexSources() {
	e.bySource = map[sourceKey][]*worker{}
	for _, w := range e.workers {
		mode := w.detection()
		for _, s := range w.view.Sources {
			k := sourceKey{mode, s}
			e.bySource[k] = append(e.bySource[k], w)
		}
	}
}

// startWorker runs w until the engine stops or w is removed; a removed
// worker's series go when it ends, unless its view was configured again
// meanwhile. Caller holds e.mu; nothing starts once the engine stops, so
// Run's wait never races with a start.
func (e *Engine) startWorker(w *worker) {
	if e.stopping || e.runCtx == nil {
		return
	}
	ctx, cancel := context.WithCancel(e.runCtx)
	w.cancel = cancel
	refreshCtx := e.refreshCtx
	e.workerWG.Go(func() {
		defer cancel()
		w.run(ctx, refreshCtx)
		close(w.done)
		w.mu.Lock()
		removed := w.removed
		w.mu.Unlock()
		if !removed {
			return
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.retiring[w.name] == w {
			delete(e.retiring, w.name)
		}
		if e.byName[w.name] == nil {
			e.m.RemoveView(w.name)
		}
	})
}

// snapshot returns the current workers.
func (e *Engine) snapshot() []*worker {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*worker(nil), e.workers...)
}

// lookup returns the worker of a managed view, or nil.
func (e *Engine) lookup(name config.QualifiedName) *worker {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.byName[name.String()]
}

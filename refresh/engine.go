// Package refresh keeps materialized views fresh: per-view workers that
// decide when to refresh, the refresh transaction itself, the LISTEN
// connection that feeds them change events, and leader election between
// replicas.
package refresh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/robfig/cron/v3"
	"go.uber.org/zap"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/metrics"
	dbsql "github.com/refresherd/refresherd/sql"
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
}

func (o *Options) defaults() {
	set := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	set(&o.ListenerPingEvery, 10*time.Second)
	set(&o.LeaderRetryEvery, 2*time.Second)
	set(&o.LeaderCheckEvery, 2*time.Second)
	set(&o.HealthEvery, 5*time.Second)
	if o.ConnectBackoff.Base == 0 {
		o.ConnectBackoff = Backoff{Base: 250 * time.Millisecond, Max: 10 * time.Second}
	}
	if o.RetryBackoff.Base == 0 {
		o.RetryBackoff = Backoff{Base: time.Second, Max: time.Minute}
	}
	if o.SetupBackoff.Base == 0 {
		o.SetupBackoff = Backoff{Base: 2 * time.Second, Max: time.Minute}
	}
}

// Engine runs the workers of all views of one configuration.
type Engine struct {
	pool       *pgxpool.Pool
	sessionCfg *pgx.ConnConfig
	m          *metrics.Metrics
	log        *zap.Logger
	opts       Options
	refresher  *Refresher
	active     gate // leader with the schema in place: workers may refresh
	started    time.Time
	workerWG   sync.WaitGroup
	termWG     sync.WaitGroup // leadership terms

	mu sync.Mutex
	// The view registry changes on reload; guarded by mu. Lock order: e.mu
	// before w.mu.
	cfg        *config.Config
	workers    []*worker
	bySource   map[sourceKey][]*worker // views to wake per detector and source table
	byName     map[string]*worker
	sem        chan struct{}
	runCtx     context.Context // set by Run: workers' lifetime
	refreshCtx context.Context // set by Run: outlives runCtx by the grace period

	leader            bool
	leaderTerm        chan struct{} // closed when the current term ends
	listenerConnected bool
	dbErr             error
	healthNow         chan struct{} // buffer 1: a connection was lost or made, check the database now
	stopping          bool
	terms             int // leadership terms so far
}

// New builds an engine. pool serves refreshes; sessionCfg is for the
// listener and leader connections (a direct URL when pool goes through a
// transaction pooler).
func New(cfg *config.Config, pool *pgxpool.Pool, sessionCfg *pgx.ConnConfig, m *metrics.Metrics, log *zap.Logger, opts Options) *Engine {
	opts.defaults()
	e := &Engine{
		cfg:        cfg,
		pool:       pool,
		sessionCfg: sessionCfg,
		m:          m,
		log:        log,
		opts:       opts,
		refresher:  &Refresher{Pool: pool, Identity: opts.Identity},
		byName:     map[string]*worker{},
		sem:        make(chan struct{}, cfg.MaxConcurrentRefreshes),
		active:     newGate(),
		started:    time.Now(),
		dbErr:      errNotChecked,
		healthNow:  make(chan struct{}, 1),
	}
	for i := range cfg.Views {
		e.addWorker(newWorker(e, &cfg.Views[i]))
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
		e.mu.Lock()
		e.stopping = true
		grace := e.cfg.Shutdown.GracePeriod
		e.mu.Unlock()
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
	e.mu.Unlock()
	// Workers must be done before leadership is released, so a successor
	// never starts while we may still refresh (the per-view lock would hold
	// it off anyway, but a clean hand-over does not lean on that).
	electCtx, stopElect := context.WithCancel(context.WithoutCancel(ctx))
	e.mu.Lock()
	cfg := e.cfg
	e.mu.Unlock()
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
	wg.Wait()
	e.workerWG.Wait()
	stopElect()
	ew.Wait()
	e.termWG.Wait()
	e.active.set(false)
	return nil
}

// addWorker registers a worker (not yet running). Caller holds e.mu or is
// the constructor.
func (e *Engine) addWorker(w *worker) {
	e.workers = append(e.workers, w)
	e.byName[w.name] = w
	e.indexSources()
	e.m.InitView(w.name)
}

// indexSources rebuilds the source-table index. Caller holds e.mu.
func (e *Engine) indexSources() {
	e.bySource = map[sourceKey][]*worker{}
	for _, w := range e.workers {
		for _, s := range w.view.Sources {
			k := sourceKey{w.view.ChangeDetection, s}
			e.bySource[k] = append(e.bySource[k], w)
		}
	}
}

// startWorker runs w until the engine stops or w is removed. Caller holds
// e.mu.
func (e *Engine) startWorker(w *worker) {
	ctx, cancel := context.WithCancel(e.runCtx)
	w.cancel = cancel
	refreshCtx := e.refreshCtx
	e.workerWG.Go(func() {
		defer close(w.done)
		w.run(ctx, refreshCtx)
	})
}

// snapshot returns the current workers.
func (e *Engine) snapshot() []*worker {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*worker(nil), e.workers...)
}

// setLeader starts or ends a leadership term.
func (e *Engine) setLeader(leader bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if leader == e.leader {
		return
	}
	e.leader = leader
	if leader {
		e.m.Leader.Set(1)
		term := make(chan struct{})
		e.leaderTerm = term
		ctx, cancel := context.WithCancel(context.Background())
		e.termWG.Go(func() {
			defer cancel()
			go func() { <-term; cancel() }()
			e.lead(ctx)
		})
		return
	}
	e.m.Leader.Set(0)
	e.active.set(false)
	close(e.leaderTerm)
	e.checkHealthSoon() // leadership mostly ends because its connection failed
}

// lead runs one leadership term: schema, known status, then the listener,
// whose first connect marks every view for a start-up refresh.
func (e *Engine) lead(ctx context.Context) {
	log := e.log.Named("lead")
	for attempt := 1; ; attempt++ {
		err := EnsureSchema(ctx, e.pool)
		if err == nil {
			e.ensureTriggers(ctx, log)
			err = e.loadStatus(ctx)
		}
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
		w.ready, w.setupAt, w.setupTries = false, time.Time{}, 0
		w.mu.Unlock()
	}
	first := true
	detectorsDone := make(chan struct{})
	go func() { defer close(detectorsDone); e.runDetectors(ctx) }()
	defer func() { <-detectorsDone }()
	(&Listener{
		ConnConfig: e.sessionCfg,
		Channel:    dbsql.NotifyChannel,
		PingEvery:  e.opts.ListenerPingEvery,
		Backoff:    e.opts.ConnectBackoff,
		Log:        e.log.Named("listener"),
		OnConnect: func(lastGood time.Time) {
			e.setListener(true)
			e.checkHealthSoon()
			if first {
				// LISTEN first, then mark the catch-up, then let workers
				// set up and refresh: no change can fall in between.
				first = false
				e.startTerm()
				e.active.set(true)
				return
			}
			e.m.ListenerReconnects.Inc()
			e.ChangesMissed(config.DetectNotify, lastGood)
		},
		OnDisconnect: func(_ error, lastGood time.Time) {
			e.checkHealthSoon()
			e.setListener(false)
			e.ChangesUnseen(config.DetectNotify, lastGood)
		},
		OnNotify: e.notify,
	}).Run(ctx)
	e.setListener(false)
}

// startTerm marks views for their first refresh of a leadership term. With
// notify, changes made while no one listened are unknown, so the view is
// caught up; without change detection, only when its data is older than its
// schedule period (or of unknown age).
func (e *Engine) startTerm() {
	now := time.Now()
	e.mu.Lock()
	e.terms++
	trigger := metrics.TriggerStartup
	if e.terms > 1 {
		trigger = metrics.TriggerCatchup
	}
	e.mu.Unlock()
	for _, w := range e.snapshot() {
		w.mu.Lock()
		w.retryAt = time.Time{} // a new term: no carried-over backoff (failures stay counted)
		since := w.asOf
		if since.IsZero() {
			since = e.started
		}
		switch {
		case w.view.ChangeDetection != config.DetectNone:
			// Changes made while no one watched are unknown.
			w.p.catchup(since, now, trigger)
		case w.asOf.IsZero() || olderThanPeriod(w.view.ScheduleSpec, w.asOf, now):
			w.p.catchup(since, now, trigger)
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

// setListener records the listener state.
func (e *Engine) setListener(up bool) {
	e.mu.Lock()
	e.listenerConnected = up
	e.mu.Unlock()
	if up {
		e.m.ListenerConnected.Set(1)
	} else {
		e.m.ListenerConnected.Set(0)
	}
}

// notification is the payload of the change trigger, or a control message
// (op "refresh") sent by a replica that received SIGUSR1.
type notification struct {
	Schema string   `json:"schema"`
	Table  string   `json:"table"`
	TS     *float64 `json:"ts"`
	Op     string   `json:"op"`
}

// notify routes one notification; it runs on the listener goroutine and
// never blocks.
func (e *Engine) notify(payload string, received time.Time) {
	var n notification
	if err := json.Unmarshal([]byte(payload), &n); err != nil {
		e.m.NotificationsIgnored.Inc()
		e.log.Debug("ignored notification: not JSON", zap.Int("bytes", len(payload)))
		return
	}
	if n.Op == "refresh" {
		e.log.Info("manual refresh requested through the database")
		e.RefreshAll()
		return
	}
	if n.TS == nil || math.IsNaN(*n.TS) || math.IsInf(*n.TS, 0) {
		e.m.NotificationsIgnored.Inc()
		return
	}
	// A transaction older than a day is implausible; a bogus time must not
	// spike staleness.
	at := received.Add(-24 * time.Hour)
	switch secs := *n.TS; {
	case secs > float64(received.Unix()):
		at = received // clock skew; change() clamps to received anyway
	case secs > float64(at.Unix()):
		at = time.Unix(0, int64(secs*1e9))
	}
	if !e.SourceChanged(config.DetectNotify, config.QualifiedName{Schema: n.Schema, Name: n.Table}, at, received) {
		e.m.NotificationsIgnored.Inc()
	}
}

// sourceKey names a source table as watched by one change detector.
type sourceKey struct {
	mode string
	src  config.QualifiedName
}

// SourceChanged is how change detectors report a change of src: its data
// time `at` (no later than the change's commit) and when it was seen. It
// returns false when no view watches src with that detector.
func (e *Engine) SourceChanged(mode string, src config.QualifiedName, at, seen time.Time) bool {
	e.mu.Lock()
	ws := e.bySource[sourceKey{mode, src}]
	e.mu.Unlock()
	for _, w := range ws {
		w.update(func(p *pending) { p.change(at, seen) })
	}
	return len(ws) > 0
}

// ChangesMissed is how a detector reports that changes since `since` may
// have gone unseen (a reconnect, an emptied log, a counter reset): its views
// catch up now.
func (e *Engine) ChangesMissed(mode string, since time.Time) {
	now := time.Now()
	for _, w := range e.snapshot() {
		if w.view.ChangeDetection == mode {
			w.update(func(p *pending) { p.catchup(since, now, metrics.TriggerCatchup) })
		}
	}
}

// ChangesUnseen is how a detector reports that it is blind from `since` (its
// connection is down): staleness grows, a refresh waits for ChangesMissed.
func (e *Engine) ChangesUnseen(mode string, since time.Time) {
	now := time.Now()
	for _, w := range e.snapshot() {
		if w.view.ChangeDetection == mode {
			w.update(func(p *pending) { p.blind(since, now) })
		}
	}
}

// RefreshAll asks every view to refresh now (SIGUSR1). On a follower the
// request is passed to the leader through the database.
func (e *Engine) RefreshAll() {
	e.mu.Lock()
	leader := e.leader
	e.mu.Unlock()
	if !leader {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := e.pool.Exec(ctx, `SELECT pg_notify($1, '{"op":"refresh"}')`, dbsql.NotifyChannel); err != nil {
			e.log.Warn("could not pass the manual refresh to the leader", zap.Error(err))
			return
		}
		e.log.Info("not the leader: passed the manual refresh request to the leader")
		return
	}
	for _, w := range e.snapshot() {
		w.update(func(p *pending) { p.manual = true })
	}
}

// loadStatus reads each view's last recorded refresh, so staleness and
// metrics are right from the first scrape of a new term.
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
		w.mu.Lock()
		if asOf != nil {
			w.asOf = *asOf
			e.m.DataAsOf.WithLabelValues(w.name).Set(float64(asOf.UnixNano()) / 1e9)
		}
		if success != nil {
			w.lastSuccess = *success
			e.m.LastSuccess.WithLabelValues(w.name).Set(float64(success.UnixNano()) / 1e9)
		}
		if w.lastResult == "" {
			w.lastResult, w.lastError = result, lastErr
		}
		w.mu.Unlock()
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read view status: %w", err)
	}
	return nil
}

// checkHealth pings the database periodically; /readyz reads the result so
// a probe never waits on the database.
func (e *Engine) checkHealth(ctx context.Context) {
	for {
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := e.pool.Ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		e.mu.Lock()
		was := e.dbErr
		e.dbErr = err
		e.mu.Unlock()
		switch {
		case err != nil && (was == nil || was == errNotChecked):
			e.log.Warn("database unreachable", zap.Error(err))
		case err == nil && was != nil:
			e.log.Info("database reachable")
		}
		t := time.NewTimer(e.opts.HealthEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-e.healthNow:
			t.Stop()
		case <-t.C:
		}
	}
}

// errNotChecked is the database state before the first check.
var errNotChecked = errors.New("not checked yet")

// checkHealthSoon asks for a database check now (a connection was lost or
// made), so /readyz follows within moments rather than HealthEvery.
func (e *Engine) checkHealthSoon() {
	select {
	case e.healthNow <- struct{}{}:
	default:
	}
}

// Ready reports whether this replica can do its job: the database answers,
// and on the leader the listener is connected.
func (e *Engine) Ready() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.stopping:
		return errors.New("shutting down")
	case e.dbErr != nil:
		return fmt.Errorf("database: %w", e.dbErr)
	case e.leader && !e.listenerConnected:
		return errors.New("listener not connected")
	}
	return nil
}

// gate is a boolean whose changes can be waited for.
type gate struct {
	mu sync.Mutex
	on bool
	ch chan struct{} // closed at the next change
}

func newGate() gate { return gate{ch: make(chan struct{})} }

func (g *gate) get() (bool, <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.on, g.ch
}

func (g *gate) set(on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.on == on {
		return
	}
	g.on = on
	close(g.ch)
	g.ch = make(chan struct{})
}

package refresh

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/metrics"
)

// Reload applies a new configuration (SIGHUP): added views start, removed
// views stop being managed (their materialized views are left in place),
// changed views restart with the new settings (a running refresh finishes
// first; pending changes carry over). Settings that need new connections or
// a new listener (database, http, leader name) are kept and reported.
func (e *Engine) Reload(cfg *config.Config) (changes []string, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopping {
		return nil, errors.New("reload: stopping")
	}
	old := e.cfg
	var restart []string
	if cfg.Database != old.Database {
		restart = append(restart, "database")
	}
	if cfg.HTTP != old.HTTP {
		restart = append(restart, "http")
	}
	if cfg.Leader != old.Leader {
		restart = append(restart, "leader")
	}
	if len(restart) > 0 {
		e.log.Warn("reload: these settings need a restart and keep their old values", zap.Strings("keys", restart))
		cfg.Database, cfg.HTTP, cfg.Leader = old.Database, old.HTTP, old.Leader
	}
	if cfg.MaxConcurrentRefreshes != old.MaxConcurrentRefreshes {
		// Refreshes holding a slot release it to the old semaphore.
		e.sem = make(chan struct{}, cfg.MaxConcurrentRefreshes)
		changes = append(changes, "max_concurrent_refreshes")
	}
	if cfg.Shutdown != old.Shutdown {
		changes = append(changes, "shutdown")
	}

	keep := map[string]bool{}
	triggers := false // source triggers need to follow the new modes
	var next []*worker
	for i := range cfg.Views {
		v := &cfg.Views[i]
		name := v.Name.String()
		keep[name] = true
		w := e.byName[name]
		switch {
		case w == nil:
			nw := newWorker(e, v)
			// Changes made while it was not managed are unknown.
			nw.p.catchup(e.started, e.started, metrics.TriggerStartup)
			e.byName[name] = nw
			e.m.InitView(name)
			if e.runCtx != nil {
				e.startWorker(nw)
			}
			next = append(next, nw)
			changes = append(changes, "added "+name)
		case sameView(w.view, v):
			next = append(next, w)
		default:
			nw := newWorker(e, v)
			if w.view.ChangeDetection != v.ChangeDetection || !slices.Equal(w.view.Sources, v.Sources) {
				// Changes between the old detector and the new one's
				// triggers are unseen: catch up once set up.
				now := time.Now()
				nw.p.catchup(now, now, metrics.TriggerCatchup)
				triggers = true
			}
			e.byName[name] = nw
			next = append(next, nw)
			e.handover(w, nw)
			changes = append(changes, "changed "+name)
		}
	}
	for _, w := range e.workers {
		if keep[w.name] {
			continue
		}
		delete(e.byName, w.name)
		changes = append(changes, "removed "+w.name)
		triggers = true
		if w.cancel != nil {
			w.cancel()
			go func() {
				<-w.done
				// After the worker is gone, so no late update re-creates
				// the series.
				e.m.RemoveView(w.name)
			}()
		} else {
			e.m.RemoveView(w.name)
		}
	}
	e.workers = next
	e.cfg = cfg
	e.indexSources()
	if triggers && e.leader && e.runCtx != nil {
		ctx := e.runCtx
		e.termWG.Go(func() {
			tctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			e.ensureTriggers(tctx, e.log)
		})
	}
	slices.Sort(changes)
	e.log.Info("configuration reloaded", zap.Strings("changes", changes))
	return changes, nil
}

// handover stops old and starts nw with old's state once old has finished
// its current refresh. Caller holds e.mu.
func (e *Engine) handover(old, nw *worker) {
	if old.cancel == nil { // not running yet
		nw.inherit(old)
		return
	}
	old.cancel()
	// nw is registered now, so events reach it while old finishes.
	go func() {
		<-old.done
		nw.inherit(old)
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.byName[nw.name] == nw && e.runCtx != nil && !e.stopping {
			e.startWorker(nw)
		}
	}()
}

// inherit takes over a replaced worker's state.
func (w *worker) inherit(old *worker) {
	old.mu.Lock()
	st := old.p
	asOf, lastSuccess := old.asOf, old.lastSuccess
	result, lastErr, trigger, dur := old.lastResult, old.lastError, old.lastTrigger, old.lastDur
	old.mu.Unlock()
	w.mu.Lock()
	w.p.merge(st)
	w.asOf, w.lastSuccess = asOf, lastSuccess
	w.lastResult, w.lastError, w.lastTrigger, w.lastDur = result, lastErr, trigger, dur
	w.mu.Unlock()
	w.poke()
}

// sameView reports whether two declarations need no worker restart.
func sameView(a, b *config.View) bool {
	x, y := *a, *b
	x.ScheduleSpec, y.ScheduleSpec = nil, nil // compared through Schedule
	x.Line, y.Line = 0, 0
	return reflect.DeepEqual(x, y)
}

package refresh

import (
	"context"
	"errors"
	"reflect"
	"slices"

	"go.uber.org/zap"

	"github.com/refresherd/refresherd/config"
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
			nw := e.newWorker(v)
			// Changes made while it was not managed are unknown.
			nw.sched.p.catchup(e.started, e.started, TriggerStartup)
			// A removed worker of that name may still be finishing: run
			// after it, so the view never has two workers.
			nw.prev = e.retiring[name]
			e.byName[name] = nw
			e.m.InitView(name)
			nw.rec.Target(v.TargetLag, true)
			e.startWorker(nw)
			next = append(next, nw)
			changes = append(changes, "added "+name)
		case sameView(w.view, v):
			next = append(next, w)
		default:
			nw := e.newWorker(v)
			if w.view.ChangeDetection != v.ChangeDetection || !slices.Equal(w.view.Sources, v.Sources) {
				// Changes between the old detector and the new one's
				// triggers are unseen: catch up once set up.
				now := e.opts.Now()
				nw.sched.p.catchup(now, now, TriggerCatchup)
				triggers = true
			}
			e.byName[name] = nw
			next = append(next, nw)
			nw.rec.Target(v.TargetLag, true)
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
		w.mu.Lock()
		w.removed = true
		w.mu.Unlock()
		if w.cancel != nil {
			// Its series go when it has ended (startWorker), so no late
			// update re-creates them.
			e.retiring[w.name] = w
			w.cancel()
		} else {
			e.m.RemoveView(w.name)
		}
	}
	e.workers = next
	e.cfg = cfg
	e.indexSources()
	if t := e.term; triggers && t != nil {
		e.termWG.Go(func() {
			tctx, cancel := context.WithTimeout(t.ctx, triggerSyncTimeout)
			defer cancel()
			e.ensureTriggers(tctx, e.log)
		})
	}
	slices.Sort(changes)
	e.log.Info("configuration reloaded", zap.Strings("changes", changes))
	return changes, nil
}

// handover replaces old by nw: nw is registered at once, so new events reach
// it; it starts only after old has finished its current refresh and takes
// over its state, and events that still reach old go on to nw. Caller holds
// e.mu.
func (e *Engine) handover(old, nw *worker) {
	if old.cancel == nil { // not running yet
		nw.inherit(old)
		return
	}
	nw.prev = old
	old.cancel()
	e.startWorker(nw)
}

// sameView reports whether two declarations need no worker restart.
func sameView(a, b *config.View) bool {
	x, y := *a, *b
	x.ScheduleSpec, y.ScheduleSpec = nil, nil // compared through Schedule
	x.Line, y.Line = 0, 0
	return reflect.DeepEqual(x, y)
}

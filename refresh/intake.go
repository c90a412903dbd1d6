package refresh

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/refresherd/refresherd/config"
	dbsql "github.com/refresherd/refresherd/sql"
)

// Change intake: what the change detectors report (the changeSink
// interface) and manual requests, routed to the workers.

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
	now := e.opts.Now()
	for _, w := range e.snapshot() {
		if w.detection() == mode {
			w.update(func(p *pending) { p.catchup(since, now, TriggerCatchup) })
		}
	}
}

// ChangesUnseen is how a detector reports that it is blind from `since` (its
// connection is down): staleness grows, a refresh waits for ChangesMissed.
func (e *Engine) ChangesUnseen(mode string, since time.Time) {
	now := e.opts.Now()
	for _, w := range e.snapshot() {
		if w.detection() == mode {
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
		ctx, cancel := context.WithTimeout(context.Background(), manualPassTimeout)
		defer cancel()
		if _, err := e.pool.Exec(ctx, `SELECT pg_notify($1, '{"op":"refresh"}')`, dbsql.NotifyChannel); err != nil {
			e.log.Warn("could not pass the manual refresh to the leader", zap.Error(err))
			return
		}
		e.log.Info("not the leader: passed the manual refresh request to the leader")
		return
	}
	now := e.opts.Now()
	for _, w := range e.snapshot() {
		w.update(func(p *pending) { p.request(now) })
	}
}

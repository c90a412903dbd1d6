package refresh

import (
	"context"
	"encoding/json"
	"math"
	"time"

	"go.uber.org/zap"

	"github.com/refresherd/refresherd/config"
	dbsql "github.com/refresherd/refresherd/sql"
)

// Notification intake: what the listener and the change detectors report
// (the changeSink interface), and manual requests, routed to the workers.

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
	now := e.opts.Now()
	for _, w := range e.snapshot() {
		if w.view.ChangeDetection == mode {
			w.update(func(p *pending) { p.catchup(since, now, TriggerCatchup) })
		}
	}
}

// ChangesUnseen is how a detector reports that it is blind from `since` (its
// connection is down): staleness grows, a refresh waits for ChangesMissed.
func (e *Engine) ChangesUnseen(mode string, since time.Time) {
	now := e.opts.Now()
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

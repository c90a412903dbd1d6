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

// notifyDetector is the notify change detection mode: the statement
// trigger's NOTIFY reaches the term's one LISTEN connection. That
// connection is also the term's wake-up: after its first LISTEN the term
// starts (no change can fall between the LISTEN and the start-up
// catch-up), and it carries manual requests passed on by followers.
type notifyDetector struct {
	listener *Listener
	sink     changeSink
	// ignored counts a notification that names nothing watched.
	ignored func()
	// control handles a control message (op "refresh").
	control func()
}

// notifyDetector builds the notify detector of term t.
func (e *Engine) notifyDetector(t *term) *notifyDetector {
	d := &notifyDetector{
		sink:    e,
		ignored: e.m.NotificationsIgnored.Inc,
		control: func() {
			e.log.Info("manual refresh requested through the database")
			e.RefreshAll()
		},
	}
	first := true
	d.listener = &Listener{
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
				e.startTerm(t)
				e.activate(t)
				return
			}
			e.m.ListenerReconnects.Inc()
			d.sink.ChangesMissed(config.DetectNotify, lastGood)
		},
		OnDisconnect: func(_ error, lastGood time.Time) {
			e.checkHealthSoon()
			e.setListener(false)
			d.sink.ChangesUnseen(config.DetectNotify, lastGood)
		},
		OnNotify: d.notified,
	}
	return d
}

func (d *notifyDetector) mode() string { return config.DetectNotify }

func (d *notifyDetector) run(ctx context.Context) { d.listener.Run(ctx) }

// notification is the payload of the change trigger, or a control message
// (op "refresh") sent by a replica that received SIGUSR1.
type notification struct {
	Schema string   `json:"schema"`
	Table  string   `json:"table"`
	TS     *float64 `json:"ts"`
	Op     string   `json:"op"`
}

// notified routes one notification; it runs on the listener goroutine and
// never blocks.
func (d *notifyDetector) notified(payload string, received time.Time) {
	var n notification
	if err := json.Unmarshal([]byte(payload), &n); err != nil {
		d.ignored()
		d.listener.Log.Debug("ignored notification: not JSON", zap.Int("bytes", len(payload)))
		return
	}
	if n.Op == "refresh" {
		d.control()
		return
	}
	if n.TS == nil || math.IsNaN(*n.TS) || math.IsInf(*n.TS, 0) {
		d.ignored()
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
	if !d.sink.SourceChanged(config.DetectNotify, config.QualifiedName{Schema: n.Schema, Name: n.Table}, at, received) {
		d.ignored()
	}
}

package refresh

import (
	"context"
	"encoding/json"
	"math"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/refresherd/refresherd/config"
	dbsql "github.com/refresherd/refresherd/sql"
)

// notifyDetector is the notify change detection mode. The notify trigger
// only rings its table's doorbell (a NOTIFY), and only when the daemon has
// armed it (see notify_ring() in sql/schema.sql), so few commits notify and
// none writes a log. The doorbell poller (doorbellDetector) re-arms every
// doorbell and works out what changed at every ring, and every
// poll_interval as the fallback for a ring that never came (its writer
// rolled back, or the listener was away). Rings reach the term's one LISTEN
// connection. That
// connection is also the term's wake-up: after its first LISTEN the term
// starts (no change can fall between the LISTEN and the start-up
// catch-up), and it carries manual requests passed on by followers.
type notifyDetector struct {
	listener *Listener
	doorbell *poller
	wake     chan struct{} // the doorbell poller's, one slot
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
		wake:    make(chan struct{}, 1),
		ignored: e.m.NotificationsIgnored.Inc,
		control: func() {
			e.log.Info("manual refresh requested through the database")
			e.RefreshAll()
		},
	}
	log := e.log.Named("detector").With(zap.String("change_detection", config.DetectNotify))
	d.doorbell = e.newPoller(newDoorbellDetector(e.pool, log), log)
	d.doorbell.wake, d.doorbell.ringGap, d.doorbell.streamWindow = d.wake, doorbellRingGap, doorbellStreamWindow
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
			// A ring sent while no one listened left the doorbell disarmed:
			// re-arm it now rather than at the fallback poll.
			d.ring()
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

func (d *notifyDetector) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { d.listener.Run(ctx) })
	wg.Go(func() { d.doorbell.run(ctx) })
	wg.Wait()
}

// ring wakes the doorbell poller; it never blocks, and rings while a poll
// is pending make one poll.
func (d *notifyDetector) ring() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// notification is the payload of the notify trigger (op "doorbell"), a
// control message (op "refresh") sent by a replica that received SIGUSR1,
// or a change of one table (schema, table, ts), as the trigger function of
// versions before the doorbell sent: a replica of such a version starting
// during a rolling upgrade puts that function back.
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
	switch n.Op {
	case "refresh":
		d.control()
		return
	case dbsql.DoorbellOp:
		d.ring()
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

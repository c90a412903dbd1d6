package refresh

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/refresherd/refresherd/config"
)

// captureDetector is the change detection of views that run incrementally:
// their capture triggers log the touched group keys, and this polls each
// log for keys, reporting the oldest key's data time; a view that already
// owes a refresh needs only to know that keys still wait (a cheap EXISTS,
// where the oldest would read the whole log, which grows while rounds are
// held off). The
// rounds themselves find everything else (a lost log, a truncate, a
// missing trigger).
type captureDetector struct {
	e   *Engine
	log *zap.Logger
}

func (d *captureDetector) mode() string { return config.DetectCapture }

func (d *captureDetector) run(ctx context.Context) {
	failing := map[string]bool{}
	for ctx.Err() == nil {
		every := config.DefaultPollInterval
		var ws []*worker
		watching := false // some view uses capture (tests count these passes)
		gen := map[*worker]uint64{}
		owing := map[*worker]bool{} // its oldest change is known already
		for _, w := range d.e.snapshot() {
			w.mu.Lock()
			owing[w] = w.sched.p.dirty
			capture := w.ready && w.sched.settings.ChangeDetection == config.DetectCapture
			watching = watching || capture
			// A round in flight reports the log when it commits; until
			// then the log still shows the keys it drains.
			capture = capture && !w.refreshing
			gen[w] = w.refreshes
			w.mu.Unlock()
			if capture {
				ws = append(ws, w)
				if iv := w.view.PollInterval; iv > 0 && iv < every {
					every = iv
				}
			}
		}
		start := time.Now()
		for _, w := range ws {
			pctx, cancel := context.WithTimeout(ctx, capturePollTimeout)
			owed, oldest, err := d.e.inc.Pending(pctx, w.view, !owing[w])
			cancel()
			if ctx.Err() != nil {
				return
			}
			switch {
			case err != nil:
				if !failing[w.name] {
					d.log.Warn("cannot read the key log; the view's changes wait until it can", zap.String("view", w.name), zap.Error(err))
				}
				failing[w.name] = true
				continue
			case failing[w.name]:
				d.log.Info("key log readable again", zap.String("view", w.name))
				delete(failing, w.name)
			}
			if owed {
				now := d.e.opts.Now()
				w.mu.Lock()
				stale := w.refreshing || w.refreshes != gen[w]
				w.mu.Unlock()
				if !stale {
					// Owing, oldest is zero: the change is dated now and
					// the known oldest stays (p.change keeps the earlier).
					w.update(func(p *pending) { p.change(oldest, now) })
				}
			}
		}
		if watching {
			d.e.countPoll(config.DetectCapture)
		}
		if !sleep(ctx, time.Until(start.Add(every))) {
			return
		}
	}
}

// runVerifier verifies incremental views on their verify_schedule during a
// term, so refresherd_verify_mismatched_rows shows a summary that drifted
// from its query (it must stay 0). A verification is a full aggregate: it
// runs beside the rounds, on its own connection from the pool.
func (e *Engine) runVerifier(ctx context.Context) {
	log := e.log.Named("verify")
	next := map[*worker]time.Time{}
	for ctx.Err() == nil {
		now := e.opts.Now()
		for _, w := range e.snapshot() {
			spec := w.view.VerifySpec
			if spec == nil || w.detection() != config.DetectCapture {
				delete(next, w)
				continue
			}
			due, ok := next[w]
			if !ok {
				next[w] = spec.Next(now)
				continue
			}
			if now.Before(due) {
				continue
			}
			next[w] = spec.Next(now)
			res, err := Verify(ctx, e.pool, w.view, 0)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				log.Warn("verification failed", zap.String("view", w.name), zap.Error(err))
				continue
			}
			w.rec.Verified(res.Mismatched)
			if res.Mismatched > 0 {
				log.Error("incremental summary differs from its query; run `refresherd verify` to see the rows",
					zap.String("view", w.name), zap.Int64("mismatched_rows", res.Mismatched))
			} else {
				log.Debug("verified", zap.String("view", w.name), zap.Int64("pending_groups", res.PendingGroups))
			}
		}
		if !sleep(ctx, verifyCheckEvery) {
			return
		}
	}
}

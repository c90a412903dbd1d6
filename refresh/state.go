package refresh

import (
	"time"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/metrics"
)

// pending is what a view owes: the changes seen and the requests made since
// the last refresh started. It is plain data so the scheduling rules below
// can be tested without clocks or goroutines.
type pending struct {
	// dirty: some change may not be in the view.
	dirty bool
	// oldest is the data time of the oldest change not reflected (for
	// staleness). It is never later than that change's commit.
	oldest time.Time
	// first and last are when (daemon clock) the first and the latest change
	// since the last refresh start were seen: max_delay and debounce.
	first, last time.Time
	count       int64
	// urgent changes (start-up, catch-up after a reconnect) are refreshed
	// without debounce under their own trigger label.
	urgent        bool
	urgentTrigger string
	// manual is an explicit request to refresh now, changed or not.
	manual bool
}

// change records a change of data time at (clamped to seen) seen at seen.
func (p *pending) change(at, seen time.Time) {
	if at.IsZero() || at.After(seen) {
		at = seen
	}
	if !p.dirty || at.Before(p.oldest) {
		p.oldest = at
	}
	if p.first.IsZero() {
		p.first = seen
	}
	p.last = seen
	p.dirty = true
	p.count++
}

// catchup marks the view dirty since `since` (changes may have been missed)
// and asks for a prompt refresh labelled trigger.
func (p *pending) catchup(since, seen time.Time, trigger string) {
	if since.IsZero() || since.After(seen) {
		since = seen
	}
	if !p.dirty || since.Before(p.oldest) {
		p.oldest = since
	}
	p.dirty = true
	if !p.urgent {
		p.urgent = true
		p.urgentTrigger = trigger
	}
}

// blind records that changes may be happening unseen since `since` (the
// listener is down): staleness grows from then, but no refresh is planned
// until the catch-up after the reconnect (or a schedule tick).
func (p *pending) blind(since, seen time.Time) {
	if since.IsZero() || since.After(seen) {
		since = seen
	}
	if !p.dirty || since.Before(p.oldest) {
		p.oldest = since
	}
	p.dirty = true
}

// merge puts back what a failed refresh took, combined with what arrived
// during it.
func (p *pending) merge(q pending) {
	if !q.dirty && !q.manual {
		return
	}
	if q.dirty && (!p.dirty || q.oldest.Before(p.oldest)) {
		p.oldest = q.oldest
	}
	if !q.first.IsZero() && (p.first.IsZero() || q.first.Before(p.first)) {
		p.first = q.first
	}
	if q.last.After(p.last) {
		p.last = q.last
	}
	p.dirty = p.dirty || q.dirty
	p.count += q.count
	if q.urgent && !p.urgent {
		p.urgent, p.urgentTrigger = true, q.urgentTrigger
	}
}

// staleness is the age of the oldest unreflected change at now.
func (p *pending) staleness(now time.Time) time.Duration {
	if !p.dirty {
		return 0
	}
	return max(now.Sub(p.oldest), 0)
}

// plan is the next refresh a view's state asks for.
type plan struct {
	at      time.Time // when; zero means nothing to do
	trigger string
}

// nextRefresh applies the triggering rules: a manual request runs now;
// start-up/catch-up runs now; changes run after `debounce` of quiet but no
// later than `max_delay` after the first; a failed refresh is retried no
// earlier than retryAt (manual requests excepted: an operator asked).
func (p *pending) nextRefresh(s config.Settings, now, retryAt time.Time) plan {
	switch {
	case p.manual:
		return plan{at: now, trigger: metrics.TriggerManual}
	case !p.dirty:
		return plan{}
	}
	var pl plan
	if p.urgent {
		pl = plan{at: now, trigger: p.urgentTrigger}
	} else if p.first.IsZero() {
		return plan{} // dirty only by blindness: wait for the catch-up
	} else {
		due := p.last.Add(s.Debounce)
		if capAt := p.first.Add(s.MaxDelay); capAt.Before(due) {
			due = capAt
		}
		pl = plan{at: due, trigger: metrics.TriggerChange}
	}
	if !retryAt.IsZero() {
		pl.trigger = metrics.TriggerRetry
		if retryAt.After(pl.at) {
			pl.at = retryAt
		}
	}
	return pl
}

// scheduledTickRefreshes reports whether a schedule tick should refresh (or
// be counted as skipped): without change detection nothing tells us the data
// is unchanged, so every tick refreshes.
func (p *pending) scheduledTickRefreshes(s config.Settings) bool {
	return p.dirty || p.manual || s.RefreshUnchanged || s.ChangeDetection == config.DetectNone
}

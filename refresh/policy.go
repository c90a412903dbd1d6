package refresh

import (
	"time"

	"github.com/refresherd/refresherd/config"
)

// The one scheduling policy: every rule that decides *when* a view
// refreshes (debounce, max_delay, schedule ticks and skips, upstream gating,
// catch-up, retry backoff, manual requests) is a method of schedule below.
// It is plain data fed the current time by its caller, so the rules are
// table-tested without clocks, goroutines or a database; the worker only
// executes what decide returns.

// upstreamWaitBackstop is how often a view waiting for an upstream looks
// again although the upstream's refresh pokes it: a failed upstream refresh
// does not.
const upstreamWaitBackstop = 500 * time.Millisecond

// pending is what a view owes: the changes seen and the requests made since
// the last refresh started.
type pending struct {
	// dirty: some change may not be in the view.
	dirty bool
	// oldest is the data time of the oldest change not reflected (for
	// staleness). It is never later than that change's commit.
	oldest time.Time
	// first and last are when (daemon clock) the first and the latest change
	// since the last refresh start were seen: max_delay and debounce.
	first, last time.Time
	// owed is when (daemon clock) the view first owed a refresh since the
	// last refresh start, for whatever reason: its freshness cap, past which
	// it waits for nothing, is owed + max_delay.
	owed  time.Time
	count int64
	// urgent changes (start-up, catch-up after a reconnect) are refreshed
	// without debounce under their own trigger label.
	urgent        bool
	urgentTrigger Trigger
	// manual is an explicit request to refresh now, changed or not.
	manual bool
	// tick: a schedule tick asked for a refresh that has not started yet
	// (it may be waiting for an upstream or a retry backoff).
	tick bool
}

// owe records that the view owes a refresh from seen on.
func (p *pending) owe(seen time.Time) {
	if p.owed.IsZero() || seen.Before(p.owed) {
		p.owed = seen
	}
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
	p.owe(seen)
}

// catchup marks the view dirty since `since` (changes may have been missed)
// and asks for a prompt refresh labelled trigger.
func (p *pending) catchup(since, seen time.Time, trigger Trigger) {
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
	p.owe(seen)
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

// settle replaces the changes recorded while a refresh ran by what the
// view's change log holds after it (b), read at seen: change detection
// during the refresh saw the keys it drained. since is the earliest the
// owed changes can have been seen (the refresh's start: they came after its
// snapshot); the debounce counts from it. Requests, ticks and catch-ups
// stay.
func (p *pending) settle(b Backlog, seen, since time.Time) {
	p.dirty, p.oldest, p.first, p.last, p.count = false, time.Time{}, time.Time{}, time.Time{}, 0
	if !p.urgent && !p.manual && !p.tick {
		p.owed = time.Time{}
	}
	if b.Owed {
		p.change(b.Oldest, seen)
		if since.Before(p.first) {
			p.first = since
		}
	}
}

// request records a manual request to refresh now.
func (p *pending) request(seen time.Time) {
	p.manual = true
	p.owe(seen)
}

// merge puts back what a failed refresh took, combined with what arrived
// during it (also what a replaced worker owed, on reload).
func (p *pending) merge(q pending) {
	if q.dirty && (!p.dirty || q.oldest.Before(p.oldest)) {
		p.oldest = q.oldest
	}
	if !q.first.IsZero() && (p.first.IsZero() || q.first.Before(p.first)) {
		p.first = q.first
	}
	if q.last.After(p.last) {
		p.last = q.last
	}
	if !q.owed.IsZero() {
		p.owe(q.owed)
	}
	p.dirty = p.dirty || q.dirty
	p.count += q.count
	if q.urgent && !p.urgent {
		p.urgent, p.urgentTrigger = true, q.urgentTrigger
	}
	p.manual = p.manual || q.manual
	p.tick = p.tick || q.tick
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
	trigger Trigger
}

// nextRefresh applies the triggering rules: a manual request runs now;
// start-up/catch-up runs now; a schedule tick runs now; changes run after
// `debounce` of quiet but no later than `max_delay` after the first; a failed
// refresh is retried no earlier than retryAt (manual requests excepted: an
// operator asked).
func (p *pending) nextRefresh(s config.Settings, now, retryAt time.Time) plan {
	if p.manual {
		return plan{at: now, trigger: TriggerManual}
	}
	var pl plan
	switch {
	case p.dirty && p.urgent:
		pl = plan{at: now, trigger: p.urgentTrigger}
	case p.dirty && !p.first.IsZero():
		due := p.last.Add(s.Debounce)
		if s.ChangeDetection == config.DetectCapture {
			// An incremental round costs little: debounce only the first
			// change of a burst, and run rounds back to back under a
			// steady stream.
			due = p.first.Add(s.Debounce)
		}
		if capAt := p.first.Add(s.MaxDelay); capAt.Before(due) {
			due = capAt
		}
		pl = plan{at: due, trigger: TriggerChange}
	}
	// Dirty only by blindness plans nothing: it waits for the catch-up.
	if p.tick && (pl.at.IsZero() || pl.at.After(now)) {
		pl = plan{at: now, trigger: TriggerSchedule}
	}
	if pl.at.IsZero() {
		return plan{}
	}
	if !retryAt.IsZero() {
		pl.trigger = TriggerRetry
		if retryAt.After(pl.at) {
			pl.at = retryAt
		}
	}
	return pl
}

// tickRefreshes reports whether a schedule tick should refresh (or be
// counted as skipped): without change detection nothing tells us the data is
// unchanged, so every tick refreshes.
func (p *pending) tickRefreshes(s config.Settings) bool {
	return p.dirty || p.manual || s.RefreshUnchanged || s.ChangeDetection == config.DetectNone
}

// upstreamState is what a dependent view needs to know of an upstream one.
type upstreamState struct {
	refreshing bool
	// due is when the upstream plans its next refresh; zero when it plans
	// none (or is failing or not set up: a broken upstream holds no one
	// back).
	due time.Time
}

// decision is what the policy tells the worker to do now.
type decision struct {
	refresh bool
	trigger Trigger
	// skippedTick: a schedule tick found nothing to refresh (counted).
	skippedTick bool
	// waiting: a refresh is due but waits for an upstream view.
	waiting bool
	// next is when to look again unless woken earlier; zero: only when
	// woken.
	next time.Time
	// target is whether the view's target_lag is met (targetNone when it
	// has none or nothing is pending).
	target targetState
}

// targetState is whether a view's freshness target is being met.
type targetState int

const (
	targetNone   targetState = iota // no target_lag, or nothing pending
	targetMet                       // the planned refresh makes the pending change visible in time
	targetMissed                    // it cannot: refreshes run back to back within max_load
)

// schedule is one view's scheduling state.
type schedule struct {
	settings config.Settings // timing settings and the cron schedule
	retry    Backoff

	p        pending
	failures int       // consecutive failed refreshes
	retryAt  time.Time // no automatic refresh before this after a failure
	nextTick time.Time // the next schedule tick; zero without a schedule

	// The view's refresh time, for target_lag and max_load: an estimate
	// that follows a slower refresh at once and a faster one gradually, and
	// the last refresh's end and duration.
	estimate time.Duration
	lastEnd  time.Time
	lastDur  time.Duration
}

// ran records a refresh attempt's end and duration, successful or not:
// both count against max_load and teach the estimate.
func (sc *schedule) ran(end time.Time, dur time.Duration) {
	sc.lastEnd, sc.lastDur = end, dur
	if dur >= sc.estimate {
		sc.estimate = dur
	} else {
		sc.estimate = (4*sc.estimate + dur) / 5
	}
}

// plan is the next refresh by the view's own state: pending's rules, then
// the freshness target (a change refresh starts early enough for the
// change to be visible within target_lag, given the estimated refresh
// time and a margin, but not before the change was seen), then the load cap (after a
// refresh that took d, the next automatic one waits d*(1-max_load)/max_load;
// manual, start-up and catch-up refreshes do not wait).
func (sc *schedule) plan(now time.Time) plan {
	pl := sc.p.nextRefresh(sc.settings, now, sc.retryAt)
	if pl.at.IsZero() {
		return pl
	}
	s := sc.settings
	changeOnly := !sc.p.manual && !sc.p.urgent && !sc.p.tick
	if changeOnly && s.TargetLag > 0 && sc.p.dirty && !sc.p.first.IsZero() {
		// Aim a margin early: the refresh may take longer than the
		// estimate, and the worker, the commit and the reader's next look
		// come on top; planning for exactly target_lag misses it about
		// every other time.
		byTarget := sc.p.oldest.Add(s.TargetLag - sc.estimate - targetMargin(s.TargetLag))
		if byTarget.Before(sc.p.first) {
			byTarget = sc.p.first
		}
		if byTarget.Before(pl.at) && !byTarget.Before(sc.retryAt) {
			pl.at = byTarget
		}
	}
	if !sc.p.manual && !sc.p.urgent && sc.lastDur > 0 && s.MaxLoad > 0 && s.MaxLoad < 1 {
		gap := time.Duration(float64(sc.lastDur) * (1 - s.MaxLoad) / s.MaxLoad)
		if earliest := sc.lastEnd.Add(gap); pl.at.Before(earliest) {
			pl.at = earliest
		}
	}
	return pl
}

// targetState says whether a refresh at `at` makes the oldest pending
// change visible within target_lag. A refresh planned right at its
// deadline starts a little after it (the worker looks when it is due), so
// a tenth of the target (at least targetSlack) is tolerated: the state
// says "out of reach" only when the plan itself cannot make it.
func (sc *schedule) targetState(at time.Time) targetState {
	lag := sc.settings.TargetLag
	if lag <= 0 || !sc.p.dirty || sc.p.first.IsZero() {
		return targetNone
	}
	if at.Add(sc.estimate).Sub(sc.p.oldest) > lag+targetMargin(lag) {
		return targetMissed
	}
	return targetMet
}

// targetMargin is how early a refresh is planned before its target
// deadline, and how late one may start and still count as meeting it: a
// tenth of the target, at least targetSlack.
func targetMargin(lag time.Duration) time.Duration { return max(lag/10, targetSlack) }

// targetSlack is the least targetMargin.
const targetSlack = 100 * time.Millisecond

func newSchedule(s config.Settings, retry Backoff, now time.Time) schedule {
	sc := schedule{settings: s, retry: retry}
	if s.ScheduleSpec != nil {
		sc.nextTick = s.ScheduleSpec.Next(now)
	}
	return sc
}

// passTicks consumes the ticks due by now; it reports whether any was due.
func (sc *schedule) passTicks(now time.Time) bool {
	if sc.settings.ScheduleSpec == nil || sc.nextTick.After(now) {
		return false
	}
	for !sc.nextTick.After(now) {
		sc.nextTick = sc.settings.ScheduleSpec.Next(now)
	}
	return true
}

// idle passes the ticks that fall while this replica does not lead: they
// are another replica's, or no one's.
func (sc *schedule) idle(now time.Time) { sc.passTicks(now) }

// newTerm starts a leadership term: no backoff carried over from the last
// one (failures stay counted).
func (sc *schedule) newTerm() { sc.retryAt = time.Time{} }

// decide applies every timing rule at now. ups are the view's upstream
// views: it refreshes after an upstream refresh that is running or due no
// later than its own, so one round of changes flows down in one pass, but
// never waits past its freshness cap (owed + max_delay): a busy upstream
// under a steady stream cannot starve it.
func (sc *schedule) decide(now time.Time, ups []upstreamState) decision {
	var d decision
	if sc.passTicks(now) {
		if sc.p.tickRefreshes(sc.settings) {
			sc.p.tick = true
			sc.p.owe(now)
		} else {
			d.skippedTick = true
		}
	}
	pl := sc.plan(now)
	if !pl.at.IsZero() {
		d.target = sc.targetState(later(pl.at, now))
	}
	if pl.at.IsZero() || pl.at.After(now) {
		d.next = earliest(pl.at, sc.nextTick)
		return d
	}
	if capAt := sc.p.owed.Add(sc.settings.MaxDelay); now.Before(capAt) && upstreamBusy(ups, pl.at) {
		d.waiting = true
		d.next = earliest(earliest(capAt, now.Add(upstreamWaitBackstop)), sc.nextTick)
		return d
	}
	d.refresh, d.trigger = true, pl.trigger
	return d
}

// upstreamBusy reports whether an upstream is refreshing or due by due.
func upstreamBusy(ups []upstreamState, due time.Time) bool {
	for _, u := range ups {
		if u.refreshing || (!u.due.IsZero() && !u.due.After(due)) {
			return true
		}
	}
	return false
}

// planned is when this view next refreshes by its own state alone, for its
// dependents; zero when it plans nothing or is failing.
func (sc *schedule) planned(now time.Time) time.Time {
	if sc.failures > 0 {
		return time.Time{}
	}
	return sc.plan(now).at
}

// begin takes what is owed as a refresh starts: changes seen from here on
// may not be in its snapshot and cause one follow-up.
func (sc *schedule) begin() pending {
	taken := sc.p
	sc.p = pending{}
	return taken
}

// finished folds a refresh's result in. A failed or cancelled refresh owes
// again what it took (a manual request or tick is answered by the attempt);
// a failure (not a cancellation) backs off.
func (sc *schedule) finished(now time.Time, taken pending, failed, canceled bool) time.Duration {
	if !failed {
		sc.failures, sc.retryAt = 0, time.Time{}
		return 0
	}
	taken.manual, taken.tick = false, false
	sc.p.merge(taken)
	if canceled {
		return 0
	}
	sc.failures++
	d := sc.retry.Delay(sc.failures)
	sc.retryAt = now.Add(d)
	return d
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earliest(a, b time.Time) time.Time {
	switch {
	case a.IsZero():
		return b
	case b.IsZero():
		return a
	case a.Before(b):
		return a
	}
	return b
}

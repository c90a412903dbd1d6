// Package detect measures, from outside the daemon, when refresherd records
// a change: it reads the daemon's in-memory state of a view every few
// milliseconds (GET /status: pending_changes and in_progress, the state
// behind refresherd_pending_changes and refresherd_refresh_in_progress on
// /metrics) and finds the read intervals in which a change event happened.
//
// pending_changes counts the change events (a notification, a drain of the
// change log that found rows, a poll that saw the counters move) since the
// last refresh started, and falls to 0 when a refresh starts, together with
// in_progress turning on. So an interval between two reads holds a change
// event when pending_changes rose, or when a refresh started in it (in
// progress turned on, or pending_changes fell) and pending_changes is above
// 0 after it. An event that came just before a refresh started in the same
// interval is not seen: the interval is marked Hidden. A failed refresh
// gives its changes back to pending_changes, which then rises without an
// event; the benchmark's refreshes do not fail (it checks that the last
// one succeeded).
//
// The delay of a commit is measured to the end of the first interval with
// an event that starts after the commit (Delays) or, for a probe written
// while nothing else writes, after the statement was sent (ProbeDelay).
// The event lies somewhere in that interval: the resolution is one read
// interval.
package detect

import (
	"context"
	"slices"
	"sort"
	"sync"
	"time"
)

// Sample is one read of the daemon's state. It was read somewhere between
// Req (request sent) and Resp (response received).
type Sample struct {
	Req, Resp  time.Time
	Pending    int64
	InProgress bool
}

// Interval says what happened between two consecutive reads.
type Interval int

const (
	// Quiet: no change event visible.
	Quiet Interval = iota
	// Event: at least one change event happened in the interval.
	Event
	// Hidden: a refresh started and no event is visible after it; one may
	// have come before it.
	Hidden
)

// Classify tells what happened between reads a and b (a first).
func Classify(a, b Sample) Interval {
	reset := b.Pending < a.Pending || (!a.InProgress && b.InProgress)
	switch {
	case b.Pending > a.Pending, reset && b.Pending > 0:
		return Event
	case reset:
		return Hidden
	}
	return Quiet
}

// Delays attributes to each commit, acknowledged at acks[k], the first
// interval (samples[i-1], samples[i]] with an event that starts after the
// acknowledgement (samples[i-1].Req >= ack), and returns samples[i].Resp -
// ack. By then the daemon had recorded a change after the commit, so its
// next refresh, which starts later, includes the commit. A commit whose own
// event reached the daemon before its acknowledgement reached the writer,
// or in the same interval, is given the next event: the delay then includes
// the time to the next change, so it over-states, never under-states.
// Commits with no such interval are counted as undetected.
func Delays(samples []Sample, acks []time.Time) (delays []time.Duration, undetected int) {
	var events []int // i: the interval (i-1, i]
	for i := 1; i < len(samples); i++ {
		if Classify(samples[i-1], samples[i]) == Event {
			events = append(events, i)
		}
	}
	for _, ack := range acks {
		k := sort.Search(len(events), func(k int) bool { return !samples[events[k]-1].Req.Before(ack) })
		if k == len(events) {
			undetected++
			continue
		}
		delays = append(delays, samples[events[k]].Resp.Sub(ack))
	}
	return delays, undetected
}

// ProbeStatus is where a probe stands.
type ProbeStatus int

const (
	// Waiting: no event since the probe was sent yet.
	Waiting ProbeStatus = iota
	// Seen: the first interval after the probe was sent holds an event.
	Seen
	// Ambiguous: a refresh started first, in an interval where an event
	// may be hidden.
	Ambiguous
)

// ProbeDelay looks for the event of a probe: one commit sent at send and
// acknowledged at ack while nothing else writes to the watched tables, so
// that any change event after send is the probe's. It is the first interval
// with an event or a hidden one that ends after send (samples[i].Resp >
// send, so an event at or after send can lie in it, and every earlier
// interval ended before send). When that interval starts after send too,
// the event is the probe's; otherwise it straddles send, and the event may
// be older (the caller made sure the daemon was quiet before: none is).
// The delay is samples[i].Resp - ack, or 0 when the daemon had the change
// before the writer had the acknowledgement.
func ProbeDelay(samples []Sample, send, ack time.Time) (time.Duration, ProbeStatus) {
	// Reads are sequential: Resp grows with i.
	first := max(sort.Search(len(samples), func(i int) bool { return samples[i].Resp.After(send) }), 1)
	for i := first; i < len(samples); i++ {
		switch Classify(samples[i-1], samples[i]) {
		case Event:
			return max(samples[i].Resp.Sub(ack), 0), Seen
		case Hidden:
			return 0, Ambiguous
		}
	}
	return 0, Waiting
}

// QuietFor reports whether the reads show no activity (an event, or a
// refresh start that may hide one) for at least d since t: the last read
// was sent d or more after the later of t and the end of the last active
// interval.
func QuietFor(samples []Sample, t time.Time, d time.Duration) bool {
	if len(samples) == 0 {
		return false
	}
	from := t
	for i := len(samples) - 1; i >= 1 && samples[i].Resp.After(t); i-- {
		if Classify(samples[i-1], samples[i]) != Quiet {
			from = samples[i].Resp
			break
		}
	}
	return !samples[len(samples)-1].Req.Before(from.Add(d))
}

// Fetch reads the view's pending change count and whether a refresh runs.
type Fetch func(ctx context.Context) (pending int64, inProgress bool, err error)

// Scraper reads the daemon's state at a fixed interval until stopped.
type Scraper struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	samples []Sample
	errs    int
	lastErr error
	changed chan struct{}
}

// Start reads with fetch every interval (the next read starts interval
// after the previous one started, or at once when it took longer).
func Start(ctx context.Context, every time.Duration, fetch Fetch) *Scraper {
	ctx, cancel := context.WithCancel(ctx)
	s := &Scraper{cancel: cancel, done: make(chan struct{}), changed: make(chan struct{})}
	go s.run(ctx, every, fetch)
	return s
}

func (s *Scraper) run(ctx context.Context, every time.Duration, fetch Fetch) {
	defer close(s.done)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		req := time.Now()
		pending, inProgress, err := fetch(ctx)
		resp := time.Now()
		if ctx.Err() != nil {
			return
		}
		s.mu.Lock()
		if err != nil {
			s.errs++
			s.lastErr = err
		} else {
			s.samples = append(s.samples, Sample{Req: req, Resp: resp, Pending: pending, InProgress: inProgress})
			close(s.changed)
			s.changed = make(chan struct{})
		}
		s.mu.Unlock()
		t.Reset(max(time.Until(req.Add(every)), 0))
	}
}

// Samples returns the reads so far.
func (s *Scraper) Samples() []Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.samples)
}

// Since returns the reads whose intervals end after t (with the read that
// starts the first of them), and how many reads there are in all.
func (s *Scraper) Since(t time.Time) (samples []Sample, total int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := sort.Search(len(s.samples), func(i int) bool { return s.samples[i].Resp.After(t) })
	return slices.Clone(s.samples[max(i-1, 0):]), len(s.samples)
}

// Wait blocks until a read newer than the n-th is in, or ctx ends.
func (s *Scraper) Wait(ctx context.Context, n int) error {
	s.mu.Lock()
	ch := s.changed
	have := len(s.samples)
	s.mu.Unlock()
	if have > n {
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-ch:
		return nil
	}
}

// Stop ends the reads and returns them, with the number of failed reads
// and the last failure.
func (s *Scraper) Stop() (samples []Sample, failed int, lastErr error) {
	s.cancel()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.samples), s.errs, s.lastErr
}

// Period is the median time between the starts of consecutive reads: the
// resolution of the delays.
func Period(samples []Sample) time.Duration {
	if len(samples) < 2 {
		return 0
	}
	gaps := make([]time.Duration, 0, len(samples)-1)
	for i := 1; i < len(samples); i++ {
		gaps = append(gaps, samples[i].Req.Sub(samples[i-1].Req))
	}
	slices.Sort(gaps)
	return gaps[len(gaps)/2]
}

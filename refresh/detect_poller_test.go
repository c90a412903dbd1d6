package refresh

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/refresherd/refresherd/config"
)

// sinkEvent is one call a detector or poller made on its sink.
type sinkEvent struct {
	kind     string // changed, missed, unseen
	mode     string
	src      config.QualifiedName
	at, seen time.Time // at is `since` for missed and unseen
}

// recordingSink records what it is told; every source counts as watched.
type recordingSink struct {
	mu     sync.Mutex
	events []sinkEvent
}

func (s *recordingSink) SourceChanged(mode string, src config.QualifiedName, at, seen time.Time) bool {
	s.add(sinkEvent{kind: "changed", mode: mode, src: src, at: at, seen: seen})
	return true
}

func (s *recordingSink) ChangesMissed(mode string, since time.Time) {
	s.add(sinkEvent{kind: "missed", mode: mode, at: since})
}

func (s *recordingSink) ChangesUnseen(mode string, since time.Time) {
	s.add(sinkEvent{kind: "unseen", mode: mode, at: since})
}

func (s *recordingSink) add(ev sinkEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, ev)
}

// take returns the events so far and forgets them.
func (s *recordingSink) take() []sinkEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.events
	s.events = nil
	return out
}

// scriptedDetector plays back poll outcomes, one per poll; after the script
// it reports success and closes done.
type scriptedDetector struct {
	script []scriptStep
	polls  int
	rounds []pollRound
	done   chan struct{}
}

type scriptStep struct {
	res pollResult
	err error
}

func (d *scriptedDetector) mode() string { return "scripted" }

func (d *scriptedDetector) blindSince(lastGood time.Time) time.Time {
	return lastGood.Add(-time.Hour) // distinguishable from lastGood
}

func (d *scriptedDetector) reset() {}

func (d *scriptedDetector) timeout() time.Duration { return time.Second }

func (d *scriptedDetector) poll(_ context.Context, r pollRound, _ changeSink) (pollResult, error) {
	d.rounds = append(d.rounds, r)
	d.polls++
	if d.polls > len(d.script) {
		if d.polls == len(d.script)+1 {
			close(d.done)
		}
		return pollResult{}, nil
	}
	st := d.script[d.polls-1]
	return st.res, st.err
}

// runScript runs a poller over the script and returns the sink's events and
// the rounds the detector saw.
func runScript(t *testing.T, active bool, script ...scriptStep) ([]sinkEvent, []pollRound) {
	t.Helper()
	d := &scriptedDetector{script: script, done: make(chan struct{})}
	sink := &recordingSink{}
	src := config.QualifiedName{Schema: "public", Name: "src"}
	p := &poller{
		d:       d,
		sink:    sink,
		plan:    func() watchPlan { return watchPlan{sources: []config.QualifiedName{src}, every: time.Millisecond} },
		active:  func() bool { return active },
		log:     zaptest.NewLogger(t),
		backoff: Backoff{Base: time.Millisecond, Max: 2 * time.Millisecond},
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { p.run(ctx) })
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		t.Error("script did not finish")
	}
	cancel()
	wg.Wait()
	return sink.take(), d.rounds
}

func kindsOf(evs []sinkEvent) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.kind)
	}
	return out
}

func TestPollerFirstPoll(t *testing.T) {
	lost := scriptStep{res: pollResult{lost: true}}
	t.Run("baseline before any refresh may run is covered by the term's catch-up", func(t *testing.T) {
		evs, rounds := runScript(t, false, lost)
		if len(evs) != 0 {
			t.Errorf("events %v, want none", kindsOf(evs))
		}
		if !rounds[0].prev.IsZero() || rounds[1].prev != rounds[0].start {
			t.Errorf("rounds' prev: %v, %v; want zero, then the first poll's start", rounds[0].prev, rounds[1].prev)
		}
	})
	t.Run("baseline after refreshes may have run catches up", func(t *testing.T) {
		evs, _ := runScript(t, true, lost)
		if !slices.Equal(kindsOf(evs), []string{"missed"}) {
			t.Fatalf("events %v, want [missed]", kindsOf(evs))
		}
	})
	t.Run("a first poll that lost nothing reports nothing", func(t *testing.T) {
		if evs, _ := runScript(t, true, scriptStep{}); len(evs) != 0 {
			t.Errorf("events %v, want none", kindsOf(evs))
		}
	})
}

func TestPollerErrors(t *testing.T) {
	fail := scriptStep{err: errors.New("connection refused")}
	t.Run("blind from the last good poll, one catch-up after recovery", func(t *testing.T) {
		evs, rounds := runScript(t, true, scriptStep{}, fail, fail, fail, scriptStep{})
		if !slices.Equal(kindsOf(evs), []string{"unseen", "missed"}) {
			t.Fatalf("events %v, want [unseen missed]", kindsOf(evs))
		}
		want := rounds[0].start.Add(-time.Hour) // blindSince(last good poll)
		for _, ev := range evs {
			if !ev.at.Equal(want) || ev.mode != "scripted" {
				t.Errorf("%s since %v (mode %s), want since %v", ev.kind, ev.at, ev.mode, want)
			}
		}
		// After recovery, the next poll compares with the recovered one.
		if got := rounds[5].prev; got != rounds[4].start {
			t.Errorf("prev after recovery = %v, want %v", got, rounds[4].start)
		}
	})
	t.Run("failures before the first good poll of a term are covered", func(t *testing.T) {
		evs, _ := runScript(t, false, fail, fail, scriptStep{res: pollResult{lost: true}})
		if len(evs) != 0 {
			t.Errorf("events %v, want none", kindsOf(evs))
		}
	})
	t.Run("failures before the first good poll while refreshes run", func(t *testing.T) {
		evs, _ := runScript(t, true, fail, scriptStep{})
		if !slices.Equal(kindsOf(evs), []string{"unseen", "missed"}) {
			t.Fatalf("events %v, want [unseen missed]", kindsOf(evs))
		}
	})
	t.Run("a loss between good polls catches up", func(t *testing.T) {
		evs, rounds := runScript(t, false, scriptStep{}, scriptStep{res: pollResult{lost: true}})
		if !slices.Equal(kindsOf(evs), []string{"missed"}) {
			t.Fatalf("events %v, want [missed]", kindsOf(evs))
		}
		if want := rounds[0].start.Add(-time.Hour); !evs[0].at.Equal(want) {
			t.Errorf("missed since %v, want %v", evs[0].at, want)
		}
	})
}

func TestPollerIdlesWithoutViews(t *testing.T) {
	d := &scriptedDetector{done: make(chan struct{})}
	p := &poller{
		d:       d,
		sink:    &recordingSink{},
		plan:    func() watchPlan { return watchPlan{every: time.Millisecond} },
		active:  func() bool { return true },
		log:     zaptest.NewLogger(t),
		backoff: Backoff{Base: time.Millisecond, Max: time.Millisecond},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	p.run(ctx)
	if d.polls != 0 {
		t.Errorf("%d polls without a view to watch", d.polls)
	}
}

func TestWatchPlan(t *testing.T) {
	ctx := context.Background()
	_ = ctx
	mk := func(name, mode string, every time.Duration, srcs ...string) config.View {
		v := config.View{Name: config.QualifiedName{Schema: "public", Name: name}}
		v.ChangeDetection, v.PollInterval = mode, every
		for _, s := range srcs {
			v.Sources = append(v.Sources, config.QualifiedName{Schema: "public", Name: s})
		}
		return v
	}
	e := newTestEngine(t, nil,
		mk("a", config.DetectStats, time.Second, "t2", "t1"),
		mk("b", config.DetectStats, 300*time.Millisecond, "t1", "t3"),
		mk("c", config.DetectChangelog, 50*time.Millisecond, "t9"),
		mk("d", config.DetectNotify, time.Millisecond, "t1"),
	)
	wp := e.watchPlan(config.DetectStats)
	var names []string
	for _, s := range wp.sources {
		names = append(names, s.Name)
	}
	if !slices.Equal(names, []string{"t1", "t2", "t3"}) || wp.every != 300*time.Millisecond {
		t.Errorf("stats plan: sources %v every %v; want [t1 t2 t3] every 300ms", names, wp.every)
	}
	if wp := e.watchPlan(config.DetectChangelog); len(wp.sources) != 1 || wp.every != 50*time.Millisecond {
		t.Errorf("changelog plan: %+v", wp)
	}
	if wp := e.watchPlan("other"); len(wp.sources) != 0 {
		t.Errorf("unused mode plan: %+v", wp)
	}
}

// TestPollerNextRingGap: a ring after a poll the timer started, or one
// outside the stream window after a rung poll, is answered at once; one
// within the window after a rung poll waits until min(every, ringGap) after
// that poll's start, so a stream of rings cannot poll faster. Waits are
// bounded from below only, or by an hour that the 10 s context would cut
// short: a slow machine cannot fail them.
func TestPollerNextRingGap(t *testing.T) {
	cases := []struct {
		name            string
		every, gap, win time.Duration
		rung, ring      bool
		minWait         time.Duration
	}{
		{name: "ring after a timed poll: at once, not after the gap", every: time.Hour, gap: time.Hour, win: time.Hour, ring: true},
		{name: "ring at once after a rung poll: after the gap", every: time.Hour, gap: 150 * time.Millisecond, win: time.Hour, rung: true, ring: true, minWait: 150 * time.Millisecond},
		{name: "ring at once after a rung poll, poll_interval shorter than the gap", every: 60 * time.Millisecond, gap: time.Hour, win: time.Hour, rung: true, ring: true, minWait: 60 * time.Millisecond},
		// A ring that comes later than a window cannot be timed here
		// without racing the scheduler; a zero window puts every ring
		// outside it.
		{name: "ring after a rung poll, outside the window: at once", every: time.Hour, gap: time.Hour, win: 0, rung: true, ring: true},
		{name: "no ring: the fallback", every: 80 * time.Millisecond, gap: 10 * time.Millisecond, win: time.Hour, rung: true, minWait: 80 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			wake := make(chan struct{}, 1)
			if tc.ring {
				wake <- struct{}{}
			}
			start := time.Now()
			ringing, ok := (&poller{wake: wake, ringGap: tc.gap, streamWindow: tc.win}).next(ctx, start, tc.every, tc.rung)
			if waited := time.Since(start); !ok || ringing != tc.ring || waited < tc.minWait {
				t.Fatalf("next = (ringing %v, ok %v) after %s, want (%v, true) after at least %s", ringing, ok, waited, tc.ring, tc.minWait)
			}
		})
	}
	t.Run("ends with its context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, ok := (&poller{ringGap: time.Hour, streamWindow: time.Hour}).next(ctx, time.Now(), time.Hour, true); ok {
			t.Fatal("next went on after its context ended")
		}
	})
}

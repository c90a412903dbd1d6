package detect

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func ms(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }

// reads builds samples every 10 ms (read from 10k to 10k+2 ms) with the given
// pending counts, no refresh running.
func reads(pending ...int64) []Sample {
	out := make([]Sample, len(pending))
	for i, p := range pending {
		out[i] = Sample{Req: ms(10 * i), Resp: ms(10*i + 2), Pending: p}
	}
	return out
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		a, b Sample
		want Interval
	}{
		{Sample{Pending: 0}, Sample{Pending: 0}, Quiet},
		{Sample{Pending: 2}, Sample{Pending: 2}, Quiet},
		{Sample{Pending: 2}, Sample{Pending: 3}, Event},
		{Sample{Pending: 3}, Sample{Pending: 1}, Event},                    // reset, then an event
		{Sample{Pending: 3}, Sample{Pending: 0}, Hidden},                   // reset; an event may have come before it
		{Sample{Pending: 3}, Sample{Pending: 3, InProgress: true}, Event},  // reset, then three events
		{Sample{Pending: 0}, Sample{Pending: 0, InProgress: true}, Hidden}, // a refresh started
		{Sample{InProgress: true}, Sample{InProgress: true}, Quiet},        // one refresh running
		{Sample{Pending: 1, InProgress: true}, Sample{Pending: 1}, Quiet},  // it ended
		{Sample{Pending: 1, InProgress: true}, Sample{Pending: 2}, Event},  // it ended; an event
		{Sample{Pending: 4, InProgress: true}, Sample{Pending: 0}, Hidden}, // ended, another started
		{Sample{Pending: 0, InProgress: true}, Sample{Pending: 0}, Quiet},  // ended
		{Sample{Pending: 0, InProgress: false}, Sample{Pending: 5}, Event}, // five events
		{Sample{Pending: 9, InProgress: false}, Sample{Pending: 9}, Quiet}, // nothing
		{Sample{Pending: 9, InProgress: true}, Sample{Pending: 9, InProgress: true}, Quiet},
	} {
		if got := Classify(c.a, c.b); got != c.want {
			t.Errorf("Classify(%+v, %+v) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

func TestDelays(t *testing.T) {
	// Events in (10,20], (40,50] and (60,70] (after a reset in (50,60] that
	// may hide one), none after.
	s := reads(0, 0, 1, 1, 1, 2, 0, 1, 1)
	acks := []time.Time{
		ms(5),  // interval (0,10] is quiet; (10,20] starts after: 22 - 5
		ms(10), // same interval: starts at the ack
		ms(11), // (10,20] starts before: next is (40,50]: 52 - 11
		ms(45), // (40,50] straddles it; (50,60] hidden; (60,70]: 72 - 45
		ms(61), // (60,70] starts before; none later
	}
	d, undetected := Delays(s, acks)
	want := []time.Duration{17 * time.Millisecond, 12 * time.Millisecond, 41 * time.Millisecond, 27 * time.Millisecond}
	if len(d) != len(want) || undetected != 1 {
		t.Fatalf("Delays = %v, %d undetected; want %v, 1", d, undetected, want)
	}
	for i := range want {
		if d[i] != want[i] {
			t.Errorf("delay %d = %v, want %v", i, d[i], want[i])
		}
	}
}

func TestProbeDelay(t *testing.T) {
	s := reads(0, 0, 0, 1, 1)
	// Sent at 12, acknowledged at 25: the event is in (20,30], 32 - 25.
	if d, st := ProbeDelay(s, ms(12), ms(25)); st != Seen || d != 7*time.Millisecond {
		t.Errorf("ProbeDelay = %v, %v; want 7ms, Seen", d, st)
	}
	// Acknowledged after the daemon had it: 0.
	if d, st := ProbeDelay(s, ms(12), ms(40)); st != Seen || d != 0 {
		t.Errorf("ProbeDelay = %v, %v; want 0, Seen", d, st)
	}
	// Sent after every event: still waiting.
	if _, st := ProbeDelay(s, ms(33), ms(35)); st != Waiting {
		t.Errorf("status %v, want Waiting", st)
	}
	// A refresh started first: ambiguous.
	s = reads(2, 2, 0, 1)
	s[2].InProgress, s[3].InProgress = true, true
	if _, st := ProbeDelay(s, ms(12), ms(15)); st != Ambiguous {
		t.Errorf("status %v, want Ambiguous", st)
	}
}

func TestQuietFor(t *testing.T) {
	s := reads(1, 1, 2, 2, 2, 2)
	// The event in (10,20] ends at 22: quiet from there.
	if !QuietFor(s, ms(15), 20*time.Millisecond) {
		t.Error("not quiet for 20 ms after the event")
	}
	if QuietFor(s, ms(15), 30*time.Millisecond) {
		t.Error("quiet for 30 ms after the event: the last read was sent 28 ms after it")
	}
	if !QuietFor(s, ms(25), 20*time.Millisecond) {
		t.Error("not quiet after the event")
	}
	if QuietFor(s, ms(25), 40*time.Millisecond) {
		t.Error("quiet beyond the last read")
	}
	if QuietFor(nil, ms(0), 0) {
		t.Error("quiet without reads")
	}
}

func TestScraper(t *testing.T) {
	var n atomic.Int64
	fail := errors.New("down")
	sc := Start(context.Background(), time.Millisecond, func(context.Context) (int64, bool, error) {
		v := n.Add(1)
		if v == 3 {
			return 0, false, fail
		}
		return v, false, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for len(sc.Samples()) < 5 {
		if err := sc.Wait(ctx, len(sc.Samples())); err != nil {
			t.Fatal(err)
		}
	}
	all := sc.Samples()
	since, total := sc.Since(all[2].Resp)
	if total < len(all) || len(since) == 0 || since[0] != all[2] {
		t.Errorf("Since(third read's end) = %d reads from %+v, %d in all; want from %+v", len(since), since, total, all[2])
	}
	samples, failed, lastErr := sc.Stop()
	if failed != 1 || !errors.Is(lastErr, fail) {
		t.Errorf("failed %d (%v), want 1 (%v)", failed, lastErr, fail)
	}
	for i := 1; i < len(samples); i++ {
		if samples[i].Req.Before(samples[i-1].Resp) || samples[i].Pending <= samples[i-1].Pending {
			t.Errorf("samples out of order: %+v then %+v", samples[i-1], samples[i])
		}
	}
	if p := Period(samples); p <= 0 {
		t.Errorf("period %v", p)
	}
}

package refresh

import (
	"testing"
	"time"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/metrics"
)

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func TestNextRefresh(t *testing.T) {
	s := config.Settings{Debounce: time.Second, MaxDelay: 5 * time.Second, ChangeDetection: config.DetectNotify}
	type event struct {
		kind string // change, catchup, blind, manual
		ms   int
	}
	tests := []struct {
		name    string
		events  []event
		now     int
		retryAt int // ms, 0 = none
		wantAt  int // ms, -1 = nothing planned
		trigger string
	}{
		{name: "clean", now: 0, wantAt: -1},
		{name: "one change waits for debounce", events: []event{{"change", 0}}, now: 100, wantAt: 1000, trigger: metrics.TriggerChange},
		{name: "burst extends debounce", events: []event{{"change", 0}, {"change", 400}, {"change", 800}}, now: 900, wantAt: 1800, trigger: metrics.TriggerChange},
		{name: "steady stream capped by max_delay", events: []event{{"change", 0}, {"change", 900}, {"change", 1800}, {"change", 2700}, {"change", 3600}, {"change", 4500}}, now: 4600, wantAt: 5000, trigger: metrics.TriggerChange},
		{name: "manual runs now even when clean", events: []event{{"manual", 0}}, now: 10, wantAt: 10, trigger: metrics.TriggerManual},
		{name: "manual beats debounce", events: []event{{"change", 0}, {"manual", 5}}, now: 10, wantAt: 10, trigger: metrics.TriggerManual},
		{name: "catch-up runs now", events: []event{{"catchup", 0}}, now: 10, wantAt: 10, trigger: metrics.TriggerCatchup},
		{name: "blind waits for catch-up", events: []event{{"blind", 0}}, now: 10, wantAt: -1},
		{name: "blind then reconnect", events: []event{{"blind", 0}, {"catchup", 2000}}, now: 2000, wantAt: 2000, trigger: metrics.TriggerCatchup},
		{name: "retry waits for backoff", events: []event{{"change", 0}}, now: 1500, retryAt: 3000, wantAt: 3000, trigger: metrics.TriggerRetry},
		{name: "retry after debounce", events: []event{{"change", 0}}, now: 100, retryAt: 500, wantAt: 1000, trigger: metrics.TriggerRetry},
		{name: "manual ignores backoff", events: []event{{"manual", 0}}, now: 100, retryAt: 9000, wantAt: 100, trigger: metrics.TriggerManual},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p pending
			for _, ev := range tt.events {
				switch ev.kind {
				case "change":
					p.change(at(ev.ms), at(ev.ms))
				case "catchup":
					p.catchup(at(ev.ms), at(ev.ms), metrics.TriggerCatchup)
				case "blind":
					p.blind(at(ev.ms), at(ev.ms))
				case "manual":
					p.manual = true
				}
			}
			var retry time.Time
			if tt.retryAt != 0 {
				retry = at(tt.retryAt)
			}
			got := p.nextRefresh(s, at(tt.now), retry)
			if tt.wantAt < 0 {
				if !got.at.IsZero() {
					t.Fatalf("planned %v (%s), want nothing", got.at.Sub(t0), got.trigger)
				}
				return
			}
			if !got.at.Equal(at(tt.wantAt)) || got.trigger != tt.trigger {
				t.Fatalf("planned at %v trigger %q, want %v %q", got.at.Sub(t0), got.trigger, at(tt.wantAt).Sub(t0), tt.trigger)
			}
		})
	}
}

func TestStalenessNeverUnderReports(t *testing.T) {
	var p pending
	if got := p.staleness(at(5000)); got != 0 {
		t.Fatalf("clean staleness = %v, want 0", got)
	}
	// A change whose transaction started at 1s, seen at 3s: age from 1s.
	p.change(at(1000), at(3000))
	// A later change does not make it look fresher.
	p.change(at(4000), at(4000))
	if got := p.staleness(at(5000)); got != 4*time.Second {
		t.Fatalf("staleness = %v, want 4s", got)
	}
	// A data time in the future (clock skew) is clamped to when it was seen.
	var q pending
	q.change(at(9000), at(2000))
	if got := q.staleness(at(3000)); got != time.Second {
		t.Fatalf("skewed staleness = %v, want 1s", got)
	}
}

func TestMergeAfterFailure(t *testing.T) {
	var taken pending
	taken.change(at(1000), at(1000))
	var during pending
	during.change(at(3000), at(3000))
	during.merge(taken)
	if during.oldest != at(1000) || during.first != at(1000) || during.last != at(3000) || during.count != 2 {
		t.Fatalf("merged = %+v", during)
	}
}

func TestScheduledTick(t *testing.T) {
	tests := []struct {
		name  string
		s     config.Settings
		dirty bool
		want  bool
	}{
		{"clean notify skips", config.Settings{ChangeDetection: config.DetectNotify}, false, false},
		{"dirty notify refreshes", config.Settings{ChangeDetection: config.DetectNotify}, true, true},
		{"refresh_unchanged refreshes", config.Settings{ChangeDetection: config.DetectNotify, RefreshUnchanged: true}, false, true},
		{"no detection always refreshes", config.Settings{ChangeDetection: config.DetectNone}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p pending
			if tt.dirty {
				p.change(t0, t0)
			}
			if got := p.scheduledTickRefreshes(tt.s); got != tt.want {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	b := Backoff{Base: 100 * time.Millisecond, Max: time.Second}
	for attempt, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 50: time.Second} {
		for range 20 {
			d := b.Delay(attempt)
			if d < want/2 || d > want {
				t.Fatalf("Delay(%d) = %v, want in [%v, %v]", attempt, d, want/2, want)
			}
		}
	}
}

func TestIndexName(t *testing.T) {
	long := "ääääääääääääääääääääääääääääääääääääääääää" // 84 bytes
	got := indexName(long)
	if len(got) > 63 {
		t.Fatalf("len %d > 63", len(got))
	}
	if got[len(got)-len("_refresherd_key"):] != "_refresherd_key" {
		t.Fatalf("suffix lost: %q", got)
	}
	if indexName("app_chargesummary") != "app_chargesummary_refresherd_key" {
		t.Fatal("short name changed")
	}
}

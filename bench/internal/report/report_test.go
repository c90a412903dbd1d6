package report

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/refresherd/refresherd/bench/internal/results"
	"github.com/refresherd/refresherd/bench/internal/stats"
	"github.com/refresherd/refresherd/bench/internal/sysinfo"
)

// losingRun builds results where refresherd loses on every figure that can lose.
func losingRun() *results.Run {
	sum := func(xs ...float64) stats.Summary { return stats.Summarize(xs) }
	size := &results.Size{
		Label: "100k", Charges: 100_000,
		Cost: []results.CostRow{
			{Method: results.MethodAggregate, Summary: sum(0.2)},
			{Method: results.MethodPlain, Summary: sum(0.3)},
			{Method: results.MethodPsqlConc, Summary: sum(1.0)},
			{Method: results.MethodDaemon, Summary: sum(1.2)},
			{Method: results.MethodWarmConc, Summary: sum(0.9)},
		},
		Reader: []results.ReaderRow{
			{Condition: "mv", Summary: sum(1)},
			{Condition: "during refresherd", Summary: sum(900)},
			{Condition: "during plain", Summary: sum(500)},
			{Condition: "plain view", Summary: sum(40)},
		},
		Freshness: []results.FreshRow{
			{System: results.SystemRefresherd, TargetRate: 50, Achieved: 20, Summary: sum(40, 70), Refreshes: 3, RefreshMean: 1, Unseen: 2, ClaimChecks: true, Violations: 1, Verified: "MISMATCH: 1 rows missing, 0 extra"},
			{System: results.SystemPgCron, TargetRate: 50, Achieved: 50, Summary: sum(30, 60)},
		},
	}
	return &results.Run{
		Profile: "quick",
		Config:  results.ConfigInfo{Debounce: time.Second, MaxDelay: 10 * time.Second},
		Sizes:   []*results.Size{size},
		Writer: &results.Writer{SizeLabel: "100k", Clients: []int{1, 32}, Modes: []results.WriterMode{
			{Mode: "none", Available: true, Median: map[int]float64{1: 1000, 32: 10000}, TPS: map[int][]float64{1: {1000}, 32: {10000}}},
			{Mode: "notify", Available: true, Median: map[int]float64{1: 990, 32: 4000}, TPS: map[int][]float64{1: {990}, 32: {4000}}},
			{Mode: "stats", Unavailable: `expected notify or none, got "stats"`},
		}},
		Idle:    &results.Idle{Seconds: 10, CPUSeconds: 1, Refreshes: 2, RSSBytes: 20 << 20},
		Stops:   []results.Stop{{What: "d", Seconds: 5, Code: 0}, {What: "e", Seconds: 5, Code: 1}},
		LoadAvg: []float64{0.5, 7},
		Machine: sysinfo.Machine{NProc: "2"},
	}
}

func TestFindingsSayWhereRefresherdLoses(t *testing.T) {
	text := strings.Join(Findings(losingRun()), "\n")
	for _, want := range []string{
		"refresherd LOSES to pg_cron on both median and p99 lag",
		"EXCEEDS even max(max_delay, R) + R",
		"2 commits were NOT visible",
		"refresherd.data_as_of claimed 1 charges before the summary showed them",
		"did not match the aggregate",
		"reached only 20 of the 50 commits/s",
		"refresherd's change trigger LIMITS the write rate",
		"MISSES the < 5% overhead target (+20.0%)",
		"refresherd's own transaction adds +33.3%: MORE than 5%",
		"SLOWER at p99 than the plain view's",
		"Readers are SLOWER at p99 during refresherd's refreshes than with none running",
		"SLOWER at p99 than during a plain REFRESH",
		"it COSTS writers up to 60% of insert throughput",
		"change_detection stats is not available in this build",
		"NOT every exit code was 0",
		"SLOW for a daemon with nothing to finish",
		"The CPUs were saturated during the run",
		"it REFRESHED 2 times while nothing changed",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("findings lack %q:\n%s", want, text)
		}
	}
}

func TestMarkdownMarksUnavailableModes(t *testing.T) {
	md := Markdown(losingRun(), nil)
	if !strings.Contains(md, "| stats | not available in this build: expected notify or none, got \"stats\" |") {
		t.Errorf("unavailable mode not shown:\n%s", md)
	}
}

// detectRun has changelog missing both its targets and stats meeting them.
func detectRun() *results.Run {
	sum := func(xs ...float64) stats.Summary { return stats.Summarize(xs) }
	row := func(rate float64, delays ...float64) results.DetectRow {
		r := results.DetectRow{Rate: rate, Delays: delays, Delay: sum(delays...)}
		if rate > 0 {
			r.Achieved, r.Fresh, r.ClaimChecks = rate, sum(1, 2), true
		}
		return r
	}
	return &results.Run{
		Profile: "quick",
		Writer: &results.Writer{SizeLabel: "100k", Rounds: 3, Duration: 30 * time.Second, Clients: []int{1, 8, 32}, Modes: []results.WriterMode{
			{Mode: "none", Available: true, Median: map[int]float64{1: 1000, 8: 4000, 32: 4000}},
			// Per-round ratios (against the baseline run next to it) decide,
			// not the ratio of the medians; stats has none (older results)
			// and falls back to the medians.
			{Mode: "changelog", Available: true, Median: map[int]float64{1: 990, 8: 3200, 32: 3600},
				Ratios: map[int][]float64{1: {0.99}, 8: {0.86, 0.85, 0.9}, 32: {0.84, 0.8, 0.9}}, MedianRatio: map[int]float64{1: 0.99, 8: 0.86, 32: 0.84}},
			{Mode: "stats", Available: true, Median: map[int]float64{1: 1000, 8: 3990, 32: 4100}},
			{Mode: "notify", Available: true, Median: map[int]float64{1: 980, 8: 3800, 32: 3700},
				Ratios: map[int][]float64{1: {0.98}, 8: {0.95}, 32: {0.92}}, MedianRatio: map[int]float64{1: 0.98, 8: 0.95, 32: 0.92}},
		}},
		Detect: &results.Detect{
			SizeLabel: "100k", PollInterval: 200 * time.Millisecond, Debounce: time.Second, MaxDelay: 10 * time.Second,
			Scrape: 10 * time.Millisecond, ScrapeMedian: 11 * time.Millisecond, Window: 3 * time.Second, Tail: 1400 * time.Millisecond, Probes: 2,
			Modes: []results.DetectMode{
				// notify's target is for isolated commits only: 60 ms at 50/s
				// is no miss.
				{Mode: "notify", Available: true, Rows: []results.DetectRow{row(0, 0.001, 0.003), row(50, 0.01, 0.06)}, Verified: "view = aggregate"},
				{Mode: "changelog", Available: true, Rows: []results.DetectRow{row(0, 0.1, 0.2), row(50, 0.2, 0.5)}, Verified: "view = aggregate"},
				{Mode: "stats", Available: true, Rows: []results.DetectRow{row(0, 0.1, 0.2), row(50, 0.5, 1.1)}, Verified: "view = aggregate"},
			},
		},
	}
}

func TestDetectFindingsStateTargets(t *testing.T) {
	text := strings.Join(Findings(detectRun()), "\n")
	for _, want := range []string{
		"Change detection (notify, 100k): detection delay median 2 ms, p99 3 ms for isolated commits; median 35 ms, p99 60 ms at 50 commits/s",
		"detection target p99 <= 50 ms for a lone change (issue 13) met for isolated commits.",
		"Writer target for notify (issue 13: keep >= 90% of the no-trigger TPS at 8 and 32 clients): keeps 95.0% at 8 clients (median TPS 3800 vs 4000), 92.0% at 32 clients (median TPS 3700 vs 4000)",
		"it MISSES the detection target p99 <= poll_interval + 100 ms (300 ms) at 50 commits/s (p99 500 ms)",
		"keeps 86.0% at 8 clients (median TPS 3200 vs 4000), 84.0% at 32 clients (median TPS 3600 vs 4000) in the writer section (100k, median of 3 round(s) of 30s, each against the baseline run next to it): it MISSES the target at 32 clients; not settled at 8 and 32 clients: too few rounds for a 95% interval of the median (6 at least).",
		"8 clients 3200 vs 4000 TPS (0.86x), 32 clients 3600 vs 4000 TPS (0.84x)",
		"detection target p99 <= the documented bound, statistics flush delay 10 s + poll_interval (10.20 s) met for isolated commits, at 50 commits/s",
		"Writer target for stats (issue 6: keep >= 98% of the no-trigger TPS at 8 and 32 clients): keeps 99.8% at 8 clients",
		"target met; not settled at 8 and 32 clients: too few rounds",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("findings lack %q:\n%s", want, text)
		}
	}
	if n := strings.Count(text, "Writer target for"); n != 3 {
		t.Errorf("%d writer target sentences in the findings, want 3:\n%s", n, text)
	}
}

// TestWriterTargetInterval: with enough rounds the finding gives the 95%
// interval of the median ratio and says when it straddles the target, so a
// verdict within the noise is not read as settled.
func TestWriterTargetInterval(t *testing.T) {
	spread := func(center float64) []float64 { // 12 rounds, 0.01 apart around center
		xs := make([]float64, 12)
		for i := range xs {
			xs[i] = center + (float64(i)-5.5)*0.01
		}
		return xs
	}
	for _, tc := range []struct {
		name       string
		at32       []float64
		want, lack []string
	}{
		{"clearly above", spread(0.96),
			[]string{"96.0% at 32 clients (median TPS 3700 vs 4000, 95% interval of the median 92.5-99.5%)", "target met."},
			[]string{"not settled", "MISSES"}},
		{"clearly below", spread(0.84),
			[]string{"84.0% at 32 clients (median TPS 3700 vs 4000, 95% interval of the median 80.5-87.5%)", "it MISSES the target at 32 clients."},
			[]string{"not settled"}},
		{"straddles", spread(0.905),
			[]string{"90.5% at 32 clients", "target met; not settled at 32 clients: the 95% interval of the median straddles the target"},
			[]string{"MISSES"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run := detectRun()
			for i := range run.Writer.Modes {
				if m := &run.Writer.Modes[i]; m.Mode == "notify" {
					m.Ratios = map[int][]float64{8: spread(0.96), 32: tc.at32}
					m.MedianRatio = map[int]float64{8: stats.Median(m.Ratios[8]), 32: stats.Median(tc.at32)}
				}
			}
			line := tpsTarget(run, "notify")
			for _, w := range tc.want {
				if !strings.Contains(line, w) {
					t.Errorf("lacks %q:\n%s", w, line)
				}
			}
			for _, l := range tc.lack {
				if strings.Contains(line, l) {
					t.Errorf("has %q:\n%s", l, line)
				}
			}
		})
	}
}

func TestDetectSectionTable(t *testing.T) {
	run := detectRun()
	run.Detect.Modes = append(run.Detect.Modes, results.DetectMode{Mode: "bogus", Unavailable: "unknown mode"})
	md := Markdown(run, nil)
	i := strings.Index(md, "## 5. Change detection\n")
	if i < 0 {
		t.Fatalf("no change-detection section:\n%s", md)
	}
	sec := md[i:]
	sec = sec[:strings.Index(sec, "## 6.")]
	var rows []string
	for _, l := range strings.Split(sec, "\n") {
		if strings.HasPrefix(l, "|") {
			rows = append(rows, l)
		}
	}
	if len(rows) != 2+6+1 {
		t.Fatalf("%d table lines, want 9:\n%s", len(rows), sec)
	}
	width := strings.Count(rows[0], "|")
	for _, r := range rows {
		if strings.Count(r, "|") != width {
			t.Errorf("%d cells, header has %d: %s", strings.Count(r, "|")-1, width-1, r)
		}
	}
	for _, want := range []string{
		"| changelog | 50/s (achieved 50.0/s) | 2 | 350 ms | 500 ms | 500 ms | 0 / 0 | p99 <= 300 ms (poll_interval + 100 ms) | MISSED |",
		"| notify | isolated probes | 2 | 2 ms | 3 ms | 3 ms | 0 / 0 | p99 <= 50 ms (lone change) | met |",
		"| notify | 50/s (achieved 50.0/s) | 2 | 35 ms | 60 ms | 60 ms | 0 / 0 | none set | - |",
		"| bogus | not available in this build: unknown mode |",
	} {
		if !strings.Contains(sec, want) {
			t.Errorf("section lacks %q:\n%s", want, sec)
		}
	}
}

// A run saved as results.gob renders the same report again, NaN included.
func TestSaveLoadRendersTheSameReport(t *testing.T) {
	run := losingRun()
	run.Incremental = &results.Incremental{Rates: []float64{500}, Runs: []*results.IncRun{{
		Shape: results.ShapeDistinct, Label: "10M", Charges: 10_000_000,
		Freshness: []results.FreshRow{{System: results.StrategyIncremental, TargetRate: 500, Lags: []float64{0.2, 1.5}, Summary: stats.Summarize([]float64{0.2, 1.5})}},
		Reader:    []results.ReaderRow{{Condition: "x", Summary: stats.Summarize(nil)}},
		Verify:    []results.Verify{{Strategy: results.StrategyIncremental, Exit: 0, Mismatched: 0}},
	}}}
	path := filepath.Join(t.TempDir(), "results.gob")
	if err := Save(path, run); err != nil {
		t.Fatal(err)
	}
	back, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := Markdown(run, nil), Markdown(back, nil); a != b {
		t.Fatalf("report differs after a round trip:\n%s\n---\n%s", a, b)
	}
	md := Markdown(back, nil)
	for _, want := range []string{
		"incremental lag p99 <= 1.00 s at 10M charges and 500 commits/s, distinct shape: MISSED (p99 1.50 s",
		"demo shape: NOT MEASURED",
		"verify mismatches 0: MET",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

// TestTargetBoundFinding: with a target_lag the sustained bound is issue
// 13's max(target, debounce + 2R) + 0.5 s, and the refresh timeline says
// what made the worst lag.
func TestTargetBoundFinding(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	// Three refreshes of 3, 4 and 3 s with 0.4 and 0.5 s between them:
	// the worst pair runs from 3.4 to 7.4 + 0.5 + 3 = 10.9 s, 7.5 s.
	tl := []results.Refresh{{Started: at(0), Finished: at(3)}, {Started: at(3.4), Finished: at(7.4)}, {Started: at(7.9), Finished: at(10.9)}}
	c := results.ConfigInfo{Debounce: time.Second, MaxDelay: 10 * time.Second, TargetLag: 2 * time.Second, MaxLoad: 0.9}
	sum := func(xs ...float64) stats.Summary { return stats.Summarize(xs) }
	for _, tc := range []struct {
		name string
		c    results.ConfigInfo
		row  results.FreshRow
		want []string
	}{
		{"met within the target", c,
			results.FreshRow{Summary: sum(0.5, 1.8), RefreshMean: 0.3, Refreshes: 3},
			[]string{"within the 2s target_lag", "= 2.50 s: MET"}},
		{"back to back, met", c,
			results.FreshRow{Summary: sum(5, 7.6), RefreshMean: 3.33, Refreshes: 3, Timeline: tl},
			[]string{"over the 2s target_lag by 5.60 s", "debounce + 2R (7.68 s)) + 0.5 s = 8.18 s: MET", "3 refreshes took 3.00 s median, 4.00 s at most, 450 ms apart", "took 7.50 s"}},
		{"back to back, missed", c,
			results.FreshRow{Summary: sum(5, 9), RefreshMean: 3.33, Refreshes: 3, Timeline: tl},
			[]string{"= 8.18 s: MISSED by 820 ms"}},
		{"no target: max_delay decides", results.ConfigInfo{Debounce: time.Second, MaxDelay: 10 * time.Second},
			results.FreshRow{Summary: sum(5, 9), RefreshMean: 1, Refreshes: 3},
			[]string{"max_delay (10s) decides; it is within max(max_delay, R) + R (11.02 s)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iso, sus := bounds(tc.c, tc.row.RefreshMean)
			got := boundFinding(tc.c, tc.row, iso, sus)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("finding lacks %q:\n%s", w, got)
				}
			}
		})
	}
}

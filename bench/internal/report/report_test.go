package report

import (
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
		"The machine was busy during the run",
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

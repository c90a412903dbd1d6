// Package bench holds the benchmark harness (cmd/bench, internal/...) and
// its smoke test, which runs the quick profile end to end and checks that
// the report is complete. It asserts nothing about the figures: they
// depend on the machine.
package bench

import (
	"context"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/refresherd/refresherd/bench/internal/harness"
	"github.com/refresherd/refresherd/bench/internal/results"
)

// TestQuickBenchSmoke runs `bench -size quick`, cut down by smokeOptions,
// in-process (one to two minutes: a throwaway PostgreSQL, the daemon built
// from the tree, pgbench, pg_cron) when REFRESHERD_BENCH_SMOKE=1.
// REFRESHERD_BENCH_OUT keeps the results in that folder instead of a temp
// dir.
func TestQuickBenchSmoke(t *testing.T) {
	if os.Getenv("REFRESHERD_BENCH_SMOKE") != "1" {
		t.Skip("set REFRESHERD_BENCH_SMOKE=1 to run the cut-down quick benchmark (one to two minutes)")
	}
	out := os.Getenv("REFRESHERD_BENCH_OUT")
	if out == "" {
		out = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	run, err := harness.Run(ctx, smokeOptions(out, t.Logf))
	if err != nil {
		t.Fatalf("quick benchmark: %v", err)
	}
	for _, p := range run.Problems {
		t.Errorf("problem reported: %s", p)
	}
	checkResults(t, run)

	md, err := os.ReadFile(filepath.Join(out, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	report := string(md)
	for _, h := range []string{"## Findings", "## 1. Freshness lag", "## 2. Refresh cost", "## 3. Reader impact", "## 4. Writer impact", "## 5. Change detection", "## 6. Idle and footprint",
		"## 7. Incremental strategy (issue 12)", "### Targets", "### Freshness lag", "### Apply time per round against touched groups", "### Readers during rounds", "### Writers", "### Verification", "### Not run"} {
		if !strings.Contains(report, "\n"+h+"\n") {
			t.Errorf("report has no section %q", h)
		}
	}
	checkTables(t, report)
	pngs := []string{"freshness_lag_" + strings.ToLower(harness.SizeLabel(smokeSize)) + ".png", "refresh_duration.png", "reader_latency.png", "writer_tps.png", "inc_apply_time.png", "inc_writer_tps_1.png"}
	for _, r := range run.Incremental.Runs {
		pngs = append(pngs, "inc_lag_"+r.Shape+"_"+strings.ToLower(r.Label)+".png")
	}
	for _, name := range pngs {
		checkPNG(t, filepath.Join(out, name))
		if !strings.Contains(report, "]("+name+")") {
			t.Errorf("report does not show %s", name)
		}
	}
}

// smokeSize is the smoke run's data size (charges).
const smokeSize = 20_000

// smokeOptions is the quick profile cut to the least that still runs every
// section and fills every table: the smoke proves the harness works end to
// end, and its figures are not read (bench -size quick keeps the quick
// profile's sizes and windows). No 32-client writer run: on a loaded 2-core
// machine its connections alone can outlast a short pgbench run, which then
// reports no TPS. fsync is off so that a disk busy with other work cannot
// starve a short run of commits either.
func smokeOptions(out string, logf func(string, ...any)) harness.Options {
	return harness.Options{
		Profile:     "quick",
		Out:         out,
		CommandLine: "go test ./bench -run TestQuickBenchSmoke (REFRESHERD_BENCH_SMOKE=1)",
		Logf:        logf,

		Sizes:             []int{smokeSize},
		CostRounds:        2,
		ReaderIdle:        500 * time.Millisecond,
		ReaderRefreshes:   1,
		FreshWindow:       2 * time.Second,
		CronMinWindow:     3 * time.Second,
		CronMaxWindow:     12 * time.Second,
		WriterDuration:    time.Second,
		WriterClients:     []int{1, 8},
		DetectProbes:      2,
		IncSizes:          []int{5_000},
		IncWindow:         time.Second,
		IncSweep:          []int{10, 100},
		IncWriterDuration: time.Second,
		PGSettings:        map[string]string{"fsync": "off", "full_page_writes": "off"},
	}
}

// checkResults checks that every measurement produced samples.
func checkResults(t *testing.T, run *results.Run) {
	t.Helper()
	if len(run.Sizes) != 1 {
		t.Fatalf("%d sizes, want 1", len(run.Sizes))
	}
	s := run.Sizes[0]
	if len(s.Cost) != 5 {
		t.Errorf("%d refresh-cost methods, want 5", len(s.Cost))
	}
	for _, c := range s.Cost {
		if c.Summary.N == 0 {
			t.Errorf("refresh cost %s: no sample", c.Method)
		}
	}
	if len(s.Reader) != 4 {
		t.Errorf("%d reader conditions, want 4", len(s.Reader))
	}
	for _, r := range s.Reader {
		if r.Summary.N == 0 {
			t.Errorf("reader condition %s: no sample", r.Condition)
		}
	}
	seen := map[string]int{}
	for _, f := range s.Freshness {
		seen[f.System]++
		if f.Summary.N == 0 || f.Unseen != 0 {
			t.Errorf("freshness %s at %g/s: %d lags, %d unseen", f.System, f.TargetRate, f.Summary.N, f.Unseen)
		}
		if f.ClaimChecks && f.Violations != 0 {
			t.Errorf("freshness %s at %g/s: refresherd.data_as_of contradicted by the content %d times", f.System, f.TargetRate, f.Violations)
		}
		if strings.HasPrefix(f.Verified, "MISMATCH") || strings.HasPrefix(f.Verified, "not checked") {
			t.Errorf("freshness %s at %g/s: %s", f.System, f.TargetRate, f.Verified)
		}
	}
	if seen[results.SystemRefresherd] != 2 || seen[results.SystemPgCron] != 2 {
		t.Errorf("freshness runs by system: %v, want 2 each", seen)
	}
	if run.Writer == nil {
		t.Fatal("no writer results")
	}
	for _, m := range run.Writer.Modes {
		if !m.Available {
			t.Logf("mode %s not available in this build: %s", m.Mode, m.Unavailable)
			continue
		}
		for _, c := range run.Writer.Clients {
			if len(m.TPS[c]) == 0 || m.Median[c] <= 0 {
				t.Errorf("writer mode %s, %d clients: no TPS", m.Mode, c)
			}
			// Every round pairs the mode with a baseline run next to it.
			if len(m.Ratios[c]) != run.Writer.Rounds || !(m.MedianRatio[c] > 0) {
				t.Errorf("writer mode %s, %d clients: per-round ratios %v (median %v), want %d", m.Mode, c, m.Ratios[c], m.MedianRatio[c], run.Writer.Rounds)
			}
		}
	}
	checkDetect(t, run)
	checkIncremental(t, run)
	if run.Idle == nil || run.Idle.Seconds <= 0 || run.Idle.RSSBytes <= 0 {
		t.Errorf("idle section incomplete: %+v", run.Idle)
	}
}

// checkDetect checks the change-detection section: every mode but none,
// isolated probes and one sustained rate each (quick mode), with delays,
// no commit left undetected or unseen, and the view equal to the aggregate.
func checkDetect(t *testing.T, run *results.Run) {
	t.Helper()
	d := run.Detect
	if d == nil {
		t.Error("no change-detection results")
		return
	}
	if d.ScrapeMedian <= 0 {
		t.Errorf("change detection: read interval not measured")
	}
	var modes []string
	for _, m := range d.Modes {
		modes = append(modes, m.Mode)
		if !m.Available {
			t.Logf("change detection: mode %s not available in this build: %s", m.Mode, m.Unavailable)
			continue
		}
		if len(m.Rows) != 2 {
			t.Errorf("change detection, mode %s: %d rows, want 2 (probes and one rate)", m.Mode, len(m.Rows))
		}
		for _, r := range m.Rows {
			where := fmt.Sprintf("mode %s, rate %g (0: probes)", m.Mode, r.Rate)
			if r.Delay.N == 0 || r.Undetected != 0 {
				t.Errorf("change detection, %s: %d delays, %d undetected", where, r.Delay.N, r.Undetected)
			}
			if r.Rate == 0 {
				continue
			}
			if r.Fresh.N == 0 || r.Unseen != 0 {
				t.Errorf("change detection, %s: %d lags, %d unseen", where, r.Fresh.N, r.Unseen)
			}
			if r.ClaimChecks && r.Violations != 0 {
				t.Errorf("change detection, %s: refresherd.data_as_of contradicted by the content %d times", where, r.Violations)
			}
		}
		if m.Verified != "view = aggregate" {
			t.Errorf("change detection, mode %s: content check: %s", m.Mode, m.Verified)
		}
	}
	if want := []string{"notify", "changelog", "stats"}; !slices.Equal(modes, want) {
		t.Errorf("change detection modes %v, want %v", modes, want)
	}
}

// checkIncremental checks the incremental section at its tiny size: the
// distinct shape, every strategy the quick profile asks for (pg_ivm only when it is
// available, and then the report must say why not), freshness at every
// rate with no commit unseen, rounds with touched groups from the runs and
// the sweep, readers during rounds, `refresherd verify` equal, and the
// writer test's modes with per-round ratios.
func checkIncremental(t *testing.T, run *results.Run) {
	t.Helper()
	inc := run.Incremental
	if inc == nil {
		t.Fatal("no incremental section")
	}
	if len(inc.Runs) != 1 || inc.Runs[0].Shape != results.ShapeDistinct {
		t.Fatalf("incremental section: %d data sets, want 1 (the distinct shape)", len(inc.Runs))
	}
	systems := []string{results.StrategyIncremental, results.StrategyFull, results.StrategyPgIvm}
	if !inc.PgIvmOK {
		t.Logf("pg_ivm not available: %s", inc.PgIvm)
		systems = systems[:2]
		if !strings.HasPrefix(inc.PgIvm, "not available: ") {
			t.Errorf("pg_ivm: %q does not say why it is not available", inc.PgIvm)
		}
	}
	for _, r := range inc.Runs {
		where := r.Shape + " " + r.Label
		if r.Groups <= 0 || r.LoadSeconds <= 0 || r.Index == "" || r.PopulateSeconds <= 0 {
			t.Errorf("incremental %s: groups %d, load %v, index %q, population %v", where, r.Groups, r.LoadSeconds, r.Index, r.PopulateSeconds)
		}
		for _, sys := range systems {
			for _, rate := range inc.Rates {
				n := 0
				for _, f := range r.Freshness {
					if f.System == sys && f.TargetRate == rate {
						n++
						if f.Summary.N == 0 || f.Unseen != 0 {
							t.Errorf("incremental %s, %s at %g/s: %d lags, %d unseen", where, sys, rate, f.Summary.N, f.Unseen)
						}
					}
				}
				if n != 1 {
					t.Errorf("incremental %s, %s at %g/s: %d freshness rows, want 1", where, sys, rate, n)
				}
			}
		}
		sweep, fromRuns := 0, 0
		for _, rd := range r.Rounds {
			if rd.Groups <= 0 || rd.Seconds <= 0 {
				t.Errorf("incremental %s: round %+v", where, rd)
			}
			if rd.Source == "sweep" {
				sweep++
			} else {
				fromRuns++
			}
		}
		if sweep < len(inc.Sweep) || fromRuns == 0 {
			t.Errorf("incremental %s: %d sweep rounds (want %d), %d rounds from the freshness runs", where, sweep, len(inc.Sweep), fromRuns)
		}
		during := 0
		for _, rd := range r.Reader {
			if strings.HasPrefix(rd.Condition, results.StrategyIncremental+" at") && strings.HasSuffix(rd.Condition, "during rounds") && rd.Summary.N > 0 {
				during++
			}
		}
		if during == 0 {
			t.Errorf("incremental %s: no reader sample during a round", where)
		}
		verified := false
		for _, v := range r.Verify {
			if v.Strategy == results.StrategyIncremental {
				verified = true
				if v.Exit != 0 || v.Mismatched != 0 {
					t.Errorf("incremental %s: refresherd verify exit %d, %d mismatched: %s", where, v.Exit, v.Mismatched, v.Output)
				}
			} else if v.Mismatched != 0 {
				t.Errorf("incremental %s: %s content check: %s", where, v.Strategy, v.Output)
			}
		}
		if !verified {
			t.Errorf("incremental %s: refresherd verify did not run", where)
		}
	}
	if len(inc.Writers) != 1 {
		t.Fatalf("incremental section: %d writer tests, want 1", len(inc.Writers))
	}
	w := inc.Writers[0]
	want := []string{results.BaselineMode, "capture", "incremental"}
	if inc.PgIvmOK {
		want = append(want, "pg_ivm")
	}
	var modes []string
	for _, m := range w.Modes {
		modes = append(modes, m.Mode)
		for _, c := range w.Clients {
			if len(m.TPS[c]) != w.Rounds || !(m.MedianRatio[c] > 0) {
				t.Errorf("incremental writer test, %s, %d clients: TPS %v, median ratio %v", m.Mode, c, m.TPS[c], m.MedianRatio[c])
			}
		}
	}
	if !slices.Equal(modes, want) {
		t.Errorf("incremental writer test modes %v, want %v", modes, want)
	}
}

// checkTables checks every Markdown table: a header, a separator, at least
// one row, as many cells in each row as in the header, and no empty cell
// or missing figure ("n/a") in the rows.
func checkTables(t *testing.T, md string) {
	t.Helper()
	lines := strings.Split(md, "\n")
	tables := 0
	for i := 0; i < len(lines); {
		if !strings.HasPrefix(lines[i], "|") {
			i++
			continue
		}
		start := i
		for i < len(lines) && strings.HasPrefix(lines[i], "|") {
			i++
		}
		tables++
		block := lines[start:i]
		if len(block) < 3 {
			t.Errorf("table at line %d has no rows:\n%s", start+1, strings.Join(block, "\n"))
			continue
		}
		width := len(cells(block[0]))
		for j, row := range block[2:] {
			cs := cells(row)
			if len(cs) != width {
				t.Errorf("line %d: %d cells, header has %d: %s", start+3+j, len(cs), width, row)
			}
			for _, c := range cs {
				if c == "" || c == "n/a" || strings.Contains(c, "NaN") {
					t.Errorf("line %d: empty or missing cell %q: %s", start+3+j, c, row)
					break
				}
			}
		}
	}
	if tables < 8 {
		t.Errorf("report has %d tables, want at least 8", tables)
	}
}

// cells splits a Markdown table row, honouring escaped pipes.
func cells(row string) []string {
	row = strings.TrimSpace(row)
	row = strings.TrimPrefix(row, "|")
	row = strings.TrimSuffix(row, "|")
	var out []string
	var cur strings.Builder
	for i := 0; i < len(row); i++ {
		switch {
		case row[i] == '\\' && i+1 < len(row) && row[i+1] == '|':
			cur.WriteByte('|')
			i++
		case row[i] == '|':
			out = append(out, strings.TrimSpace(cur.String()))
			cur.Reset()
		default:
			cur.WriteByte(row[i])
		}
	}
	return append(out, strings.TrimSpace(cur.String()))
}

func checkPNG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Errorf("%s: %v", path, err)
		return
	}
	if b := img.Bounds(); b.Dx() < 100 || b.Dy() < 100 {
		t.Errorf("%s: %dx%d, too small", path, b.Dx(), b.Dy())
	}
}

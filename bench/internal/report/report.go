// Package report writes a benchmark run as Markdown (tables, each with the
// command that produced its figures, and findings generated from the
// numbers) and PNG plots.
package report

import (
	"bytes"
	"encoding/gob"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/refresherd/refresherd/bench/internal/results"
	"github.com/refresherd/refresherd/bench/internal/stats"
)

// Write writes report.md and the plots into dir.
func Write(dir string, run *results.Run) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	plots, err := writePlots(dir, run)
	if err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	// The measurements themselves, so that the report can be written again
	// from them (bench -render) without measuring again.
	if err := Save(filepath.Join(dir, "results.gob"), run); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	md := Markdown(run, plots)
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(md), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// Save writes run to path (gob: it keeps NaN, which JSON cannot).
func Save(path string, run *results.Run) error {
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(run); err != nil {
		return fmt.Errorf("save results: %w", err)
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// Load reads what Save wrote.
func Load(path string) (*results.Run, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load results: %w", err)
	}
	var run results.Run
	if err := gob.NewDecoder(bytes.NewReader(data)).Decode(&run); err != nil {
		return nil, fmt.Errorf("load results %s: %w", path, err)
	}
	return &run, nil
}

// Markdown renders the report; plots are the PNG file names by section.
func Markdown(run *results.Run, plots map[string][]string) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }

	p("# refresherd benchmark (%s)\n\n", run.Profile)
	p("Generated %s by `%s` in %s. Every figure below comes from this run; the command or SQL that produced it is given with each table.\n\n",
		run.Started.UTC().Format(time.RFC3339), run.CommandLine, run.Elapsed.Round(time.Second))
	if run.Profile == "quick" {
		p("This is the quick (CI smoke) profile: one small size, short windows and small samples. Treat its figures as a check that every measurement works, not as results; `make bench` runs the full profile.\n\n")
	}

	writeMachine(&b, run)
	findings := Findings(run)
	p("## Findings\n\n")
	if len(findings) == 0 {
		p("No comparison could be made (see the problems below).\n\n")
	}
	for _, f := range findings {
		p("- %s\n", f)
	}
	p("\n")
	if len(run.Problems) > 0 {
		p("## Problems\n\n")
		for _, pr := range run.Problems {
			p("- %s\n", pr)
		}
		p("\n")
	}

	if legacyRan(run) {
		writeFreshness(&b, run, plots["freshness"])
		writeCost(&b, run, plots["cost"])
		writeReader(&b, run, plots["reader"])
		writeWriter(&b, run, plots["writer"])
		writeDetect(&b, run)
		writeIdle(&b, run)
	}
	writeIncremental(&b, run, plots)
	if len(run.Notes) > 0 {
		p("## Notes\n\n")
		for _, n := range run.Notes {
			p("- %s\n", n)
		}
		p("\n")
	}
	return b.String()
}

func writeMachine(b *strings.Builder, run *results.Run) {
	m := run.Machine
	fmt.Fprintf(b, "## Machine and set-up\n\n| | |\n|---|---|\n")
	row := func(k, v string) { fmt.Fprintf(b, "| %s | %s |\n", k, cell(v)) }
	row("CPU (/proc/cpuinfo)", m.CPUModel)
	row("CPUs (nproc)", m.NProc)
	row("Memory (/proc/meminfo)", m.MemTotal)
	row("OS / kernel", m.OS+" / "+m.Kernel)
	row("PostgreSQL", run.PGVersion)
	row("pgbench", run.PgbenchVer)
	row("pg_cron", strings.TrimSpace(run.PgCron+" "+paren(run.PgCronSetup)))
	row("Go", m.GoVersion+" (harness built with "+m.GoRuntime+")")
	row("git commit", m.GitCommit)
	if lo, hi := minFloat(run.LoadAvg), maxFloat(run.LoadAvg); !math.IsNaN(hi) {
		row("1-minute load average at section starts (/proc/loadavg)", fmt.Sprintf("%.2f to %.2f", lo, hi))
	}
	keys := make([]string, 0, len(run.Settings))
	for k := range run.Settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var set []string
	for _, k := range keys {
		set = append(set, k+"="+run.Settings[k])
	}
	row("Server settings (throwaway cluster, internal/pgcluster)", strings.Join(set, ", "))
	c := run.Config
	row("Daemon", fmt.Sprintf("built from the tree (go build ./cmd/refresherd), run as `refresherd run --config %s` with DATABASE_URL", c.Path))
	row("Shipped view settings", fmt.Sprintf("%s: debounce %s, max_delay %s, schedule %q, concurrently %v, change_detection %s",
		c.View, c.Debounce, c.MaxDelay, c.Schedule, c.Concurrently, c.Detection))
	fmt.Fprintf(b, "\n")

	if len(run.Sizes) == 0 {
		return
	}
	fmt.Fprintf(b, "### Data (demodata.Load, deterministic, seeded)\n\n")
	fmt.Fprintf(b, "| size | charges | users | jobs | months | seed | load time | copies for pg_cron/writer test | summary rows | app_charge size | summary size |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range run.Sizes {
		fmt.Fprintf(b, "| %s | %d | %d | %d | %d | %d | %s | %s | %d | %s | %s |\n", s.Label, s.Charges, s.Users, s.Jobs, s.Months, s.Seed,
			secs(s.LoadSeconds), secs(s.CopySeconds), s.SummaryRows, bytesStr(s.TableBytes), bytesStr(s.ViewBytes))
	}
	fmt.Fprintf(b, "\nProduced by: `demodata.CreateSchema` + `demodata.Load(ctx, pool, demodata.DefaultSize(n))` (load time includes VACUUM ANALYZE); copies by `CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY`; sizes by `pg_total_relation_size`.\n")
	if run.SizeChoice != "" {
		fmt.Fprintf(b, "\nLargest size: %s.\n", run.SizeChoice)
	}
	fmt.Fprintf(b, "\nThe summary gets an index on user_id (`CREATE INDEX ... ON app_chargesummary (user_id)`) as an app filtering by user would add; pg_cron's copy gets the same indexes.\n\n")
}

// legacyRan reports whether any of sections 1-6 ran.
func legacyRan(run *results.Run) bool {
	return len(run.Sizes) > 0 || run.Writer != nil || run.Detect != nil || run.Idle != nil
}

// pollInterval is how often the freshness reader looks: a lag is only
// seen up to this much late.
const pollInterval = 0.02

// bounds returns debounce + 2R and the bound that applies under sustained
// writes, for refresh time R, each plus the poll interval. With a
// target_lag (issue 13) that is max(target_lag, debounce + 2R) + 0.5 s:
// the policy refreshes back to back when the target is out of reach.
// Without one (an older config) it is max(max_delay, R) + R: the debounce
// never elapses and max_delay decides.
func bounds(c results.ConfigInfo, r float64) (isolated, sustained float64) {
	isolated = c.Debounce.Seconds() + 2*r + pollInterval
	if c.TargetLag > 0 {
		return isolated, math.Max(c.TargetLag.Seconds(), isolated) + targetTolerance
	}
	return isolated, math.Max(c.MaxDelay.Seconds(), r) + r + pollInterval
}

// targetTolerance is what issue 13 allows over max(target, debounce + 2R).
const targetTolerance = 0.5

// sustainedLabel names the sustained bound of bounds.
func sustainedLabel(c results.ConfigInfo) string {
	if c.TargetLag > 0 {
		return "max(target,debounce+2R)+0.5s"
	}
	return "max(max_delay,R)+R"
}

// timeline summarises a run's refreshes: their durations, the gaps from one
// refresh's end to the next one's start, and the worst back-to-back pair
// (R_k + gap + R_k+1): what a change committed just after refresh k took
// its snapshot waits until refresh k+1 commits.
type timeline struct {
	n                                 int
	rMed, rMax, gapMed, gapMax, worst float64
}

func summarizeTimeline(t []results.Refresh) (timeline, bool) {
	if len(t) == 0 {
		return timeline{}, false
	}
	var rs, gaps []float64
	tl := timeline{n: len(t)}
	for i, r := range t {
		rs = append(rs, r.Seconds())
		if i > 0 {
			gaps = append(gaps, r.Started.Sub(t[i-1].Finished).Seconds())
			tl.worst = math.Max(tl.worst, r.Finished.Sub(t[i-1].Started).Seconds())
		}
	}
	sr, sg := stats.Summarize(rs), stats.Summarize(gaps)
	tl.rMed, tl.rMax, tl.gapMed, tl.gapMax = sr.Median, sr.Max, sg.Median, sg.Max
	return tl, true
}

func (tl timeline) String() string {
	if tl.n < 2 {
		return fmt.Sprintf("%d refresh of %s", tl.n, secs(tl.rMax))
	}
	return fmt.Sprintf("R %s / %s, gap %s / %s, worst pair %s", secs(tl.rMed), secs(tl.rMax), secs(tl.gapMed), secs(tl.gapMax), secs(tl.worst))
}

// runRefresh is R for a freshness run's bounds: the mean refresh time
// during the run (refreshes are slower under writes), else the quiet
// median from the refresh-cost section.
func runRefresh(s *results.Size, f *results.FreshRow) float64 {
	if f.Refreshes > 0 && f.RefreshMean > 0 {
		return f.RefreshMean
	}
	return refreshMedian(s)
}

func refreshMedian(s *results.Size) float64 {
	for _, c := range s.Cost {
		if c.Method == results.MethodDaemon {
			return c.Summary.Median
		}
	}
	return math.NaN()
}

func findFresh(s *results.Size, system string, rate float64) *results.FreshRow {
	for i := range s.Freshness {
		if s.Freshness[i].System == system && s.Freshness[i].TargetRate == rate {
			return &s.Freshness[i]
		}
	}
	return nil
}

func writeFreshness(b *strings.Builder, run *results.Run, plots []string) {
	fmt.Fprintf(b, "## 1. Freshness lag\n\n")
	fmt.Fprintf(b, "Time from a charge's commit (acknowledged to the writer: demodata.Writer.OnCommit) until a separate connection, polling every 20 ms, sees it in the summary's content: the charge's (user, job, month) row must reach the group's pre-run total plus every run charge of that group up to this one. Writes are sustained single-row autocommit INSERTs. Ratios are refresherd / pg_cron at the same size and rate. Bounds use R = refresherd's mean refresh time during that run (refreshes slow down under writes; the quiet median of section 2 when none ran) and add the 20 ms poll interval: debounce + 2R is what back-to-back refreshes allow an isolated change. %s\n\n", sustainedText(run.Config))
	fmt.Fprintf(b, "| size | system | target rate | achieved | window | commits | median | p99 | max | median ratio | p99 ratio | debounce+2R | %s | refreshes (mean time) | refreshes in the run: R median / max, gap median / max, worst pair | daemon CPU | unseen | data_as_of claims contradicted | content check |\n", sustainedLabel(run.Config))
	fmt.Fprintf(b, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	var cmds []string
	for _, s := range run.Sizes {
		for _, f := range sortedFresh(s.Freshness) {
			iso, sus := bounds(run.Config, runRefresh(s, &f))
			medRatio, p99Ratio := "-", "-"
			if f.System == results.SystemRefresherd {
				if c := findFresh(s, results.SystemPgCron, f.TargetRate); c != nil {
					medRatio = ratio(f.Summary.Median, c.Summary.Median)
					p99Ratio = ratio(f.Summary.P99, c.Summary.P99)
				} else {
					medRatio, p99Ratio = "no pg_cron run", "no pg_cron run"
				}
			} else {
				medRatio, p99Ratio = "1 (baseline)", "1 (baseline)"
			}
			claims := "not checked (no claim)"
			if f.ClaimChecks {
				claims = fmt.Sprint(f.Violations)
			}
			isoS, susS, tlS := "-", "-", "-"
			if f.System == results.SystemRefresherd {
				isoS, susS = secs(iso), secs(sus)
				if tl, ok := summarizeTimeline(f.Timeline); ok {
					tlS = tl.String()
				}
			}
			note := f.Verified
			if f.Note != "" {
				note += "; " + f.Note
			}
			cpu := "- (in the server)"
			if f.System == results.SystemRefresherd {
				cpu = fmt.Sprintf("%.2f%% of a CPU", 100*f.DaemonCPU)
			}
			fmt.Fprintf(b, "| %s | %s | %g/s | %.1f/s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %d (%s) | %s | %s | %d | %s | %s |\n",
				s.Label, f.System, f.TargetRate, f.Achieved, f.Window.Round(time.Second), f.Summary.N,
				secs(f.Summary.Median), secs(f.Summary.P99), secs(f.Summary.Max), medRatio, p99Ratio, isoS, susS,
				f.Refreshes, secs(f.RefreshMean), tlS, cpu, f.Unseen, claims, cell(note))
			if !slices.Contains(cmds, f.Command) {
				cmds = append(cmds, f.Command)
			}
		}
	}
	fmt.Fprintf(b, "\nProduced by:\n\n")
	for _, c := range cmds {
		fmt.Fprintf(b, "- %s\n", c)
	}
	fmt.Fprintf(b, "- refresherd: the daemon with the shipped config.yaml; pg_cron: its own copy of the data with the same view and indexes, no trigger.\n")
	for _, s := range run.Sizes {
		var parts []string
		for _, f := range s.Freshness {
			parts = append(parts, fmt.Sprintf("%s %g/s +%d (%.0f%%)", f.System, f.TargetRate, f.Inserts, 100*float64(f.Inserts)/float64(max(s.Charges, 1))))
		}
		if len(parts) > 0 {
			fmt.Fprintf(b, "- The writers only insert, so each run grows the table it writes to (%s: %s).\n", s.Label, strings.Join(parts, ", "))
		}
	}
	if run.Profile == "quick" {
		fmt.Fprintf(b, "- Quick mode: pg_cron's sample covers the commits of one partial minute before a single tick (writes stop at the tick), so its lags are cut off at that window and understate pg_cron's full-minute figure; the full profile measures %s.\n", "whole minutes in steady state")
	}
	fmt.Fprintf(b, "\n")
	for _, pl := range plots {
		fmt.Fprintf(b, "![freshness lag](%s)\n\n", pl)
	}
}

// sustainedText explains the sustained bound of bounds and the timeline
// column.
func sustainedText(c results.ConfigInfo) string {
	tl := "The timeline column reads refresherd.refresh_log for the refreshes that finished during the run: R is each one's duration, a gap runs from one's end to the next one's start, and the worst pair is the longest from a refresh's start to the next one's end, what a change committed just after a snapshot waits when refreshes run back to back."
	if c.TargetLag > 0 {
		return fmt.Sprintf("The shipped target_lag is %s with max_load %g: a change is planned to be visible within the target; when one refresh takes longer than that, refreshes run back to back with at least R x (1 - max_load) / max_load between them, so the bound that applies is issue 13's max(target, debounce + 2R) + 0.5 s. %s", c.TargetLag, c.MaxLoad, tl)
	}
	return "Under sustained writes the debounce never elapses and max_delay decides, so max(max_delay, R) + R is the bound that applies. " + tl
}

// sortedFresh orders freshness rows refresherd first, then by rate.
func sortedFresh(rows []results.FreshRow) []results.FreshRow {
	out := slices.Clone(rows)
	slices.SortStableFunc(out, func(a, b results.FreshRow) int {
		if a.System != b.System {
			if a.System == results.SystemRefresherd {
				return -1
			}
			if b.System == results.SystemRefresherd {
				return 1
			}
			return strings.Compare(a.System, b.System)
		}
		switch {
		case a.TargetRate < b.TargetRate:
			return -1
		case a.TargetRate > b.TargetRate:
			return 1
		}
		return 0
	})
	return out
}

func writeCost(b *strings.Builder, run *results.Run, plots []string) {
	fmt.Fprintf(b, "## 2. Refresh cost\n\n")
	fmt.Fprintf(b, "Wall time of one summary computation on a quiet database: the aggregate rounds, the plain REFRESH rounds, then (after an untimed VACUUM and CONCURRENTLY, so every timed CONCURRENTLY follows another, as in production) psql CONCURRENTLY, refresherd and CONCURRENTLY on a warm session, rotating which goes first each round. psql starts a new session each time, as a cron job does, and a new backend first loads its catalog caches; the warm-session row is the server's work alone, so refresherd / warm session is the overhead of refresherd's own transaction (timeouts, locks, status rows). psql times are psql's `\\timing` (statement sent to result received, in autocommit, so the commit is included; psql start-up and connection are not). refresherd's time is its whole refresh transaction (timeouts, view lock, REFRESH CONCURRENTLY, status rows, commit) from its `refresherd_refresh_duration_seconds` histogram, one SIGUSR1 at a time. Ratio is against REFRESH CONCURRENTLY from psql; the target is that refresherd adds < 5%%.\n\n")
	fmt.Fprintf(b, "| size | method | n | median | p99 | min | max | ratio vs psql CONCURRENTLY (median) | ratio (p99) |\n|---|---|---|---|---|---|---|---|---|\n")
	var cmds []string
	for _, s := range run.Sizes {
		var base stats.Summary
		for _, c := range s.Cost {
			if c.Method == results.MethodPsqlConc {
				base = c.Summary
			}
		}
		for _, c := range s.Cost {
			fmt.Fprintf(b, "| %s | %s | %d | %s | %s | %s | %s | %s | %s |\n", s.Label, c.Method, c.Summary.N,
				secs(c.Summary.Median), secs(c.Summary.P99), secs(c.Summary.Min), secs(c.Summary.Max),
				ratio(c.Summary.Median, base.Median), ratio(c.Summary.P99, base.P99))
			cmd := c.Method + ": `" + strings.ReplaceAll(c.Command, "`", "'") + "`"
			if !slices.ContainsFunc(cmds, func(x string) bool { return strings.HasPrefix(x, c.Method+":") }) {
				cmds = append(cmds, cmd)
			}
		}
	}
	fmt.Fprintf(b, "\nProduced by:\n\n")
	for _, c := range cmds {
		fmt.Fprintf(b, "- %s\n", c)
	}
	fmt.Fprintf(b, "\n")
	for _, pl := range plots {
		fmt.Fprintf(b, "![refresh duration by size](%s)\n\n", pl)
	}
}

func writeReader(b *strings.Builder, run *results.Run, plots []string) {
	fmt.Fprintf(b, "## 3. Reader impact\n\n")
	fmt.Fprintf(b, "Latency of the app's typical query, paced readers on their own connections. Samples during a refresh are the queries that started between the refresh's start and end (refresherd's from `refresherd.refresh_log`, the plain REFRESH's around its statement). Ratio is against the materialized view with no refresh running.\n\n")
	fmt.Fprintf(b, "| size | condition | refreshes | queries | median | p99 | max | ratio (median) | ratio (p99) |\n|---|---|---|---|---|---|---|---|---|\n")
	var cmds []string
	for _, s := range run.Sizes {
		var base stats.Summary
		if len(s.Reader) > 0 {
			base = s.Reader[0].Summary
		}
		for _, r := range s.Reader {
			fmt.Fprintf(b, "| %s | %s | %d | %d | %s | %s | %s | %s | %s |\n", s.Label, r.Condition, r.Windows, r.Summary.N,
				ms(r.Summary.Median), ms(r.Summary.P99), ms(r.Summary.Max), ratio(r.Summary.Median, base.Median), ratio(r.Summary.P99, base.P99))
			if !slices.Contains(cmds, r.Command) {
				cmds = append(cmds, r.Command)
			}
		}
	}
	fmt.Fprintf(b, "\nProduced by:\n\n")
	for _, c := range cmds {
		fmt.Fprintf(b, "- `%s`\n", c)
	}
	fmt.Fprintf(b, "- refreshes: refresherd by SIGUSR1 (CONCURRENTLY); plain: `REFRESH MATERIALIZED VIEW public.app_chargesummary` on another connection.\n\n")
	for _, pl := range plots {
		fmt.Fprintf(b, "![reader latency](%s)\n\n", pl)
	}
}

func writeWriter(b *strings.Builder, run *results.Run, plots []string) {
	fmt.Fprintf(b, "## 4. Writer impact\n\n")
	w := run.Writer
	if w == nil {
		fmt.Fprintf(b, "Not run.\n\n")
		return
	}
	fmt.Fprintf(b, "Insert throughput (pgbench: mean of its per-second progress TPS after the first second, which is warm-up) of single-row autocommit INSERTs into app_charge at %s, %s per run, %d round(s). Each mode has its own copy of the data and its own daemon running with that `change_detection` (the shipped config otherwise; debounce, max_delay and the schedule raised to 1h/1h/24h so that no refresh competes with the writers: refresh cost is section 2), all started, settled and warmed up (an untimed pgbench run per copy) before the first run, and kept running, listening or polling, throughout. Per round and client count the modes run back to back, in an order that rotates with the round. `none` is the baseline: no trigger. TPS shown is the median over rounds; **ratio is the median over rounds of the mode's TPS over the baseline's in the same round** (in parentheses under every round), so that drift of the machine's throughput between rounds, tens of percent over minutes here, does not count as a mode's cost.\n\n",
		w.SizeLabel, w.Duration, w.Rounds)
	writerTable(b, w)
	for _, m := range w.Modes {
		if m.ConfigDiff != "" {
			fmt.Fprintf(b, "- %s: shipped config.yaml with %s\n", m.Mode, m.ConfigDiff)
		}
	}
	fmt.Fprintf(b, "\n")
	for _, pl := range plots {
		fmt.Fprintf(b, "![writer TPS by client count](%s)\n\n", pl)
	}
}

// writerTable writes a writer test's table, the command and the script.
func writerTable(b *strings.Builder, w *results.Writer) {
	fmt.Fprintf(b, "| mode | triggers on app_charge |")
	for _, c := range w.Clients {
		fmt.Fprintf(b, " %d clients TPS | ratio |", c)
	}
	fmt.Fprintf(b, " refreshes during runs | every round (TPS) |\n|---|---|")
	for range w.Clients {
		fmt.Fprintf(b, "---|---|")
	}
	fmt.Fprintf(b, "---|---|\n")
	base := baseMode(w)
	for _, m := range w.Modes {
		if !m.Available {
			fmt.Fprintf(b, "| %s | not available in this build: %s |", m.Mode, cell(m.Unavailable))
			for range w.Clients {
				fmt.Fprintf(b, " not available | - |")
			}
			fmt.Fprintf(b, " - | - |\n")
			continue
		}
		trig := "none"
		if len(m.Triggers) > 0 {
			trig = strings.Join(m.Triggers, ", ")
		}
		fmt.Fprintf(b, "| %s | %s |", m.Mode, trig)
		var rounds []string
		for _, c := range w.Clients {
			r := "-"
			if base != nil && base.Mode != m.Mode {
				r = fmtRatio(m.Ratio(c, base))
			} else if base != nil {
				r = "1 (baseline)"
			}
			fmt.Fprintf(b, " %.0f | %s |", m.Median[c], r)
			rd := fmt.Sprintf("%d: %s", c, joinFloats(m.TPS[c]))
			if base != nil && base.Mode != m.Mode && len(m.Ratios[c]) > 0 {
				rd += " (" + joinRatios(m.Ratios[c]) + ")"
			}
			rounds = append(rounds, rd)
		}
		fmt.Fprintf(b, " %d | %s |\n", m.Refreshes, strings.Join(rounds, "; "))
	}
	fmt.Fprintf(b, "\nProduced by: `%s` with C in %v, against a copy of the %s data; the script:\n\n```\n%s```\n\n", w.Command, w.Clients, w.SizeLabel, w.Script)
}

// joinRatios formats per-round ratios: "0.93x, 0.97x".
func joinRatios(xs []float64) string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = fmtRatio(x)
	}
	return strings.Join(out, ", ")
}

func baseMode(w *results.Writer) *results.WriterMode {
	for i := range w.Modes {
		if w.Modes[i].Mode == results.BaselineMode && w.Modes[i].Available {
			return &w.Modes[i]
		}
	}
	return nil
}

func writeIdle(b *strings.Builder, run *results.Run) {
	fmt.Fprintf(b, "## 6. Idle and footprint\n\n")
	id := run.Idle
	if id == nil {
		fmt.Fprintf(b, "Not run.\n\n")
		return
	}
	fmt.Fprintf(b, "The daemon (shipped config, %s data, settled) over a period in which its database saw no change.\n\n", id.SizeLabel)
	fmt.Fprintf(b, "| measure | value | expected |\n|---|---|---|\n")
	fmt.Fprintf(b, "| idle period | %.1f s | - |\n", id.Seconds)
	fmt.Fprintf(b, "| refreshes (success + error) | %d | 0 |\n", id.Refreshes)
	fmt.Fprintf(b, "| scheduled ticks skipped as unchanged | %d | any |\n", id.Skipped)
	fmt.Fprintf(b, "| daemon CPU time | %.2f s (%.2f%% of one CPU) | ~0 |\n", id.CPUSeconds, 100*id.CPUSeconds/id.Seconds)
	fmt.Fprintf(b, "| daemon RSS (VmRSS) at the end | %s | - |\n", bytesStr(id.RSSBytes))
	fmt.Fprintf(b, "| daemon peak RSS (VmHWM) since start | %s | - |\n", bytesStr(id.PeakRSSBytes))
	if st := stopSummary(run.Stops); st.N > 0 {
		codes := "all 0"
		for _, x := range run.Stops {
			if x.Code != 0 || x.Err != "" {
				codes = "NOT all 0: " + stopList(run.Stops)
				break
			}
		}
		fmt.Fprintf(b, "| SIGTERM to exit, idle daemon (%d stops: median / max) | %s / %s | well under the grace period |\n", st.N, secs(st.Median), secs(st.Max))
		fmt.Fprintf(b, "| exit codes after SIGTERM | %s | 0 |\n", codes)
	}
	fmt.Fprintf(b, "\nProduced by: utime + stime from `/proc/<pid>/stat` (clock ticks of %d/s) before and after; refreshes from `refresherd_refreshes_total` on /metrics; memory from `/proc/<pid>/status`; stops: `kill -TERM <pid>` to the process's exit, for every daemon the harness stopped (settled, no refresh running) that had exited when the report was written.", id.ClockTicks)
	if id.Overlap != "" {
		fmt.Fprintf(b, " Meanwhile %s.", id.Overlap)
	}
	fmt.Fprintf(b, "\n\n")
}

func stopSummary(stops []results.Stop) stats.Summary {
	xs := make([]float64, 0, len(stops))
	for _, st := range stops {
		if st.Err == "" {
			xs = append(xs, st.Seconds)
		}
	}
	return stats.Summarize(xs)
}

func stopList(stops []results.Stop) string {
	var parts []string
	for _, st := range stops {
		p := fmt.Sprintf("%s: code %d", st.What, st.Code)
		if st.Err != "" {
			p += " (" + st.Err + ")"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "; ")
}

// boundFinding says how a refresherd freshness run's p99 compares with
// the bounds of bounds (iso, sus).
func boundFinding(c results.ConfigInfo, f results.FreshRow, iso, sus float64) string {
	p99 := f.Summary.P99
	if c.TargetLag <= 0 {
		if p99 <= iso {
			return fmt.Sprintf("Its p99 is within debounce + 2 x refresh (%s).", secs(iso))
		}
		line := fmt.Sprintf("Its p99 exceeds debounce + 2 x refresh (%s) by %s: under sustained writes the debounce never elapses and max_delay (%s) decides", secs(iso), secs(p99-iso), c.MaxDelay)
		if p99 <= sus {
			return line + fmt.Sprintf("; it is within max(max_delay, R) + R (%s).", secs(sus))
		}
		return line + fmt.Sprintf("; it EXCEEDS even max(max_delay, R) + R (%s) by %s.", secs(sus), secs(p99-sus))
	}
	target := c.TargetLag.Seconds()
	var line string
	switch {
	case p99 <= target:
		line = fmt.Sprintf("Its p99 is within the %s target_lag", c.TargetLag)
	default:
		line = fmt.Sprintf("Its p99 is over the %s target_lag by %s", c.TargetLag, secs(p99-target))
	}
	if p99 <= sus {
		line += fmt.Sprintf("; target bound max(target, debounce + 2R (%s)) + 0.5 s = %s: MET.", secs(iso), secs(sus))
	} else {
		line += fmt.Sprintf("; target bound max(target, debounce + 2R (%s)) + 0.5 s = %s: MISSED by %s.", secs(iso), secs(sus), secs(p99-sus))
	}
	if tl, ok := summarizeTimeline(f.Timeline); ok && tl.n > 1 {
		line += fmt.Sprintf(" Its %d refreshes took %s median, %s at most, %s apart (median)", tl.n, secs(tl.rMed), secs(tl.rMax), secs(tl.gapMed))
		if tl.rMed > target {
			line += fmt.Sprintf("; one refresh is longer than the target, so they ran back to back and the slowest two in a row with the gap between them took %s, the most a change committed just after a snapshot waits", secs(tl.worst))
		}
		line += "."
	}
	return line
}

// Findings are plain statements generated from the numbers: where
// refresherd meets its targets and, above all, where it loses.
func Findings(run *results.Run) []string {
	var out []string
	c := run.Config
	for _, s := range run.Sizes {
		for _, f := range s.Freshness {
			if f.System != results.SystemRefresherd {
				continue
			}
			r := runRefresh(s, &f)
			iso, sus := bounds(c, r)
			where := fmt.Sprintf("%s, %g commits/s", s.Label, f.TargetRate)
			if f.Summary.N == 0 {
				out = append(out, fmt.Sprintf("Freshness (%s): no commit became visible: nothing to report.", where))
				continue
			}
			line := fmt.Sprintf("Freshness (%s): refresherd's lag median %s, p99 %s", where, secs(f.Summary.Median), secs(f.Summary.P99))
			if cr := findFresh(s, results.SystemPgCron, f.TargetRate); cr != nil && cr.Summary.N > 0 {
				line += fmt.Sprintf(" vs pg_cron every minute %s / %s (%s / %s)", secs(cr.Summary.Median), secs(cr.Summary.P99),
					ratio(f.Summary.Median, cr.Summary.Median), ratio(f.Summary.P99, cr.Summary.P99))
				switch {
				case f.Summary.P99 > cr.Summary.P99 && f.Summary.Median > cr.Summary.Median:
					line += ": refresherd LOSES to pg_cron on both median and p99 lag"
				case f.Summary.P99 > cr.Summary.P99:
					line += ": refresherd LOSES to pg_cron on p99 lag"
				case f.Summary.Median > cr.Summary.Median:
					line += ": refresherd LOSES to pg_cron on median lag"
				default:
					line += ": refresherd is fresher"
				}
			}
			line += ". "
			if !math.IsNaN(r) {
				line += boundFinding(c, f, iso, sus)
			}
			if f.DaemonCPU > 0 {
				line += fmt.Sprintf(" The daemon used %.1f%% of a CPU meanwhile.", 100*f.DaemonCPU)
			}
			if f.Unseen > 0 {
				line += fmt.Sprintf(" %d commits were NOT visible when the harness stopped waiting.", f.Unseen)
			}
			if f.Achieved < 0.9*f.TargetRate {
				line += fmt.Sprintf(" The writers reached only %.0f of the %g commits/s asked for", f.Achieved, f.TargetRate)
				if cr := findFresh(s, results.SystemPgCron, f.TargetRate); cr != nil && cr.Achieved >= 0.9*cr.TargetRate {
					line += fmt.Sprintf(", while the same writers reached %.0f/s on pg_cron's database, which has no trigger: refresherd's change trigger LIMITS the write rate", cr.Achieved)
				}
				line += "."
			}
			if f.ClaimChecks && f.Violations > 0 {
				line += fmt.Sprintf(" refresherd.data_as_of claimed %d charges before the summary showed them.", f.Violations)
			}
			if strings.HasPrefix(f.Verified, "MISMATCH") {
				line += " After the run the view did not match the aggregate: " + f.Verified + "."
			}
			out = append(out, line)
		}
		for _, f := range s.Freshness {
			if f.System == results.SystemPgCron && f.Unseen > 0 {
				out = append(out, fmt.Sprintf("Freshness (%s, %g commits/s): %d of pg_cron's commits were not visible when the harness stopped waiting.", s.Label, f.TargetRate, f.Unseen))
			}
		}

		var d, pc, plain, agg, warm *results.CostRow
		for i := range s.Cost {
			switch s.Cost[i].Method {
			case results.MethodDaemon:
				d = &s.Cost[i]
			case results.MethodPsqlConc:
				pc = &s.Cost[i]
			case results.MethodPlain:
				plain = &s.Cost[i]
			case results.MethodAggregate:
				agg = &s.Cost[i]
			case results.MethodWarmConc:
				warm = &s.Cost[i]
			}
		}
		if d != nil && pc != nil {
			rt := stats.Ratio(d.Summary.Median, pc.Summary.Median)
			line := fmt.Sprintf("Refresh cost (%s): refresherd %s vs psql REFRESH CONCURRENTLY %s (median, %s): ", s.Label, secs(d.Summary.Median), secs(pc.Summary.Median), ratio(d.Summary.Median, pc.Summary.Median))
			if rt < 1.05 {
				line += fmt.Sprintf("within the < 5%% overhead target (%+.1f%%).", (rt-1)*100)
			} else {
				line += fmt.Sprintf("MISSES the < 5%% overhead target (%+.1f%%).", (rt-1)*100)
			}
			if warm != nil {
				wr := stats.Ratio(d.Summary.Median, warm.Summary.Median)
				line += fmt.Sprintf(" Against CONCURRENTLY on a warm session (%s, the server's work alone) refresherd's own transaction adds %+.1f%%", secs(warm.Summary.Median), (wr-1)*100)
				if wr >= 1.05 {
					line += ": MORE than 5%."
				} else {
					line += "."
				}
			}
			if plain != nil {
				line += fmt.Sprintf(" CONCURRENTLY costs %s a plain REFRESH (%s)", ratio(pc.Summary.Median, plain.Summary.Median), secs(plain.Summary.Median))
				if agg != nil {
					line += fmt.Sprintf(" and %s the bare aggregate (%s)", ratio(pc.Summary.Median, agg.Summary.Median), secs(agg.Summary.Median))
				}
				line += ": that is the price of never blocking readers."
			}
			out = append(out, line)
		}

		if len(s.Reader) == 4 {
			base, during, plainR, view := s.Reader[0].Summary, s.Reader[1].Summary, s.Reader[2].Summary, s.Reader[3].Summary
			line := fmt.Sprintf("Readers (%s): p99 %s during refresherd's refresh vs %s with no refresh (%s)", s.Label, ms(during.P99), ms(base.P99), ratio(during.P99, base.P99))
			line += fmt.Sprintf("; during a plain REFRESH p99 %s (%s)", ms(plainR.P99), ratio(plainR.P99, base.P99))
			line += fmt.Sprintf("; on the plain view p99 %s (%s)", ms(view.P99), ratio(view.P99, base.P99))
			if during.P99 > 1.2*base.P99 {
				line += ". Readers are SLOWER at p99 during refresherd's refreshes than with none running"
			}
			if during.P99 > view.P99 {
				line += ". During its refreshes refresherd's readers are SLOWER at p99 than the plain view's"
			}
			if during.P99 > plainR.P99 {
				line += ". Readers during refresherd's CONCURRENTLY refresh are SLOWER at p99 than during a plain REFRESH"
			}
			out = append(out, line+".")
		}
	}
	if w := run.Writer; w != nil {
		base := baseMode(w)
		for _, m := range w.Modes {
			if !m.Available {
				out = append(out, fmt.Sprintf("Writers: change_detection %s is not available in this build (%s).", m.Mode, m.Unavailable))
				continue
			}
			if base == nil || m.Mode == base.Mode {
				continue
			}
			var parts []string
			worst := 0.0
			for _, c := range w.Clients {
				rt := m.Ratio(c, base)
				parts = append(parts, fmt.Sprintf("%d clients %.0f vs %.0f TPS (%s)", c, m.Median[c], base.Median[c], fmtRatio(rt)))
				if 1-rt > worst {
					worst = 1 - rt
				}
			}
			line := fmt.Sprintf("Writers (%s): %s vs no trigger: %s", w.SizeLabel, m.Mode, strings.Join(parts, ", "))
			if worst >= 0.05 {
				line += fmt.Sprintf(": it COSTS writers up to %.0f%% of insert throughput.", worst*100)
			} else {
				line += ": no cost above 5% measured."
			}
			if m.Refreshes > 0 {
				line += fmt.Sprintf(" (%d refreshes ran during its pgbench runs.)", m.Refreshes)
			}
			out = append(out, line)
		}
	}
	out = append(out, detectFindings(run)...)
	out = append(out, incFindings(run)...)
	if st := stopSummary(run.Stops); st.N > 0 {
		line := fmt.Sprintf("Shutdown: SIGTERM to exit of a settled daemon took median %s, max %s over %d stops", secs(st.Median), secs(st.Max), st.N)
		if st.Median >= 1 {
			line += ": SLOW for a daemon with nothing to finish (it releases leadership at once, then waits before exiting)"
		}
		for _, x := range run.Stops {
			if x.Code != 0 || x.Err != "" {
				line += "; NOT every exit code was 0: " + stopList(run.Stops)
				break
			}
		}
		out = append(out, line+".")
	}
	if hi := maxFloat(run.LoadAvg); !math.IsNaN(hi) {
		cpus := 0.0
		_, _ = fmt.Sscan(run.Machine.NProc, &cpus)
		if cpus > 0 && hi > cpus {
			out = append(out, fmt.Sprintf("The CPUs were saturated during the run: the 1-minute load average at step starts reached %.1f on %.0f CPUs. It counts the benchmark's own load too (up to 32 pgbench clients in the writer tests, whose average lingers into the next steps), so it does not say that other work ran; throughput on this machine varies by tens of percent between runs of seconds, which is why ratios are taken within a round.", hi, cpus))
		}
	}
	if id := run.Idle; id != nil {
		line := fmt.Sprintf("Idle (%.0f s): %d refreshes, %.2f s of daemon CPU (%.3f%% of a CPU), RSS %s", id.Seconds, id.Refreshes, id.CPUSeconds, 100*id.CPUSeconds/id.Seconds, bytesStr(id.RSSBytes))
		if id.Refreshes > 0 {
			line += fmt.Sprintf(": it REFRESHED %d times while nothing changed.", id.Refreshes)
		} else if id.CPUSeconds/id.Seconds > 0.01 {
			line += ": its idle CPU use is NOT ~0."
		} else {
			line += ": quiet, as expected."
		}
		out = append(out, line)
	}
	return out
}

func minFloat(xs []float64) float64 {
	lo := math.NaN()
	for _, x := range xs {
		if !math.IsNaN(x) && (math.IsNaN(lo) || x < lo) {
			lo = x
		}
	}
	return lo
}

func maxFloat(xs []float64) float64 {
	hi := math.NaN()
	for _, x := range xs {
		if !math.IsNaN(x) && (math.IsNaN(hi) || x > hi) {
			hi = x
		}
	}
	return hi
}

func secs(s float64) string {
	switch {
	case math.IsNaN(s):
		return "n/a"
	case math.Abs(s) < 1:
		return fmt.Sprintf("%.0f ms", s*1000)
	case math.Abs(s) < 100:
		return fmt.Sprintf("%.2f s", s)
	}
	return fmt.Sprintf("%.0f s", s)
}

func ms(v float64) string {
	switch {
	case math.IsNaN(v):
		return "n/a"
	case v < 10:
		return fmt.Sprintf("%.2f ms", v)
	}
	return fmt.Sprintf("%.0f ms", v)
}

func ratio(a, b float64) string { return fmtRatio(stats.Ratio(a, b)) }

func fmtRatio(r float64) string {
	if math.IsNaN(r) {
		return "n/a"
	}
	if r >= 10 {
		return fmt.Sprintf("%.0fx", r)
	}
	return fmt.Sprintf("%.2fx", r)
}

func bytesStr(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d kB", n>>10)
}

func joinFloats(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.0f", x)
	}
	return strings.Join(parts, ", ")
}

func paren(s string) string {
	if s == "" {
		return ""
	}
	return "(" + s + ")"
}

// cell makes text safe inside a Markdown table cell.
func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	s = strings.ReplaceAll(s, "\n", " ")
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

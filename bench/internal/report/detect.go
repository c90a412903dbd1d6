package report

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/refresherd/refresherd/bench/internal/results"
	"github.com/refresherd/refresherd/bench/internal/stats"
)

// statsFlushDelay is the documented bound on how late PostgreSQL 15
// publishes a backend's table statistics (refresh/detect_stats.go,
// docs/change-detection.md).
const statsFlushDelay = 10 * time.Second

// targetClients are the client counts the writer targets (issues 6 and
// 13) name.
var targetClients = []int{8, 32}

// notifyLoneBound is issue 13's target for notify: a lone change detected
// within 50 ms p99.
const notifyLoneBound = 50 * time.Millisecond

// detectionBound is a mode's target for its detection delay p99 (issue 6
// for changelog and stats, 13 for notify), in words and for a table cell;
// ok is false when the mode has none. It applies to the rows targetRow
// accepts.
func detectionBound(d *results.Detect, mode string) (bound float64, what, short string, ok bool) {
	switch mode {
	case "notify":
		b := notifyLoneBound.Seconds()
		return b, fmt.Sprintf("p99 <= %s for a lone change (issue 13)", secs(b)), fmt.Sprintf("p99 <= %s (lone change)", secs(b)), true
	case "changelog":
		b := (d.PollInterval + 100*time.Millisecond).Seconds()
		return b, fmt.Sprintf("p99 <= poll_interval + 100 ms (%s)", secs(b)), fmt.Sprintf("p99 <= %s (poll_interval + 100 ms)", secs(b)), true
	case "stats":
		b := (statsFlushDelay + d.PollInterval).Seconds()
		return b, fmt.Sprintf("p99 <= the documented bound, statistics flush delay 10 s + poll_interval (%s)", secs(b)),
			fmt.Sprintf("p99 <= %s (flush delay 10 s + poll_interval)", secs(b)), true
	}
	return math.NaN(), "", "", false
}

// targetRow reports whether mode's detection target applies to row r:
// notify's is for isolated commits only.
func targetRow(mode string, r results.DetectRow) bool {
	return mode != "notify" || r.Rate == 0
}

// tpsMin is a mode's writer target: the share of the no-trigger TPS it
// keeps at targetClients, and the issue that sets it.
func tpsMin(mode string) (share float64, issue int, ok bool) {
	switch mode {
	case "notify":
		return 0.90, 13, true
	case "changelog":
		return 0.85, 6, true
	case "stats":
		return 0.98, 6, true
	}
	return 0, 0, false
}

// targetModes are the modes with a writer target.
var targetModes = []string{"notify", "changelog", "stats"}

// tpsTarget checks a mode's writer target against the writer section's
// medians, as a sentence; "" when the mode has no such target.
func tpsTarget(run *results.Run, mode string) string {
	want, issue, ok := tpsMin(mode)
	if !ok {
		return ""
	}
	head := fmt.Sprintf("Writer target for %s (issue %d: keep >= %.0f%% of the no-trigger TPS at %s clients)", mode, issue, want*100, joinInts(targetClients, " and "))
	w := run.Writer
	if w == nil {
		return head + ": not checked, the writer section did not run."
	}
	base := baseMode(w)
	var m *results.WriterMode
	for i := range w.Modes {
		if w.Modes[i].Mode == mode {
			m = &w.Modes[i]
		}
	}
	switch {
	case base == nil:
		return head + ": not checked, the writer section has no no-trigger (none) baseline."
	case m == nil:
		return head + ": not checked, the writer section did not run " + mode + "."
	case !m.Available:
		return head + ": not checked, " + mode + " is not available in this build."
	}
	var parts, missed, absent, straddle, tooFew []string
	for _, c := range targetClients {
		if !slices.Contains(w.Clients, c) {
			absent = append(absent, fmt.Sprint(c))
			continue
		}
		r := m.Ratio(c, base)
		iv := ratioInterval(m.Ratios[c], want)
		switch {
		case iv.tooFew:
			tooFew = append(tooFew, fmt.Sprint(c))
		case iv.straddles:
			straddle = append(straddle, fmt.Sprint(c))
		}
		interval := ""
		if !iv.tooFew {
			interval = fmt.Sprintf(", 95%% interval of the median %.1f-%.1f%%", 100*iv.lo, 100*iv.hi)
		}
		parts = append(parts, fmt.Sprintf("%.1f%% at %d clients (median TPS %.0f vs %.0f%s)", 100*r, c, m.Median[c], base.Median[c], interval))
		if !(r >= want) {
			missed = append(missed, fmt.Sprint(c))
		}
	}
	line := head + ": "
	if len(parts) > 0 {
		line += fmt.Sprintf("keeps %s in the writer section (%s, median of %d round(s) of %s, each against the baseline run next to it): ", strings.Join(parts, ", "), w.SizeLabel, w.Rounds, w.Duration)
	}
	switch {
	case len(missed) > 0:
		line += fmt.Sprintf("it MISSES the target at %s clients", strings.Join(missed, " and "))
	case len(parts) > 0:
		line += "target met"
	default:
		line += "not checked"
	}
	if len(absent) > 0 {
		line += fmt.Sprintf(" (%s clients not measured)", strings.Join(absent, " and "))
	}
	if len(straddle) > 0 {
		line += fmt.Sprintf("; not settled at %s clients: %s", strings.Join(straddle, " and "), straddlesWhy)
	}
	if len(tooFew) > 0 {
		line += fmt.Sprintf("; not settled at %s clients: %s", strings.Join(tooFew, " and "), tooFewWhy)
	}
	return line + "."
}

// interval is the 95% interval of the median of per-round ratios against a
// target ratio: the verdict goes by the median, the interval says whether
// the run's rounds are enough to tell it from the target.
type interval struct {
	lo, hi    float64
	tooFew    bool // fewer rounds than a 95% interval needs (6)
	straddles bool // lo < want <= hi
}

// Why a writer target's verdict is not settled, in the findings.
const (
	straddlesWhy = "the 95% interval of the median straddles the target (more rounds narrow it)"
	tooFewWhy    = "too few rounds for a 95% interval of the median (6 at least)"
)

func ratioInterval(ratios []float64, want float64) interval {
	lo, hi, ok := stats.MedianInterval(ratios, 0.95)
	if !ok {
		return interval{tooFew: true}
	}
	return interval{lo: lo, hi: hi, straddles: lo < want && hi >= want}
}

// detectionCheck checks a mode's detection rows against its target, as a
// clause; "" when the mode has none.
func detectionCheck(d *results.Detect, m *results.DetectMode) string {
	bound, what, _, ok := detectionBound(d, m.Mode)
	if !ok {
		return ""
	}
	var missed, met []string
	for _, r := range m.Rows {
		if r.Delay.N == 0 || !targetRow(m.Mode, r) {
			continue
		}
		if r.Delay.P99 <= bound {
			met = append(met, rowWhere(r))
		} else {
			missed = append(missed, fmt.Sprintf("%s (p99 %s)", rowWhere(r), secs(r.Delay.P99)))
		}
	}
	switch {
	case len(missed) > 0:
		return fmt.Sprintf("it MISSES the detection target %s %s", what, strings.Join(missed, ", "))
	case len(met) > 0:
		return fmt.Sprintf("detection target %s met %s", what, strings.Join(met, ", "))
	}
	return fmt.Sprintf("detection target %s not checked: no delay measured", what)
}

func rowWhere(r results.DetectRow) string {
	if r.Rate == 0 {
		return "for isolated commits"
	}
	return fmt.Sprintf("at %g commits/s", r.Rate)
}

func rowWrites(r results.DetectRow) string {
	if r.Rate == 0 {
		return "isolated probes"
	}
	return fmt.Sprintf("%g/s (achieved %.1f/s)", r.Rate, r.Achieved)
}

func joinInts(xs []int, sep string) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprint(x)
	}
	return strings.Join(parts, sep)
}

func writeDetect(b *strings.Builder, run *results.Run) {
	fmt.Fprintf(b, "## 5. Change detection\n\n")
	d := run.Detect
	if d == nil {
		fmt.Fprintf(b, "Not run.\n\n")
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("Per `change_detection` mode but `none`, the daemon runs on its own copy of the %s data with the shipped config.yaml but for that setting (debounce %s, max_delay %s, poll_interval %s, as shipped), settled before each measurement. Isolated probes come first, then sustained writes at each rate.\n\n",
		d.SizeLabel, d.Debounce, d.MaxDelay, d.PollInterval)
	p("**Detection delay**: from a commit's acknowledgement (demodata.Writer.OnCommit; for a probe, its `Exec` returning) until the daemon has recorded a change event after it, which means that its next refresh, starting later, includes the commit. It is read from outside the daemon: the harness reads `GET /status` every %s (measured: %s between reads, median; that is the resolution) for `pending_changes` and `in_progress`, the in-memory state behind `refresherd_pending_changes` and `refresherd_refresh_in_progress` on /metrics. pending_changes counts change events (a notification; a change-log drain that found rows; a statistics poll that saw the counters move) since the last refresh started, and drops to 0 when one starts. An interval between two reads holds an event when pending_changes rose, or when a refresh started in it (in_progress went on, or pending_changes fell) and pending_changes is above 0 after it; an interval with a refresh start and no visible event may hide one and is not used. A delay ends with the second read of its interval.\n\n",
		d.Scrape, durStr(d.ScrapeMedian))
	p("- **Sustained writes**: each commit acknowledged before the window's last %s gets the first interval with an event that starts after its acknowledgement, so writes go on at least %s after it (a backend that keeps writing publishes its statistics at most 1 s apart; a poll follows). When a commit's own event reached the daemon before its acknowledgement reached the writer, or in the same interval (usual for `notify`, whose notification leaves at commit), the next event counts, and the delay includes the time to the next commit: it over-states, never under-states. Undetected: commits no event followed before the reads stopped, once every commit of the window was visible (for `stats` %s later, after the writers' connections closed, which publishes the statistics they still held).\n",
		d.Tail, d.Tail, secs(d.StatsGrace.Seconds()))
	p("- **Isolated probes**: %d single-row INSERTs per mode, each on a new connection while nothing else writes, sent once the daemon has shown no change event for 100 ms (`notify`) or poll_interval + 50 ms (the polling modes); the first interval with an event that ends after the INSERT was sent is the probe's, and the delay is 0 when the daemon had the change before the writer had the acknowledgement. Discarded: probes whose interval saw a refresh start that may hide the event. A new backend publishes its statistics as soon as it goes idle, so for `stats` the probes show the quick case; a backend that committed less than 1 s before publishes only after 10 s of idleness (docs/change-detection.md), which these probes do not exercise.\n",
		d.Probes)
	p("- **Freshness lag** (sustained rows): as in section 1, from the acknowledgement until a separate connection, polling every 20 ms, sees the charge in the summary's content, for every commit of the window. ")
	if d.StopAtEnd {
		p("Quick mode: the writes stop at the window's end, so the lag is that of a %s burst (the refresh follows the debounce after the last write), not the steady state where max_delay decides (section 1, full profile).\n", d.Window)
	} else {
		p("The writes go on until every commit of the window is visible: the steady state, where the debounce never elapses and max_delay decides.\n")
	}
	p("- **Targets**: `changelog` detection p99 <= poll_interval + 100 ms (issue 6); `stats` within the documented bound (flush delay 10 s + poll_interval; issue 6); `notify` p99 <= %s for isolated commits (a lone change; issue 13), none set under sustained writes. The delays are compared as measured, resolution included.\n\n",
		secs(notifyLoneBound.Seconds()))

	p("| mode | writes | commits (detection) | detection median | detection p99 | detection max | undetected / discarded | target | detection target | commits (freshness) | freshness median | freshness p99 | freshness max | unseen | refreshes (mean time) | daemon CPU | data_as_of claims contradicted |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	var cmds []string
	for _, m := range d.Modes {
		if !m.Available {
			p("| %s | not available in this build: %s |%s\n", m.Mode, cell(m.Unavailable), strings.Repeat(" - |", 15))
			continue
		}
		bound, _, short, hasTarget := detectionBound(d, m.Mode)
		for _, r := range m.Rows {
			target, verdict := "none set", "-"
			if hasTarget && targetRow(m.Mode, r) {
				target = short
				switch {
				case r.Delay.N == 0:
					verdict = "not measured"
				case r.Delay.P99 <= bound:
					verdict = "met"
				default:
					verdict = "MISSED"
				}
			}
			fresh := []string{"-", "-", "-", "-", "-", "-", "-", "-"}
			if r.Rate > 0 {
				claims := "not checked"
				if r.ClaimChecks {
					claims = fmt.Sprint(r.Violations)
				}
				fresh = []string{fmt.Sprint(r.Fresh.N), secs(r.Fresh.Median), secs(r.Fresh.P99), secs(r.Fresh.Max), fmt.Sprint(r.Unseen),
					fmt.Sprintf("%d (%s)", r.Refreshes, secs(r.RefreshMean)), fmt.Sprintf("%.2f%% of a CPU", 100*r.DaemonCPU), claims}
			}
			p("| %s | %s | %d | %s | %s | %s | %d / %d | %s | %s | %s |\n", m.Mode, rowWrites(r), r.Delay.N,
				secs(r.Delay.Median), secs(r.Delay.P99), secs(r.Delay.Max), r.Undetected, r.Discarded, cell(target), verdict, strings.Join(fresh, " | "))
			if !slices.Contains(cmds, r.Command) {
				cmds = append(cmds, r.Command)
			}
		}
	}
	p("\nProduced by:\n\n")
	for _, c := range cmds {
		p("- %s\n", c)
	}
	for _, m := range d.Modes {
		if m.ConfigDiff != "" {
			line := fmt.Sprintf("- %s: shipped config.yaml with %s", m.Mode, m.ConfigDiff)
			if m.Verified != "" {
				line += "; content check after its runs: " + m.Verified
			}
			p("%s.\n", line)
		}
	}
	p("\nTargets:\n\n")
	for _, m := range d.Modes {
		if !m.Available {
			continue
		}
		if c := detectionCheck(d, &m); c != "" {
			p("- %s: %s.\n", m.Mode, c)
		}
	}
	for _, mode := range targetModes {
		p("- %s\n", tpsTarget(run, mode))
	}
	p("\n")
}

// detectFindings are the change-detection findings: one line per mode,
// with the targets it meets or misses; the writer targets alone when the
// detection test did not run.
func detectFindings(run *results.Run) []string {
	var out []string
	d := run.Detect
	done := map[string]bool{}
	if d != nil {
		for _, m := range d.Modes {
			where := fmt.Sprintf("%s, %s", m.Mode, d.SizeLabel)
			if !m.Available {
				out = append(out, fmt.Sprintf("Change detection (%s): not available in this build (%s).", where, m.Unavailable))
				continue
			}
			var det, fr []string
			var notes []string
			for _, r := range m.Rows {
				det = append(det, fmt.Sprintf("median %s, p99 %s %s", secs(r.Delay.Median), secs(r.Delay.P99), rowWhere(r)))
				if r.Rate > 0 {
					fr = append(fr, fmt.Sprintf("median %s, p99 %s at %g commits/s", secs(r.Fresh.Median), secs(r.Fresh.P99), r.Rate))
				}
				if r.Undetected > 0 {
					notes = append(notes, fmt.Sprintf("%d commits %s were NOT followed by a change event before the reads stopped", r.Undetected, rowWhere(r)))
				}
				if r.Unseen > 0 {
					notes = append(notes, fmt.Sprintf("%d commits at %g commits/s were NOT visible when the harness stopped waiting", r.Unseen, r.Rate))
				}
				if r.ClaimChecks && r.Violations > 0 {
					notes = append(notes, fmt.Sprintf("refresherd.data_as_of claimed %d charges at %g commits/s before the summary showed them", r.Violations, r.Rate))
				}
				if r.Rate > 0 && r.Achieved < 0.9*r.Rate {
					notes = append(notes, fmt.Sprintf("the writers reached only %.0f of the %g commits/s asked for", r.Achieved, r.Rate))
				}
			}
			line := fmt.Sprintf("Change detection (%s): detection delay %s", where, strings.Join(det, "; "))
			if len(fr) > 0 {
				line += "; freshness lag " + strings.Join(fr, "; ")
			}
			if c := detectionCheck(d, &m); c != "" {
				line += ": " + c
			}
			line += "."
			if t := tpsTarget(run, m.Mode); t != "" {
				line += " " + t
				done[m.Mode] = true
			}
			for _, n := range notes {
				line += " " + strings.ToUpper(n[:1]) + n[1:] + "."
			}
			if strings.HasPrefix(m.Verified, "MISMATCH") {
				line += " After its runs the view did not match the aggregate: " + m.Verified + "."
			}
			out = append(out, line)
		}
	}
	if run.Writer != nil {
		for _, mode := range targetModes {
			if !done[mode] {
				out = append(out, tpsTarget(run, mode))
			}
		}
	}
	return out
}

func durStr(d time.Duration) string {
	if d <= 0 {
		return "not measured"
	}
	return d.Round(100 * time.Microsecond).String()
}

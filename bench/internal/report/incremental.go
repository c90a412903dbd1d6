package report

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/refresherd/refresherd/bench/internal/results"
	"github.com/refresherd/refresherd/bench/internal/stats"
)

// Issue 12's targets.
const (
	incLagTarget   = 1.0        // seconds, lag p99
	incLagSize     = 10_000_000 // at this size
	incLagRate     = 500.0      // and this rate
	incWriterRatio = 0.90       // of the no-trigger TPS at 8 and 32 clients
)

func findIncRun(inc *results.Incremental, shape string, charges int) *results.IncRun {
	for _, r := range inc.Runs {
		if r.Shape == shape && r.Charges == charges {
			return r
		}
	}
	return nil
}

func findIncFresh(r *results.IncRun, system string, rate float64) *results.FreshRow {
	if r == nil {
		return nil
	}
	for i := range r.Freshness {
		if r.Freshness[i].System == system && r.Freshness[i].TargetRate == rate {
			return &r.Freshness[i]
		}
	}
	return nil
}

// incTargets checks issue 12's targets, one line each, saying MET, MISSED
// or NOT MEASURED (and why).
func incTargets(inc *results.Incremental) []string {
	var out []string
	for _, shape := range []string{results.ShapeDemo, results.ShapeDistinct} {
		head := fmt.Sprintf("Target: incremental lag p99 <= %s at %s charges and %g commits/s, %s shape", secs(incLagTarget), "10M", incLagRate, shape)
		r := findIncRun(inc, shape, incLagSize)
		f := findIncFresh(r, results.StrategyIncremental, incLagRate)
		switch {
		case r == nil:
			out = append(out, head+": NOT MEASURED (this run did not load that shape at 10M; see what was not run).")
		case f == nil:
			out = append(out, head+": NOT MEASURED (the run at that size did not reach the incremental 500/s freshness run).")
		case f.Summary.N == 0:
			out = append(out, head+": MISSED (no commit became visible).")
		default:
			verdict := "MET"
			if f.Summary.P99 > incLagTarget || f.Unseen > 0 {
				verdict = "MISSED"
			}
			line := fmt.Sprintf("%s: %s (p99 %s, median %s, %d commits at %.0f/s achieved", head, verdict, secs(f.Summary.P99), secs(f.Summary.Median), f.Summary.N, f.Achieved)
			if f.Unseen > 0 {
				line += fmt.Sprintf(", %d NOT visible when the harness stopped waiting", f.Unseen)
			}
			out = append(out, line+").")
		}
	}
	if len(inc.Writers) == 0 {
		out = append(out, fmt.Sprintf("Target: writers >= %.2fx of the no-trigger TPS at 8 and 32 clients with the capture triggers: NOT MEASURED (the writer test did not run).", incWriterRatio))
	}
	for _, w := range inc.Writers {
		base := baseMode(w)
		var capture *results.WriterMode
		for i := range w.Modes {
			if w.Modes[i].Mode == "capture" {
				capture = &w.Modes[i]
			}
		}
		head := fmt.Sprintf("Target: writers >= %.2fx of the no-trigger TPS at 8 and 32 clients with the capture triggers (%s)", incWriterRatio, w.SizeLabel)
		if base == nil || capture == nil {
			out = append(out, head+": NOT MEASURED (no baseline or no capture mode).")
			continue
		}
		verdict := "MET"
		var parts, unsettled []string
		for _, c := range []int{8, 32} {
			if !slices.Contains(w.Clients, c) {
				verdict = "NOT MEASURED"
				continue
			}
			rt := capture.Ratio(c, base)
			part := fmt.Sprintf("%d clients %s", c, fmtRatio(rt))
			if len(capture.Ratios[c]) > 1 {
				part += " (rounds: " + joinRatios(capture.Ratios[c]) + ")"
			}
			iv := ratioInterval(capture.Ratios[c], incWriterRatio)
			if !iv.tooFew {
				part += fmt.Sprintf(" (95%% interval of the median %.2fx-%.2fx)", iv.lo, iv.hi)
			}
			switch {
			case iv.tooFew:
				unsettled = append(unsettled, fmt.Sprintf("%d clients (%s)", c, tooFewWhy))
			case iv.straddles:
				unsettled = append(unsettled, fmt.Sprintf("%d clients (%s)", c, straddlesWhy))
			}
			parts = append(parts, part)
			if (math.IsNaN(rt) || rt < incWriterRatio) && verdict == "MET" {
				verdict = "MISSED"
			}
		}
		line := fmt.Sprintf("%s: %s (%s; median of per-round ratios)", head, verdict, strings.Join(parts, ", "))
		if len(unsettled) > 0 {
			line += "; not settled at " + strings.Join(unsettled, " and ")
		}
		out = append(out, line+".")
	}
	var nv, bad int
	var badWhere []string
	for _, r := range inc.Runs {
		for _, v := range r.Verify {
			if v.Strategy != results.StrategyIncremental && v.Strategy != results.StrategyIncShipped {
				continue
			}
			nv++
			if v.Exit != 0 || v.Mismatched != 0 {
				bad++
				badWhere = append(badWhere, fmt.Sprintf("%s %s %s: exit %d, %d mismatched", r.Shape, r.Label, v.Strategy, v.Exit, v.Mismatched))
			}
		}
	}
	switch {
	case nv == 0:
		out = append(out, "Target: verify mismatches 0: NOT MEASURED (no incremental run reached `refresherd verify`).")
	case bad == 0:
		out = append(out, fmt.Sprintf("Target: verify mismatches 0: MET (`refresherd verify` exited 0, equal, after all %d incremental runs).", nv))
	default:
		out = append(out, fmt.Sprintf("Target: verify mismatches 0: MISSED (%d of %d: %s).", bad, nv, strings.Join(badWhere, "; ")))
	}
	return out
}

// incFindings are the incremental section's findings: the targets, then
// comparisons generated from the numbers.
func incFindings(run *results.Run) []string {
	inc := run.Incremental
	if inc == nil {
		return nil
	}
	out := incTargets(inc)
	for _, r := range inc.Runs {
		for _, rate := range inc.Rates {
			f := findIncFresh(r, results.StrategyIncremental, rate)
			if f == nil || f.Summary.N == 0 {
				continue
			}
			line := fmt.Sprintf("Incremental (%s shape, %s, %g/s): lag median %s, p99 %s", r.Shape, r.Label, rate, secs(f.Summary.Median), secs(f.Summary.P99))
			for _, other := range []string{results.StrategyFull, results.StrategyPgCron, results.StrategyPgIvm} {
				o := findIncFresh(r, other, rate)
				if o == nil || o.Summary.N == 0 {
					continue
				}
				line += fmt.Sprintf("; %s %s / %s", other, secs(o.Summary.Median), secs(o.Summary.P99))
				if o.Summary.P99 < f.Summary.P99 {
					line += " (incremental LOSES on p99)"
				}
				if o.Achieved < 0.9*o.TargetRate {
					line += fmt.Sprintf(" (its writers reached only %.0f/s)", o.Achieved)
				}
			}
			if f.Achieved < 0.9*f.TargetRate {
				line += fmt.Sprintf(". The writers reached only %.0f of the %g commits/s asked for", f.Achieved, f.TargetRate)
			}
			out = append(out, line+".")
		}
		if f := findIncFresh(r, results.StrategyIncShipped, inc.Rates[len(inc.Rates)-1]); f != nil && f.Summary.N > 0 {
			out = append(out, fmt.Sprintf("Incremental with the shipped debounce (%s shape, %s, %g/s): lag median %s, p99 %s: the shipped refresh.debounce (1s) applies to incremental views too (it overrides the 50 ms incremental default), so a user who only adds `strategy: incremental` to the shipped config gets this.",
				r.Shape, r.Label, f.TargetRate, secs(f.Summary.Median), secs(f.Summary.P99)))
		}
	}
	claims, commits, runs, fullClaims := 0, 0, 0, 0
	for _, r := range inc.Runs {
		for _, f := range r.Freshness {
			switch {
			case !f.ClaimChecks:
			case f.System == results.StrategyIncremental || f.System == results.StrategyIncShipped:
				claims += f.Violations
				commits += f.Summary.N
				runs++
			case f.System == results.StrategyFull:
				fullClaims += f.Violations
			}
		}
	}
	if claims > 0 {
		out = append(out, fmt.Sprintf("refresherd.data_as_of claimed %d charges (of %d, over %d incremental runs) before the incremental summary showed them: a round's as-of is LATER than its snapshot (the full strategy: %d).", claims, commits, runs, fullClaims))
	}
	for _, w := range inc.Writers {
		base := baseMode(w)
		if base == nil {
			continue
		}
		for _, m := range w.Modes {
			if m.Mode == base.Mode {
				continue
			}
			var parts []string
			for _, c := range w.Clients {
				parts = append(parts, fmt.Sprintf("%d clients %.0f vs %.0f TPS (%s)", c, m.Median[c], base.Median[c], fmtRatio(m.Ratio(c, base))))
			}
			out = append(out, fmt.Sprintf("Writers (%s): %s vs no trigger: %s.", w.SizeLabel, m.Mode, strings.Join(parts, ", ")))
		}
	}
	return out
}

func writeIncremental(b *strings.Builder, run *results.Run, plots map[string][]string) {
	inc := run.Incremental
	if inc == nil {
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("## 7. Incremental strategy (issue 12)\n\n")
	p("The summary kept by `strategy: incremental` (a plain table the daemon owns; capture triggers on app_charge log the touched group keys; each round recomputes those groups in one REPEATABLE READ transaction) beside the full strategy (the shipped config: a materialized view, REFRESH CONCURRENTLY), pg_cron refreshing CONCURRENTLY every minute, and pg_ivm (maintained inside each writer's transaction). Data shapes: **demo** (`demodata.DefaultSize`: a job belongs to one user and a run of months, so groups saturate) and **distinct** (`demodata.Size.IndependentJobs`: user, job and month drawn independently, nearly every charge its own group, the shape of the pg_ivm measurement in DESIGN.md); this run: %s. Every figure is from this run; medians and p99 over the samples of one run.\n\n", strings.Join(inc.Shapes, ", "))
	pgIvm := inc.PgIvm
	if inc.PgIvmOK {
		pgIvm += " (" + inc.PgIvmSetup + ")"
	}
	if !slices.Contains(inc.Strategies, "pgivm") {
		pgIvm = "not asked for (-inc-strategies)"
	}
	p("- **pg_ivm**: %s.\n", pgIvm)
	if inc.PgIvmOK {
		p("- pg_ivm's summary (`SELECT pgivm.create_immv('public.app_chargesummary', ...)`) cannot be the shipped query: pg_ivm rejects FILTER, expressions around aggregates and STABLE functions (to_char in the id). It maintains the same groups and totals:\n\n```sql\n%s\n```\n\n", inc.PgIvmQuery)
	}
	p("- **The advised index**: before any strategy runs, the harness runs `refresherd check` with the incremental config and creates the index it advises (`CREATE INDEX CONCURRENTLY ...`, printed below per data set), as a user following that advice would. The copies every other strategy runs on are taken after it, so all strategies see the same table and indexes.\n")
	p("- **Configs** (the shipped config.yaml, changed only as listed):\n")
	for _, st := range []string{results.StrategyIncremental, results.StrategyIncShipped, results.StrategyFull} {
		if d, ok := inc.Configs[st]; ok {
			p("  - %s: %s\n", st, d)
		}
	}
	if _, ok := inc.Configs[results.StrategyIncremental]; ok {
		p("  - The incremental config sets debounce 50ms, the daemon's default for an incremental view (config.IncrementalDebounce), because the shipped `refresh.debounce: 1s` would otherwise apply to it too; `%s` measures what the shipped setting gives.\n", results.StrategyIncShipped)
	}
	p("- Freshness: writes as in section 1 (demodata.Writer, single-row INSERTs drawn from the shape's own distribution), %s windows", inc.Window)
	if inc.StopAtEnd {
		p(" (writes stop at the window's end)")
	} else {
		p(" (writes go on until every commit of the window is visible)")
	}
	p("; lag from each commit's acknowledgement to a separate connection (20 ms polls) seeing it in the summary's content. Readers (%d connections x %g/s, `SELECT * FROM summary WHERE user_id = $1`) run during every freshness run.\n\n", inc.Readers, inc.ReaderRate)

	p("### Targets\n\n")
	for _, t := range incTargets(inc) {
		p("- %s\n", t)
	}
	p("\n")

	p("### Data\n\n")
	p("| shape | size | charges | users | jobs | summary rows (groups) | groups per charge | load | advised index (created) | index build | incremental first population (start-up to settled) | pg_ivm create_immv |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range inc.Runs {
		idx := r.Index
		if idx == "" {
			idx = "none advised"
		}
		p("| %s | %s | %d | %d | %d | %s | %s | %s | %s | %s | %s | %s |\n", r.Shape, r.Label, r.Charges, r.Users, r.Jobs, countOrDash(r.Groups),
			perCharge(r.Groups, r.Charges), secs(r.LoadSeconds), cell("`"+idx+"`"), secsOrDash(r.IndexSeconds), secsOrDash(r.PopulateSeconds), secsOrDash(r.PgIvmCreateSeconds))
	}
	p("\n`refresherd check` (before the index) said about the view:\n\n")
	for _, r := range inc.Runs {
		for _, c := range r.Check {
			p("- %s %s: `%s`\n", r.Shape, r.Label, c)
		}
		for _, n := range r.Notes {
			p("- %s %s: %s\n", r.Shape, r.Label, n)
		}
	}
	p("\n")

	p("### Freshness lag\n\n")
	p("| shape | size | strategy | target rate | achieved | commits | median | p99 | max | refreshes/rounds (mean time) | daemon CPU | unseen | data_as_of claims contradicted |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	var cmds []string
	for _, r := range inc.Runs {
		for _, f := range r.Freshness {
			rounds, cpu, claims := "-", "-", "not checked (no claim)"
			if f.Refreshes > 0 || f.System != results.StrategyPgIvm {
				rounds = fmt.Sprintf("%d (%s)", f.Refreshes, secs(f.RefreshMean))
				if f.Refreshes == 0 {
					rounds = "0"
				}
			}
			if f.System == results.StrategyPgIvm {
				rounds = "- (in each writer's transaction)"
			}
			if f.DaemonCPU > 0 {
				cpu = fmt.Sprintf("%.1f%% of a CPU", 100*f.DaemonCPU)
			}
			if f.ClaimChecks {
				claims = strconv.Itoa(f.Violations)
			}
			p("| %s | %s | %s | %g/s | %.1f/s | %d | %s | %s | %s | %s | %s | %d | %s |\n", r.Shape, r.Label, f.System, f.TargetRate, f.Achieved, f.Summary.N,
				secs(f.Summary.Median), secs(f.Summary.P99), secs(f.Summary.Max), rounds, cpu, f.Unseen, claims)
			if f.Command != "" && !slices.Contains(cmds, f.Command) {
				cmds = append(cmds, f.Command)
			}
		}
	}
	p("\nProduced by:\n\n")
	for _, c := range cmds {
		p("- %s\n", c)
	}
	p("\n")
	for _, pl := range plots["inc-lag"] {
		p("![freshness lag, incremental section](%s)\n\n", pl)
	}

	p("### Apply time per round against touched groups\n\n")
	p("Each incremental round logs `refreshed` with `groups` (touched groups) and `duration`; the table and the plot take every round of the freshness runs and of the apply sweep (per batch size in %v: one transaction copying that many random existing charges, so it touches up to as many existing groups; the round that applies it is read from the log).\n\n", inc.Sweep)
	p("| shape | size | source | rounds | groups: median / max | apply time: median / p99 / max |\n|---|---|---|---|---|---|\n")
	for _, r := range inc.Runs {
		var sources []string
		for _, rd := range r.Rounds {
			if !slices.Contains(sources, rd.Source) {
				sources = append(sources, rd.Source)
			}
		}
		for _, src := range sources {
			var gs, ts []float64
			for _, rd := range r.Rounds {
				if rd.Source == src {
					gs = append(gs, float64(rd.Groups))
					ts = append(ts, rd.Seconds)
				}
			}
			g, t := stats.Summarize(gs), stats.Summarize(ts)
			p("| %s | %s | %s | %d | %.0f / %.0f | %s / %s / %s |\n", r.Shape, r.Label, src, g.N, g.Median, g.Max, secs(t.Median), secs(t.P99), secs(t.Max))
		}
	}
	p("\nSweep rounds, one per batch:\n\n| shape | size | touched groups | apply time |\n|---|---|---|---|\n")
	for _, r := range inc.Runs {
		for _, rd := range r.Rounds {
			if rd.Source == "sweep" {
				p("| %s | %s | %d | %s |\n", r.Shape, r.Label, rd.Groups, secs(rd.Seconds))
			}
		}
	}
	p("\n")
	for _, pl := range plots["inc-apply"] {
		p("![apply time per round against touched groups](%s)\n\n", pl)
	}

	p("### Readers during rounds\n\n")
	p("The app's query during each freshness run; \"during rounds\" keeps the queries that started inside a round (or, for the full strategy, a refresh) as the daemon logged it (its `refreshed` line's time minus its duration, to that time); \"all samples\" keeps every query of the run. pg_ivm has no rounds: its maintenance runs inside the writers' transactions.\n\n")
	p("| shape | size | condition | rounds | queries | median | p99 | max |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range inc.Runs {
		for _, rd := range r.Reader {
			w := "-"
			if rd.Windows > 0 || strings.Contains(rd.Condition, "during") {
				w = strconv.Itoa(rd.Windows)
			}
			med, p99, hi := ms(rd.Summary.Median), ms(rd.Summary.P99), ms(rd.Summary.Max)
			if rd.Summary.N == 0 && rd.Windows > 0 {
				// Short rounds can all fall between two paced queries.
				med, p99, hi = "no query started in a round", "-", "-"
			}
			p("| %s | %s | %s | %s | %d | %s | %s | %s |\n", r.Shape, r.Label, rd.Condition, w, rd.Summary.N, med, p99, hi)
		}
	}
	p("\n")

	p("### Writers\n\n")
	if len(inc.Writers) == 0 {
		p("Not run.\n\n")
	}
	for i, w := range inc.Writers {
		p("#### %s\n\n", w.SizeLabel)
		p("pgbench single-row autocommit INSERTs, fsync on, %s per run, %d round(s); per round and client count the modes run back to back in an order that rotates with the round, and the ratio is the median over rounds of the mode's TPS over the no-trigger baseline's in the same round. Modes: `none` (no trigger), `capture` (the incremental capture triggers, installed by the daemon, which is then stopped so that no round runs: the triggers' cost alone, which the target is about; its key log is emptied before each run, as a running daemon's rounds would keep it short), `incremental` (the daemon with the benchmark's incremental config applying rounds as the writers go: what a user pays on this 2-CPU machine; after each of its runs the harness waits until the daemon has caught up, so its rounds do not run into another mode's run), `pg_ivm` (an IMMV maintained in each writer's transaction). Every mode has its own copy of the same data and indexes.\n\n", w.Duration, w.Rounds)
		writerTable(b, w)
		for _, m := range w.Modes {
			if m.ConfigDiff != "" {
				p("- %s: %s\n", m.Mode, m.ConfigDiff)
			}
		}
		p("\n")
		if i < len(plots["inc-writer"]) {
			p("![writer TPS, %s](%s)\n\n", w.SizeLabel, plots["inc-writer"][i])
		}
	}

	p("### Verification\n\n")
	p("| shape | size | strategy | command | exit | mismatched rows | time | output |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range inc.Runs {
		for _, v := range r.Verify {
			mm := "unknown"
			if v.Mismatched >= 0 {
				mm = strconv.FormatInt(v.Mismatched, 10)
			}
			exit := strconv.Itoa(v.Exit)
			if !strings.HasPrefix(v.Command, "refresherd") {
				exit = "-"
			}
			p("| %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Shape, r.Label, v.Strategy, cell(v.Command), exit, mm, secs(v.Seconds), cell(shorten(v.Output, 300)))
		}
	}
	p("\n")
	for _, r := range inc.Runs {
		if r.Rebuilds == nil {
			continue
		}
		var parts []string
		for _, k := range sortedKeys(r.Rebuilds) {
			if r.Rebuilds[k] > 0 {
				parts = append(parts, fmt.Sprintf("%s %g", k, r.Rebuilds[k]))
			}
		}
		if len(parts) == 0 {
			parts = []string{"none"}
		}
		p("- %s %s: `refresherd_rebuilds_total` by reason, summed over the incremental daemons at their end: %s (the first population happened at the first daemon's start-up)\n", r.Shape, r.Label, strings.Join(parts, ", "))
	}
	p("\n")

	p("### Not run\n\n")
	notRun := slices.Clone(inc.NotRun)
	if len(inc.Writers) > 0 {
		for _, r := range inc.Runs {
			label := r.Label + ", " + r.Shape + " shape"
			if !slices.ContainsFunc(inc.Writers, func(w *results.Writer) bool { return w.SizeLabel == label }) {
				notRun = append(notRun, fmt.Sprintf("writer test, %s %s: it runs at one size and shape (-inc-writer-size, -inc-writer-shapes) to keep the section's time", r.Shape, r.Label))
			}
		}
	}
	if len(notRun) == 0 {
		p("Everything asked for ran.\n\n")
	}
	for _, n := range notRun {
		p("- %s\n", n)
	}
	p("\n")
}

func sortedKeys(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func countOrDash(n int64) string {
	if n <= 0 {
		return "-"
	}
	return strconv.FormatInt(n, 10)
}

func perCharge(groups int64, charges int) string {
	if groups <= 0 || charges <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", float64(groups)/float64(charges))
}

func secsOrDash(s float64) string {
	if s <= 0 || math.IsNaN(s) {
		return "-"
	}
	return secs(s)
}

// incPlots draws the incremental section's plots: per data set the lag
// CDFs of every strategy and rate (log time axis), the apply time per
// round against touched groups (log-log), and per writer test the TPS.
func incPlots(run *results.Run, save func(section, name string, p *plot.Plot) error) error {
	inc := run.Incremental
	if inc == nil {
		return nil
	}
	for _, r := range inc.Runs {
		if p := incLagPlot(r); p != nil {
			if err := save("inc-lag", "inc_lag_"+r.Shape+"_"+strings.ToLower(r.Label)+".png", p); err != nil {
				return err
			}
		}
	}
	if p := applyPlot(inc); p != nil {
		if err := save("inc-apply", "inc_apply_time.png", p); err != nil {
			return err
		}
	}
	for i, w := range inc.Writers {
		p, err := writerTPSPlot(w)
		if err != nil {
			return err
		}
		if p != nil {
			if err := save("inc-writer", fmt.Sprintf("inc_writer_tps_%d.png", i+1), p); err != nil {
				return err
			}
		}
	}
	return nil
}

// floorLag keeps a lag positive for a log axis (the reader polls every
// 20 ms, so a lag below 1 ms is not measured anyway).
func floorLag(x float64) float64 { return math.Max(x, 0.001) }

func incLagPlot(r *results.IncRun) *plot.Plot {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Freshness lag, %s shape, %s charges (commit to visible)", r.Shape, r.Label)
	p.X.Label.Text = "lag (s, log scale)"
	p.Y.Label.Text = "fraction of commits visible"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	p.Add(plotter.NewGrid())
	p.Legend.Top = false
	p.Legend.Left = true
	n := 0
	for i, f := range r.Freshness {
		if len(f.Lags) == 0 {
			continue
		}
		xs := slices.Clone(f.Lags)
		slices.Sort(xs)
		pts := make(plotter.XYs, 0, len(xs))
		for j, x := range xs {
			pts = append(pts, plotter.XY{X: floorLag(x), Y: float64(j+1) / float64(len(xs))})
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			continue
		}
		l.Color = plotutil.Color(i)
		l.Dashes = plotutil.Dashes(i)
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s %g/s (n=%d)", f.System, f.TargetRate, len(xs)), l)
		n++
	}
	if n == 0 {
		return nil
	}
	return p
}

func applyPlot(inc *results.Incremental) *plot.Plot {
	p := plot.New()
	p.Title.Text = "Incremental apply time per round against touched groups"
	p.X.Label.Text = "touched groups in the round (log scale)"
	p.Y.Label.Text = "round duration (s, log scale)"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	p.Legend.Top, p.Legend.Left = true, true
	n := 0
	for i, r := range inc.Runs {
		var pts plotter.XYs
		for _, rd := range r.Rounds {
			if rd.Groups > 0 && rd.Seconds > 0 {
				pts = append(pts, plotter.XY{X: float64(rd.Groups), Y: rd.Seconds})
			}
		}
		if len(pts) == 0 {
			continue
		}
		sc, err := plotter.NewScatter(pts)
		if err != nil {
			continue
		}
		sc.GlyphStyle.Color = plotutil.Color(i)
		sc.GlyphStyle.Shape = []draw.GlyphDrawer{draw.CircleGlyph{}, draw.TriangleGlyph{}, draw.SquareGlyph{}, draw.CrossGlyph{}, draw.PlusGlyph{}, draw.RingGlyph{}}[i%6]
		sc.GlyphStyle.Radius = vg.Points(2.5)
		p.Add(sc)
		p.Legend.Add(fmt.Sprintf("%s %s (%d rounds)", r.Shape, r.Label, len(pts)), sc)
		n++
	}
	if n == 0 {
		return nil
	}
	return p
}

func writerTPSPlot(w *results.Writer) (*plot.Plot, error) {
	return tpsPlot(w, "Insert TPS by client count ("+w.SizeLabel+", median)")
}

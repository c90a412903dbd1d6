package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/bench/internal/fresh"
	"github.com/refresherd/refresherd/bench/internal/pgtools"
	"github.com/refresherd/refresherd/bench/internal/results"
	"github.com/refresherd/refresherd/bench/internal/stats"
	"github.com/refresherd/refresherd/bench/internal/sysinfo"
	"github.com/refresherd/refresherd/internal/demodata"
	"github.com/refresherd/refresherd/refresh/incremental"
)

// The incremental section (issue 12): per data shape and size, the
// incremental strategy beside full CONCURRENTLY, pg_cron and pg_ivm.

// incStrategy maps a flag name to the report's name.
var incStrategy = map[string]string{
	"incremental":         results.StrategyIncremental,
	"incremental-shipped": results.StrategyIncShipped,
	"full":                results.StrategyFull,
	"cron":                results.StrategyPgCron,
	"pgivm":               results.StrategyPgIvm,
}

// incDebounce is the debounce the benchmark's incremental config sets:
// config.IncrementalDebounce, the default of an incremental view, which
// the shipped refresh.debounce (1s) would otherwise override.
const incDebounce = "50ms"

// pgIvmQuery is the summary as pg_ivm can maintain it: no FILTER, no
// expression around an aggregate, no STABLE function (to_char), so no text
// id; the same groups and totals (sum of CASE instead of coalesce(sum(...)
// FILTER ...), 0)).
const pgIvmQuery = `SELECT c.user_id, c.job_id, c.month,
       sum(CASE WHEN c.type = 'hw' THEN c.amount ELSE 0 END) AS hardware,
       sum(CASE WHEN c.type = 'sw' THEN c.amount ELSE 0 END) AS software
FROM public.app_charge c
GROUP BY c.user_id, c.job_id, c.month`

// incEnv is one data shape at one size.
type incEnv struct {
	*sizeEnv
	inc   *results.Incremental
	r     *results.IncRun
	tag   string // shape_size, for database names
	maxID int64  // largest charge id after the load

	mu      sync.Mutex
	daemons []*daemon // running, stopped at teardown
	dbs     []string  // dropped at teardown
}

func (e *env) has(strategy string) bool { return slices.Contains(e.o.IncStrategies, strategy) }

// incrementalSection runs every size and shape, smallest first, writing the
// report after each so that what was measured lands even if a later one
// does not finish.
func (e *env) incrementalSection(ctx context.Context) error {
	inc := e.run.Incremental
	sizes := slices.Clone(e.o.IncSizes)
	slices.Sort(sizes)
	for _, n := range sizes {
		for _, shape := range e.o.Shapes {
			if err := e.incRun(ctx, shape, n); err != nil {
				return fmt.Errorf("incremental %s %s: %w", shape, SizeLabel(n), err)
			}
			e.interimReport()
		}
	}
	if !e.has("full") {
		inc.NotRun = append(inc.NotRun, "full (CONCURRENTLY): not asked for (-inc-strategies)")
	}
	if !e.has("cron") {
		inc.NotRun = append(inc.NotRun, "pg_cron: not asked for (-inc-strategies)"+map[bool]string{true: "; the quick profile leaves it out (a tick costs a minute; the main quick section measures one)", false: ""}[e.o.Quick()])
	}
	if !e.has("incremental-shipped") {
		inc.NotRun = append(inc.NotRun, "incremental with the shipped debounce (1s): not asked for (-inc-strategies)")
	}
	return nil
}

func (e *env) incRun(ctx context.Context, shape string, n int) error {
	size := demodata.DefaultSize(n)
	size.IndependentJobs = shape == results.ShapeDistinct
	label := SizeLabel(n)
	r := &results.IncRun{Shape: shape, Label: label, Charges: n, Users: size.Users, Jobs: size.Jobs, Months: size.Months, Seed: size.Seed}
	e.run.Incremental.Runs = append(e.run.Incremental.Runs, r)
	tag := shape + "_" + strings.ToLower(label)
	ie := &incEnv{
		sizeEnv: &sizeEnv{env: e, sz: &results.Size{Label: label, Charges: n}, size: size, db: "inc_" + tag},
		inc:     e.run.Incremental, r: r, tag: tag, maxID: int64(n),
	}
	e.logf("== incremental section: %s shape, %s charges (%d users, %d jobs, independent jobs %v)", shape, label, size.Users, size.Jobs, size.IndependentJobs)
	defer ie.teardown(ctx)
	if err := ie.load(ctx); err != nil {
		return err
	}
	if err := ie.checkAndIndex(ctx); err != nil {
		return err
	}

	// Copies of the loaded and indexed data, one per strategy that needs
	// its own (all with the same table and indexes).
	small := n <= e.o.IncFullMax
	var copies []string
	fullDB, ivmDB := "", ""
	var cronDBs []string
	if e.has("full") {
		if small {
			fullDB = "incfull_" + tag
			copies = append(copies, fullDB)
		} else {
			e.notRun("full (CONCURRENTLY), %s %s: not run above %s (-inc-full-max): a CONCURRENTLY refresh at this size takes tens of seconds (demo) to minutes (distinct), so two rates would not fit the section's time budget", shape, label, SizeLabel(e.o.IncFullMax))
		}
	}
	if e.has("cron") {
		switch {
		case !e.cronOK:
			e.notRun("pg_cron, %s %s: pg_cron is not available (%s)", shape, label, e.run.PgCron)
		case !small:
			e.notRun("pg_cron, %s %s: not run above %s (-inc-full-max): a whole-minute window per rate and a CONCURRENTLY refresh at this size would not fit the section's time budget", shape, label, SizeLabel(e.o.IncFullMax))
		default:
			for i := range e.o.Rates {
				cronDBs = append(cronDBs, fmt.Sprintf("inccron%d_%s", i+1, tag))
			}
			copies = append(copies, cronDBs...)
		}
	}
	if e.has("pgivm") {
		if e.run.Incremental.PgIvmOK {
			ivmDB = "incivm_" + tag
			copies = append(copies, ivmDB)
		} else {
			e.notRun("pg_ivm, %s %s: %s", shape, label, e.run.Incremental.PgIvm)
		}
	}
	writerModes := ie.writerModes()
	for _, m := range writerModes {
		copies = append(copies, "incw_"+m+"_"+tag)
	}
	for _, c := range copies {
		if err := ie.copy(ctx, c); err != nil {
			return err
		}
		ie.dbs = append(ie.dbs, c)
	}

	if e.has("incremental") || e.has("incremental-shipped") {
		if err := ie.incremental(ctx); err != nil {
			return err
		}
	}
	if fullDB != "" {
		if err := ie.full(ctx, fullDB); err != nil {
			return err
		}
		ie.dropNow(ctx, fullDB)
	}
	if ivmDB != "" {
		if err := ie.pgIvm(ctx, ivmDB); err != nil {
			return err
		}
		ie.dropNow(ctx, ivmDB)
	}
	if len(cronDBs) > 0 {
		if err := ie.cron(ctx, cronDBs); err != nil {
			return err
		}
		for _, db := range cronDBs {
			ie.dropNow(ctx, db)
		}
	}
	if len(writerModes) > 0 {
		if err := ie.writer(ctx, writerModes); err != nil {
			return err
		}
	}
	return nil
}

// copy copies the loaded data: FILE_COPY (a checkpoint, then the files)
// for the large sizes, WAL_LOG (no checkpoint) for small ones.
func (ie *incEnv) copy(ctx context.Context, name string) error {
	if ie.size.Charges > 100_000 {
		return ie.copyDB(ctx, name)
	}
	conn, err := pgx.Connect(ctx, ie.cluster.URL("postgres"))
	if err != nil {
		return fmt.Errorf("copy database %s: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE "+
		pgx.Identifier{ie.db}.Sanitize()+" STRATEGY WAL_LOG"); err != nil {
		return fmt.Errorf("copy database %s: %w", name, err)
	}
	return nil
}

func (e *env) notRun(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	e.logf("not run: %s", msg)
	e.run.Incremental.NotRun = append(e.run.Incremental.NotRun, msg)
}

func (ie *incEnv) step(name string) {
	ie.logf("-- %s (%s %s)", name, ie.r.Shape, ie.r.Label)
	ie.run.LoadAvg = append(ie.run.LoadAvg, sysinfo.LoadAvg1())
}

func (ie *incEnv) load(ctx context.Context) error {
	ie.step("load")
	if err := ie.cluster.CreateDatabase(ctx, ie.db); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	ie.dbs = append(ie.dbs, ie.db)
	pool, err := pgxpool.New(ctx, ie.cluster.URL(ie.db))
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	defer pool.Close()
	if err := demodata.CreateSchema(ctx, pool); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	t0 := time.Now()
	if err := demodata.Load(ctx, pool, ie.size); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	ie.r.LoadSeconds = time.Since(t0).Seconds()
	ie.logf("loaded %d charges in %.1f s", ie.size.Charges, ie.r.LoadSeconds)
	return nil
}

var adviceRe = regexp.MustCompile(`CREATE INDEX CONCURRENTLY ON [^\s(]+ \([^)]*\)( INCLUDE \([^)]*\))?`)

// checkAndIndex runs `refresherd check` with the benchmark's incremental
// config and creates the index it advises, as a user following its advice
// would; check runs again to show the advice is gone.
func (ie *incEnv) checkAndIndex(ctx context.Context) error {
	ie.step("refresherd check and the advised index")
	cfg, _, err := ie.incConfig("incremental")
	if err != nil {
		return err
	}
	out, _, err := ie.cli(ctx, ie.db, "check", cfg)
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	for _, line := range strings.Split(out, "\n") {
		if line = strings.TrimSpace(line); strings.Contains(line, "strategy") || strings.HasPrefix(line, "WARNING") || strings.HasPrefix(line, "FAIL") {
			ie.r.Check = append(ie.r.Check, strings.TrimSpace(line))
		}
	}
	advice := adviceRe.FindString(out)
	if advice == "" {
		ie.r.Notes = append(ie.r.Notes, "refresherd check advised no index")
		return nil
	}
	conn, err := pgx.Connect(ctx, ie.cluster.URL(ie.db))
	if err != nil {
		return fmt.Errorf("advised index: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	t0 := time.Now()
	if _, err := conn.Exec(ctx, advice); err != nil {
		return fmt.Errorf("advised index: %s: %w", advice, err)
	}
	ie.r.IndexSeconds = time.Since(t0).Seconds()
	ie.r.Index = advice
	if _, err := conn.Exec(ctx, "ANALYZE public.app_charge"); err != nil {
		return fmt.Errorf("advised index: analyze: %w", err)
	}
	if err := conn.QueryRow(ctx, `SELECT pg_total_relation_size('public.app_charge')`).Scan(&ie.r.TableBytes); err != nil {
		return fmt.Errorf("advised index: %w", err)
	}
	ie.logf("created the advised index in %.1f s: %s", ie.r.IndexSeconds, advice)
	if out, _, err := ie.cli(ctx, ie.db, "check", cfg); err == nil && adviceRe.MatchString(out) {
		ie.r.Notes = append(ie.r.Notes, "refresherd check still advises an index after it was created: "+adviceRe.FindString(out))
	}
	return nil
}

// incConfig writes the config for an incremental-section strategy and
// returns its path and how it differs from the shipped one.
func (ie *incEnv) incConfig(strategy string) (path, diff string, err error) {
	var set [][2]string
	switch strategy {
	case "incremental":
		set = [][2]string{{"strategy", "incremental"}, {"debounce", incDebounce}}
	case "incremental-shipped":
		set = [][2]string{{"strategy", "incremental"}}
	case "capture":
		// The writer test's capture-only mode: the daemon installs the
		// triggers and builds the summary, then is stopped (writer), so
		// no round runs while pgbench does: an incremental view runs
		// rounds back to back under writes whatever its debounce.
		set = [][2]string{{"strategy", "incremental"}}
	case "full":
	default:
		return "", "", fmt.Errorf("incremental section: no config for %q", strategy)
	}
	path = ie.work + "/config-inc-" + strategy + ".yaml"
	diff, err = deriveConfig(ie.shipped, path, set)
	if diff == "" {
		diff = "none (the shipped config.yaml)"
	}
	return path, diff, err
}

// cli runs `refresherd CMD --config cfg` against db and returns its
// stdout (and stderr) and exit code; err only when it could not run.
func (ie *incEnv) cli(ctx context.Context, db, cmd, cfg string, args ...string) (string, int, error) {
	c := exec.CommandContext(ctx, ie.bin, append([]string{cmd, "--config", cfg}, args...)...)
	c.Env = append(pgtools.Env(), "DATABASE_URL="+ie.cluster.URL(db))
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	err := c.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), ee.ExitCode(), nil
	}
	if err != nil {
		return out.String(), -1, fmt.Errorf("refresherd %s: %w", cmd, err)
	}
	return out.String(), 0, nil
}

func (ie *incEnv) startDaemonOn(ctx context.Context, db, strategy string) (*daemon, string, error) {
	cfg, diff, err := ie.incConfig(strategy)
	if err != nil {
		return nil, diff, err
	}
	d, err := startDaemon(ctx, ie.bin, cfg, ie.cluster.URL(db), ie.view.Name.String())
	if err != nil {
		return nil, diff, err
	}
	ie.mu.Lock()
	ie.daemons = append(ie.daemons, d)
	ie.mu.Unlock()
	return d, diff, nil
}

// stopDaemon stops d and waits until its leader lock in db is free, so
// that the next daemon there leads at once.
func (ie *incEnv) stopDaemon(ctx context.Context, d *daemon, db, what string) {
	ie.mu.Lock()
	ie.daemons = slices.DeleteFunc(ie.daemons, func(x *daemon) bool { return x == d })
	ie.mu.Unlock()
	t0, err := d.terminate(ctx)
	if err != nil {
		ie.problem("%s: %v", what, err)
	}
	ie.reap(d, t0, what, nil)
	if err := ie.waitLeaderLockFree(ctx, db); err != nil {
		ie.problem("%s: %v", what, err)
	}
}

// incremental runs the incremental strategy on the main database: the
// benchmark's settings (debounce 50ms) then, if asked, the shipped ones;
// freshness at each rate with readers, the apply sweep, verify.
func (ie *incEnv) incremental(ctx context.Context) error {
	first := true
	for _, st := range []string{"incremental", "incremental-shipped"} {
		if !ie.has(st) {
			continue
		}
		name := incStrategy[st]
		ie.step(name + ": start-up")
		t0 := time.Now()
		d, diff, err := ie.startDaemonOn(ctx, ie.db, st)
		ie.inc.Configs[name] = diff
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := d.waitSettled(ctx, 60*time.Minute); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if first {
			ie.r.PopulateSeconds = time.Since(t0).Seconds()
			ie.logf("%s: populated and settled in %.1f s", name, ie.r.PopulateSeconds)
			if err := ie.summaryIndex(ctx, ie.db, true); err != nil {
				return err
			}
		}
		for _, rate := range ie.o.Rates {
			if st == "incremental-shipped" && rate != ie.o.Rates[len(ie.o.Rates)-1] {
				continue // the shipped debounce matters under the highest rate
			}
			ie.step(fmt.Sprintf("%s: freshness at %g/s", name, rate))
			if err := ie.freshRun(ctx, d, name, ie.db, rate, ""); err != nil {
				return fmt.Errorf("%s at %g/s: %w", name, rate, err)
			}
		}
		if first {
			if err := ie.sweep(ctx, d); err != nil {
				return fmt.Errorf("%s: apply sweep: %w", name, err)
			}
		}
		if err := ie.settleNow(ctx, d); err != nil {
			return err
		}
		ie.step(name + ": refresherd verify")
		if err := ie.verifyCLI(ctx, st, name); err != nil {
			return err
		}
		if fams, err := d.p.Metrics(ctx); err == nil {
			if ie.r.Rebuilds == nil {
				ie.r.Rebuilds = map[string]float64{}
			}
			if fam := fams["refresherd_rebuilds_total"]; fam != nil {
				for _, m := range fam.Metric {
					for _, lp := range m.Label {
						if lp.GetName() == "reason" && m.Counter != nil {
							ie.r.Rebuilds[lp.GetValue()] += m.Counter.GetValue()
						}
					}
				}
			}
		}
		ie.stopDaemon(ctx, d, ie.db, name+" daemon, "+ie.r.Shape+" "+ie.r.Label)
		first = false
	}
	return nil
}

// summaryIndex gives the summary in db the app's index on user_id (as the
// main sections do) and counts its rows.
func (ie *incEnv) summaryIndex(ctx context.Context, db string, count bool) error {
	conn, err := pgx.Connect(ctx, ie.cluster.URL(db))
	if err != nil {
		return fmt.Errorf("summary index: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, q := range []string{
		`CREATE INDEX IF NOT EXISTS app_chargesummary_user_id_idx ON ` + ie.viewSQL + ` (user_id)`,
		`ANALYZE ` + ie.viewSQL,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("summary index: %s: %w", firstWords(q), err)
		}
	}
	if count {
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+ie.viewSQL).Scan(&ie.r.Groups); err != nil {
			return fmt.Errorf("summary rows: %w", err)
		}
	}
	return nil
}

// loggedRound is a "refreshed" log line of the daemon.
type loggedRound struct {
	end    time.Time
	dur    time.Duration
	groups int
}

// roundsSince parses the daemon's successful "refreshed" lines after the
// first n lines.
func roundsSince(d *daemon, n int) []loggedRound {
	var out []loggedRound
	lines := d.p.LogLines()
	if n > len(lines) {
		n = len(lines)
	}
	for _, l := range lines[n:] {
		if l["msg"] != "refreshed" || l["result"] != "success" {
			continue
		}
		ts, _ := l["ts"].(string)
		end, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			continue
		}
		ds, _ := l["duration"].(string)
		dur, err := time.ParseDuration(ds)
		if err != nil {
			continue
		}
		g, _ := l["groups"].(float64) // absent when 0
		out = append(out, loggedRound{end: end, dur: dur, groups: int(g)})
	}
	return out
}

// freshRun measures one strategy's freshness lag at rate in db, with the
// readers running; for a daemon (d set) the rounds it logged meanwhile
// give the apply times and the windows of "reader during rounds".
func (ie *incEnv) freshRun(ctx context.Context, d *daemon, system, db string, rate float64, lookup string) error {
	var n0 uint64
	var sum0 float64
	var cpu0 int64
	lines0 := 0
	statusView := ""
	if d != nil {
		if err := d.waitSettled(ctx, 60*time.Minute); err != nil {
			return err
		}
		var err error
		if n0, sum0, err = d.durations(ctx); err != nil {
			return err
		}
		if cpu0, err = sysinfo.CPUTicks(d.p.PID()); err != nil {
			return err
		}
		lines0 = len(d.p.LogLines())
		statusView = ie.view.Name.String()
	}
	stopReaders, err := ie.startReaders(ctx, db, ie.viewSQL)
	if err != nil {
		return err
	}
	t0 := time.Now()
	sp := trackSpec{
		db: db, rate: rate, start: t0, end: t0.Add(ie.inc.Window), stopAtEnd: ie.inc.StopAtEnd, statusView: statusView,
		wait: 3 * time.Minute, lookup: lookup,
	}
	out, terr := ie.track(ctx, sp)
	samples, rerr := stopReaders()
	if err := errors.Join(terr, rerr); err != nil {
		return err
	}
	elapsed := time.Since(t0)
	row := freshRow(system, sp, out)
	where := fmt.Sprintf("%s at %g/s", system, rate)
	if d != nil {
		n1, sum1, err := d.durations(ctx)
		if err != nil {
			return err
		}
		// Seen commits mean a refresh committed; the daemon counts and logs
		// it a moment after its COMMIT returns, which the tracker may beat
		// (a smoke run once counted 0 refreshes and no reader window).
		for wait := time.Now().Add(5 * time.Second); (n1 == n0 || len(roundsSince(d, lines0)) == 0) &&
			row.Summary.N > 0 && time.Now().Before(wait); {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
			if n1, sum1, err = d.durations(ctx); err != nil {
				return err
			}
		}
		cpu1, err := sysinfo.CPUTicks(d.p.PID())
		if err != nil {
			return err
		}
		row.Refreshes = int(n1 - n0)
		if n1 > n0 {
			row.RefreshMean = (sum1 - sum0) / float64(n1-n0)
		}
		row.DaemonCPU = float64(cpu1-cpu0) / float64(ie.clk) / elapsed.Seconds()
		var ivs []interval
		for _, rd := range roundsSince(d, lines0) {
			ivs = append(ivs, interval{rd.end.Add(-rd.dur), rd.end})
			if rd.groups > 0 && system != results.StrategyFull {
				ie.r.Rounds = append(ie.r.Rounds, results.Round{Source: fmt.Sprintf("%s at %g/s", system, rate), Groups: rd.groups, Seconds: rd.dur.Seconds()})
			}
		}
		during := "during rounds"
		if system == results.StrategyFull {
			during = "during refreshes"
		}
		ie.r.Reader = append(ie.r.Reader, results.ReaderRow{Condition: where + ", " + during, Windows: len(ivs), Summary: stats.Summarize(latenciesIn(samples, ivs))})
	}
	ie.r.Reader = append(ie.r.Reader, results.ReaderRow{Condition: where + ", all samples", Summary: stats.Summarize(allLatencies(samples))})
	row.Command = fmt.Sprintf("demodata.Writer: single-row autocommit INSERTs at %g/s from %d connections for a %s window; readers: %d connections x %g/s of SELECT * FROM summary WHERE user_id = $1", rate, writersFor(rate), ie.inc.Window, ie.o.Readers, ie.o.ReaderRate)
	ie.r.Freshness = append(ie.r.Freshness, row)
	ie.logf("%s: lag median %s, p99 %s (%d commits, %d unseen, %d refreshes, mean %s)", where, fmtSecs(row.Summary.Median), fmtSecs(row.Summary.P99), row.Summary.N, row.Unseen, row.Refreshes, fmtSecs(row.RefreshMean))
	return nil
}

// sweep measures rounds of known size: each batch is one transaction that
// copies that many random existing charges (so it touches up to as many
// existing groups), then the round that applies it is read from the log.
func (ie *incEnv) sweep(ctx context.Context, d *daemon) error {
	ie.step("apply sweep")
	conn, err := pgx.Connect(ctx, ie.cluster.URL(ie.db))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, n := range ie.inc.Sweep {
		if err := ie.settleNow(ctx, d); err != nil {
			return err
		}
		lines0 := len(d.p.LogLines())
		if _, err := conn.Exec(ctx, `INSERT INTO public.app_charge (type, amount, month, user_id, job_id)
SELECT type, amount, month, user_id, job_id FROM public.app_charge
WHERE id IN (SELECT 1 + floor(random() * $1)::bigint FROM generate_series(1, $2))`, ie.maxID, n); err != nil {
			return fmt.Errorf("batch of %d: %w", n, err)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		var got []loggedRound
		for {
			got = slices.DeleteFunc(roundsSince(d, lines0), func(r loggedRound) bool { return r.groups == 0 })
			if len(got) > 0 || wctx.Err() != nil {
				break
			}
			_ = sleepCtx(wctx, 20*time.Millisecond)
		}
		cancel()
		if len(got) == 0 {
			return fmt.Errorf("batch of %d: no round applied it", n)
		}
		for _, rd := range got {
			ie.r.Rounds = append(ie.r.Rounds, results.Round{Source: "sweep", Groups: rd.groups, Seconds: rd.dur.Seconds()})
			ie.logf("sweep: %d charges in one transaction: round of %d groups in %s", n, rd.groups, rd.dur.Round(time.Millisecond))
		}
	}
	return nil
}

var mismatchRe = regexp.MustCompile(`MISMATCH: (\d+) rows differ`)

// verifyCLI runs `refresherd verify` as a user would, after the run.
func (ie *incEnv) verifyCLI(ctx context.Context, strategy, name string) error {
	cfg, _, err := ie.incConfig(strategy)
	if err != nil {
		return err
	}
	t0 := time.Now()
	out, code, err := ie.cli(ctx, ie.db, "verify", cfg)
	if err != nil {
		return err
	}
	v := results.Verify{Strategy: name, Command: "refresherd verify --config " + "config-inc-" + strategy + ".yaml (DATABASE_URL set)", Exit: code,
		Output: strings.TrimSpace(out), Seconds: time.Since(t0).Seconds(), Mismatched: -1}
	switch m := mismatchRe.FindStringSubmatch(out); {
	case m != nil:
		v.Mismatched, _ = strconv.ParseInt(m[1], 10, 64)
	case code == 0 && strings.Contains(out, " equal ("):
		v.Mismatched = 0
	}
	ie.r.Verify = append(ie.r.Verify, v)
	ie.logf("%s: refresherd verify exit %d in %.1f s: %s", name, code, v.Seconds, tailLines(v.Output, 3))
	return nil
}

// full runs the daemon with the shipped config (a materialized view,
// REFRESH CONCURRENTLY) on its copy.
func (ie *incEnv) full(ctx context.Context, db string) error {
	name := results.StrategyFull
	ie.step(name + ": start-up")
	d, diff, err := ie.startDaemonOn(ctx, db, "full")
	ie.inc.Configs[name] = diff
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := d.waitSettled(ctx, 60*time.Minute); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := ie.summaryIndex(ctx, db, false); err != nil {
		return err
	}
	for _, rate := range ie.o.Rates {
		ie.step(fmt.Sprintf("%s: freshness at %g/s", name, rate))
		if err := ie.freshRun(ctx, d, name, db, rate, ""); err != nil {
			return fmt.Errorf("%s at %g/s: %w", name, rate, err)
		}
	}
	if err := ie.settleNow(ctx, d); err != nil {
		return err
	}
	t0 := time.Now()
	v := results.Verify{Strategy: name, Command: "demodata.Diff: summary EXCEPT ALL aggregate, both ways, in one REPEATABLE READ snapshot", Mismatched: -1}
	v.Output = ie.verify(ctx, db)
	v.Seconds = time.Since(t0).Seconds()
	if v.Output == "view = aggregate" {
		v.Mismatched = 0
	}
	ie.r.Verify = append(ie.r.Verify, v)
	ie.stopDaemon(ctx, d, db, name+" daemon, "+ie.r.Shape+" "+ie.r.Label)
	return nil
}

// pgIvm creates the summary as a pg_ivm IMMV on its copy and measures
// freshness (maintained inside each writer's transaction).
func (ie *incEnv) pgIvm(ctx context.Context, db string) error {
	name := results.StrategyPgIvm
	ie.step(name + ": create_immv")
	sec, err := ie.createImmv(ctx, db)
	if err != nil {
		return err
	}
	ie.r.PgIvmCreateSeconds = sec
	ie.logf("pg_ivm: create_immv in %.1f s", sec)
	for _, rate := range ie.o.Rates {
		ie.step(fmt.Sprintf("%s: freshness at %g/s", name, rate))
		if err := ie.freshRun(ctx, nil, name, db, rate, fresh.LookupByGroup(ie.viewSQL)); err != nil {
			return fmt.Errorf("%s at %g/s: %w", name, rate, err)
		}
	}
	t0 := time.Now()
	v := results.Verify{Strategy: name, Command: "IMMV's (user_id, job_id, month, hardware, software) EXCEPT ALL the aggregate, both ways, in one REPEATABLE READ snapshot", Mismatched: -1}
	missing, extra, err := ie.ivmDiff(ctx, db)
	if err != nil {
		v.Output = "not checked: " + err.Error()
	} else {
		v.Mismatched = missing + extra
		v.Output = fmt.Sprintf("%d rows missing, %d extra", missing, extra)
	}
	v.Seconds = time.Since(t0).Seconds()
	ie.r.Verify = append(ie.r.Verify, v)
	return nil
}

func (ie *incEnv) createImmv(ctx context.Context, db string) (float64, error) {
	conn, err := pgx.Connect(ctx, ie.cluster.URL(db))
	if err != nil {
		return 0, fmt.Errorf("pg_ivm: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_ivm`); err != nil {
		return 0, fmt.Errorf("pg_ivm: create extension: %w", err)
	}
	t0 := time.Now()
	if _, err := conn.Exec(ctx, `SELECT pgivm.create_immv($1, $2)`, ie.view.Name.String(), pgIvmQuery); err != nil {
		return 0, fmt.Errorf("pg_ivm: create_immv: %w", err)
	}
	sec := time.Since(t0).Seconds()
	// The app's index on user_id, as on the other summaries (pg_ivm's own
	// unique index leads with user_id too).
	for _, q := range []string{`CREATE INDEX app_chargesummary_user_id_idx ON ` + ie.viewSQL + ` (user_id)`, `ANALYZE ` + ie.viewSQL} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return 0, fmt.Errorf("pg_ivm: %s: %w", firstWords(q), err)
		}
	}
	return sec, nil
}

func (ie *incEnv) ivmDiff(ctx context.Context, db string) (missing, extra int64, err error) {
	conn, err := pgx.Connect(ctx, ie.cluster.URL(db))
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, 0, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	err = tx.QueryRow(ctx, `WITH v AS MATERIALIZED (SELECT user_id, job_id, month, hardware, software FROM `+ie.viewSQL+`),
     t AS MATERIALIZED (SELECT user_id, job_id, month, hardware, software FROM (`+demodata.SummaryQuery+`) q)
SELECT (SELECT count(*) FROM (SELECT * FROM t EXCEPT ALL SELECT * FROM v) m), (SELECT count(*) FROM (SELECT * FROM v EXCEPT ALL SELECT * FROM t) e)`).Scan(&missing, &extra)
	return missing, extra, err
}

// cron measures pg_cron's every-minute REFRESH CONCURRENTLY, every rate at
// once in its own copy: writes start now, the measured window is the next
// whole minute, and writes go on until every commit in it is visible.
func (ie *incEnv) cron(ctx context.Context, dbs []string) error {
	name := results.StrategyPgCron
	ie.step(name + ": one whole minute per rate, the rates at once")
	for _, db := range dbs {
		if err := ie.createCronView(ctx, db); err != nil {
			return err
		}
	}
	start := nextMinute(time.Now().Add(5 * time.Second))
	rows := make([]results.FreshRow, len(dbs))
	errs := make([]error, len(dbs))
	var wg sync.WaitGroup
	for i, rate := range ie.o.Rates {
		wg.Go(func() {
			sp := trackSpec{start: start, end: start.Add(time.Minute), wait: 2*time.Minute + 30*time.Second}
			rows[i], errs[i] = ie.cronRun(ctx, dbs[i], rate, sp)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for i := range rows {
		rows[i].System = name
		rows[i].Note = strings.TrimPrefix(rows[i].Note+"; the rates ran at the same time, each in its own copy", "; ")
		ie.logf("pg_cron at %g/s: lag median %s, p99 %s", rows[i].TargetRate, fmtSecs(rows[i].Summary.Median), fmtSecs(rows[i].Summary.P99))
	}
	ie.r.Freshness = append(ie.r.Freshness, rows...)
	return nil
}

// writerModes are the writer test's modes at this shape and size (none
// when it does not run here).
func (ie *incEnv) writerModes() []string {
	if ie.size.Charges != ie.o.IncWriterSize || !slices.Contains(ie.o.IncWriterShapes, ie.r.Shape) {
		return nil
	}
	modes := []string{results.BaselineMode, "capture", "incremental"}
	if ie.inc.PgIvmOK {
		modes = append(modes, "pg_ivm")
	}
	return modes
}

// writer measures single-row insert throughput (pgbench, fsync on) with no
// trigger, with the incremental capture triggers (installed by the daemon,
// which is then stopped: the triggers' cost alone, no round competing for
// the CPU and the WAL), with the daemon applying rounds meanwhile (what a
// user pays on this 2-CPU machine), and with pg_ivm; per round and client
// count the modes run back to back in an order that rotates with the
// round, and ratios are taken within a round (as the writer section does).
func (ie *incEnv) writer(ctx context.Context, modes []string) error {
	label := ie.r.Label + ", " + ie.r.Shape + " shape"
	ie.step("writer throughput: set-up")
	script := ie.work + "/insert_charge_" + ie.tag + ".sql"
	wr := &results.Writer{
		SizeLabel: label, Duration: ie.o.IncWriterDuration, Rounds: ie.o.IncWriterRounds,
		Clients: ie.o.WriterClients, Script: ie.writerScript(),
		Command: pgtools.Pgbench{DB: "incw_MODE_" + ie.tag, Script: "insert_charge.sql", Duration: ie.o.IncWriterDuration}.Command(),
	}
	if err := os.WriteFile(script, []byte(wr.Script), 0o644); err != nil {
		return fmt.Errorf("writer test: %w", err)
	}
	ms := make([]*results.WriterMode, len(modes))
	daemons := map[string]*daemon{}
	done0 := map[string]float64{}
	db := func(m string) string { return "incw_" + m + "_" + ie.tag }
	defer func() {
		for m, d := range daemons {
			ie.stopDaemon(ctx, d, db(m), "writer test daemon, "+m+", "+label)
		}
	}()
	warmUp := max(time.Second, ie.o.IncWriterDuration/3)
	for i, m := range modes {
		ms[i] = &results.WriterMode{Mode: m, Available: true, TPS: map[int][]float64{}, Median: map[int]float64{},
			Ratios: map[int][]float64{}, MedianRatio: map[int]float64{}}
		switch m {
		case "capture", "incremental":
			d, diff, err := ie.startDaemonOn(ctx, db(m), m)
			ms[i].ConfigDiff = diff
			if err != nil {
				return fmt.Errorf("writer test, %s: %w", m, err)
			}
			if err := d.waitSettled(ctx, 60*time.Minute); err != nil {
				ie.stopDaemon(ctx, d, db(m), "writer test daemon, "+m+", "+label)
				return fmt.Errorf("writer test, %s: %w", m, err)
			}
			if m == "capture" {
				// Its triggers stay; from here on only they run.
				ie.stopDaemon(ctx, d, db(m), "writer test daemon, "+m+", "+label)
				break
			}
			daemons[m] = d
		case "pg_ivm":
			if _, err := ie.createImmv(ctx, db(m)); err != nil {
				return fmt.Errorf("writer test: %w", err)
			}
			ms[i].ConfigDiff = "no daemon; SELECT pgivm.create_immv('" + ie.view.Name.String() + "', <the pg_ivm query>)"
		}
		if err := ie.triggers(ctx, db(m), ms[i]); err != nil {
			return err
		}
		if m == "pg_ivm" && len(ms[i].Triggers) == 0 {
			ms[i].Triggers = []string{"pg_ivm's own (internal) triggers"}
		}
		warm := pgtools.Pgbench{DB: db(m), Script: script, Clients: 8, Duration: warmUp}
		if err := warm.Warm(ctx, ie.srv); err != nil {
			return fmt.Errorf("writer test, %s: warm-up: %w", m, err)
		}
		if d := daemons[m]; d != nil {
			// The capture daemon holds its rounds off: the warm-up's keys
			// wait in its log, as the measured runs' will.
			if m == "incremental" {
				if err := ie.settleNow(ctx, d); err != nil {
					return err
				}
			}
			done, _, err := d.counts(ctx)
			if err != nil {
				return err
			}
			done0[m] = done
		}
	}
	for r := 0; r < ie.o.IncWriterRounds; r++ {
		for _, c := range ie.o.WriterClients {
			ie.step(fmt.Sprintf("writer throughput: round %d, %d clients", r+1, c))
			var base float64
			var measured []*results.WriterMode
			for i := range ms {
				m := ms[(i+r)%len(ms)]
				if m.Mode == "capture" {
					if err := ie.emptyKeyLogs(ctx, db(m.Mode)); err != nil {
						return fmt.Errorf("writer test, %s: %w", m.Mode, err)
					}
				}
				pb := pgtools.Pgbench{DB: db(m.Mode), Script: script, Clients: c, Duration: ie.o.IncWriterDuration}
				tps, err := pb.Run(ctx, ie.srv)
				if err != nil {
					return fmt.Errorf("writer test, %s: %w", m.Mode, err)
				}
				m.TPS[c] = append(m.TPS[c], tps)
				measured = append(measured, m)
				if m.Mode == results.BaselineMode {
					base = tps
				}
				ie.logf("writer test %s, %d clients: %.0f TPS", m.Mode, c, tps)
				// The daemon catches up before the next mode runs, so its
				// rounds do not take CPU from another mode's run.
				if d := daemons[m.Mode]; d != nil && m.Mode == "incremental" {
					if err := ie.settleNow(ctx, d); err != nil {
						return err
					}
				}
			}
			if base > 0 {
				for _, m := range measured {
					m.Ratios[c] = append(m.Ratios[c], m.TPS[c][len(m.TPS[c])-1]/base)
				}
			}
		}
	}
	for _, m := range ms {
		if d := daemons[m.Mode]; d != nil {
			done1, _, err := d.counts(ctx)
			if err != nil {
				return err
			}
			m.Refreshes = int(done1 - done0[m.Mode])
		}
		for c, xs := range m.TPS {
			m.Median[c] = stats.Median(xs)
		}
		for c, xs := range m.Ratios {
			m.MedianRatio[c] = stats.Median(xs)
		}
		wr.Modes = append(wr.Modes, *m)
	}
	ie.inc.Writers = append(ie.inc.Writers, wr)
	return nil
}

// emptyKeyLogs empties db's key logs. The capture mode's daemon is
// stopped, so nothing drains them: left alone they would grow by every run
// (~800,000 rows over a 12-round writer test) and their pages, vacuums and
// evictions would weigh on every mode's runs, whereas a running daemon keeps
// its log a round's worth long.
func (ie *incEnv) emptyKeyLogs(ctx context.Context, db string) error {
	conn, err := pgx.Connect(ctx, ie.cluster.URL(db))
	if err != nil {
		return fmt.Errorf("empty key logs: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, "SELECT log_name FROM "+pgx.Identifier{incremental.Schema, incremental.RegistryTable}.Sanitize())
	if err != nil {
		return fmt.Errorf("empty key logs: %w", err)
	}
	logs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("empty key logs: %w", err)
	}
	for _, l := range logs {
		if _, err := conn.Exec(ctx, "TRUNCATE "+pgx.Identifier{incremental.Schema, l}.Sanitize()); err != nil {
			return fmt.Errorf("empty key log %s: %w", l, err)
		}
	}
	return nil
}

// settleNow waits until d is settled, refreshing at once what is pending.
func (ie *incEnv) settleNow(ctx context.Context, d *daemon) error {
	st, err := d.status(ctx)
	if err != nil {
		return err
	}
	if st.PendingChanges > 0 && !st.InProgress {
		_ = d.p.Signal(syscall.SIGUSR1)
	}
	return d.waitSettled(ctx, 60*time.Minute)
}

func (ie *incEnv) dropNow(ctx context.Context, db string) {
	ie.dbs = slices.DeleteFunc(ie.dbs, func(x string) bool { return x == db })
	ie.reapers.Wait() // the daemons on it have exited
	ie.dropDB(ctx, db)
}

// teardown stops what still runs (after a failure) and drops the
// databases once their daemons have exited.
func (ie *incEnv) teardown(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	ie.mu.Lock()
	ds := slices.Clone(ie.daemons)
	ie.mu.Unlock()
	for _, d := range ds {
		t0, err := d.terminate(ctx)
		if err != nil {
			ie.problem("incremental section: stopping a daemon: %v", err)
		}
		ie.reap(d, t0, "incremental section daemon (after a failure)", nil)
	}
	ie.reapers.Wait()
	for _, db := range ie.dbs {
		ie.dropDB(ctx, db)
	}
}

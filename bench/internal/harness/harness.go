package harness

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/bench/internal/pgtools"
	"github.com/refresherd/refresherd/bench/internal/report"
	"github.com/refresherd/refresherd/bench/internal/results"
	"github.com/refresherd/refresherd/bench/internal/stats"
	"github.com/refresherd/refresherd/bench/internal/sysinfo"
	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/internal/daemontest"
	"github.com/refresherd/refresherd/internal/demodata"
	"github.com/refresherd/refresherd/internal/pgcluster"
)

// env is one run's shared state.
type env struct {
	o       *Options
	run     *results.Run
	cluster *pgcluster.Cluster
	srv     pgtools.Server
	bin     string
	work    string // temp dir: binary, derived configs, pgbench script
	shipped string // the repository's config.yaml
	view    *config.View
	viewSQL string // quoted view name
	clk     int64
	cronOK  bool

	reapers sync.WaitGroup // daemons stopping in the background
	mu      sync.Mutex     // guards run.Stops and run.Problems from reapers
}

func (e *env) logf(format string, args ...any) { e.o.Logf(format, args...) }

// Run runs the benchmark and writes the report (also after a failure, with
// what was measured and the error). It returns the results and the first
// error that stopped it.
func Run(ctx context.Context, o Options) (*results.Run, error) {
	if err := o.ApplyProfile(); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	run := &results.Run{Profile: o.Profile, CommandLine: o.CommandLine, Started: time.Now()}
	root := daemontest.ModuleRoot()
	e := &env{o: &o, run: run, shipped: filepath.Join(root, "config.yaml")}
	var cleanups []func()
	// The report is written before the clean-up, so that daemons still
	// stopping in the background do not hold it up.
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	if o.PgIvmSrc == "" {
		o.PgIvmSrc = filepath.Join(root, "..", "shared", "anchors", "pg_ivm")
	}
	err := e.runAll(ctx, root, func(f func()) { cleanups = append(cleanups, f) })
	e.mu.Lock()
	if err != nil {
		run.Problems = append(run.Problems, "the run stopped early: "+err.Error())
	}
	e.mu.Unlock()
	if rerr := e.writeReport(); rerr != nil {
		return run, errors.Join(err, fmt.Errorf("bench: %w", rerr))
	}
	if o.Out != "" {
		o.Logf("report written to %s", filepath.Join(o.Out, "report.md"))
	}
	return run, err
}

// writeReport writes the report as it stands (a snapshot, as reapers may
// still add stops).
func (e *env) writeReport() error {
	if e.o.Out == "" {
		return nil
	}
	e.mu.Lock()
	e.run.Elapsed = time.Since(e.run.Started)
	snapshot := *e.run
	snapshot.Stops = slices.Clone(e.run.Stops)
	snapshot.Problems = slices.Clone(e.run.Problems)
	e.mu.Unlock()
	return report.Write(e.o.Out, &snapshot)
}

// interimReport writes the report so far, so that a run stopped later
// still leaves what it measured.
func (e *env) interimReport() {
	if err := e.writeReport(); err != nil {
		e.logf("interim report: %v", err)
	}
}

// legacySections are the sections before the incremental one.
var legacySections = []string{"cost", "reader", "fresh", "cron", "writer", "detect", "idle"}

func (e *env) legacySkipped() bool {
	for _, s := range legacySections {
		if !slices.Contains(e.o.Skip, s) {
			return false
		}
	}
	return true
}

func (e *env) incrementalOn() bool {
	return e.o.Incremental && !slices.Contains(e.o.Skip, "incremental")
}

// problem records a problem for the report (safe from reapers).
func (e *env) problem(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.run.Problems = append(e.run.Problems, fmt.Sprintf(format, args...))
}

// reap waits in the background for a daemon that was sent SIGTERM at t0
// to exit, and records how long it took and its exit code.
func (e *env) reap(d *daemon, t0 time.Time, what string, after func()) {
	e.reapers.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		code, err := d.p.Wait(ctx)
		st := results.Stop{What: what, Seconds: time.Since(t0).Seconds(), Code: code}
		if err != nil {
			d.p.Kill()
			st.Err = err.Error()
		}
		e.mu.Lock()
		e.run.Stops = append(e.run.Stops, st)
		e.mu.Unlock()
		if after != nil {
			after()
		}
	})
}

// runAll sets up and runs every size; defer registers clean-ups that Run
// performs after writing the report.
func (e *env) runAll(ctx context.Context, root string, deferred func(func())) error {
	run, o := e.run, e.o
	run.Machine = sysinfo.Describe(ctx, root)
	e.clk = sysinfo.ClockTicks(ctx)

	work, err := os.MkdirTemp("", "refresherd-bench-")
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	deferred(func() { _ = os.RemoveAll(work) })
	e.work = work

	e.logf("building refresherd from the tree")
	if e.bin, err = daemontest.Build(ctx, work); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := e.loadShippedConfig(); err != nil {
		return err
	}

	binDir, err := pgcluster.EnsureInstalled(ctx, e.logf)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	settings := map[string]string{}
	if how, err := pgtools.EnsurePgCron(ctx, binDir, e.logf); err != nil {
		run.PgCron = "not available: " + err.Error()
		e.problem("pg_cron is not available, so its rows are missing: %v", err)
	} else {
		e.cronOK = true
		run.PgCronSetup = how
		settings["shared_preload_libraries"] = "pg_cron"
		settings["cron.database_name"] = "postgres"
		// pg_cron connects to run a job; the cluster listens on 127.0.0.1 only.
		settings["cron.host"] = "127.0.0.1"
	}
	if e.incrementalOn() {
		inc := &results.Incremental{
			Strategies: slices.Clone(o.IncStrategies), Shapes: slices.Clone(o.Shapes), Rates: slices.Clone(o.Rates),
			Window: o.IncWindow, StopAtEnd: o.Quick(), Readers: o.Readers, ReaderRate: o.ReaderRate,
			Sweep: slices.Clone(o.IncSweep), FullMax: o.IncFullMax, PgIvmQuery: pgIvmQuery, Configs: map[string]string{},
		}
		run.Incremental = inc
		if e.has("pgivm") {
			how, version, err := pgtools.EnsurePgIvm(ctx, binDir, o.PgIvmSrc, work, e.logf)
			if err != nil {
				inc.PgIvm = "not available: " + err.Error()
				e.problem("pg_ivm is not available, so its rows are missing: %v", err)
			} else {
				inc.PgIvm, inc.PgIvmOK, inc.PgIvmSetup = "pg_ivm "+version, true, how
				if spl := settings["shared_preload_libraries"]; spl != "" {
					settings["shared_preload_libraries"] = spl + ",pg_ivm"
				} else {
					settings["shared_preload_libraries"] = "pg_ivm"
				}
			}
		}
	}
	for k, v := range o.PGSettings {
		settings[k] = v
	}
	e.logf("starting PostgreSQL (fsync on)")
	cluster, err := pgcluster.Start(ctx, pgcluster.Options{FsyncOn: true, Settings: settings, Logf: e.logf})
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	deferred(cluster.Destroy)
	// Registered after Destroy, so it runs before it: daemons exit while
	// their server is still up.
	deferred(func() { e.reapers.Wait() })
	e.cluster = cluster
	e.srv = pgtools.Server{BinDir: cluster.BinDir(), Port: cluster.Port()}
	run.Settings = map[string]string{"fsync": "on", "full_page_writes": "on", "max_connections": "200"}
	for k, v := range settings {
		run.Settings[k] = v
	}
	if err := e.describeServer(ctx); err != nil {
		return err
	}

	if e.legacySkipped() {
		run.Notes = append(run.Notes, "Sections 1-6 were not run (-skip "+strings.Join(legacySections, ",")+").")
	} else {
		for i, n := range o.Sizes {
			if n == 0 {
				n = e.chooseLargest()
			}
			if err := e.runSize(ctx, n, i == len(o.Sizes)-1); err != nil {
				return err
			}
		}
	}
	if e.incrementalOn() {
		e.interimReport()
		if err := e.incrementalSection(ctx); err != nil {
			return err
		}
	}
	if !e.legacySkipped() && !o.Quick() && !slices.Contains(o.Sizes, 0) && !slices.Contains(o.Sizes, 10_000_000) {
		// What the automatic choice would make of this run's figures.
		n := e.chooseLargest()
		run.Notes = append(run.Notes, fmt.Sprintf("With -sizes ...,auto the largest size would be %s: %s", SizeLabel(n), strings.TrimPrefix(strings.TrimPrefix(run.SizeChoice, "10M: "), "5M instead of 10M: ")))
		run.SizeChoice = ""
	}
	return nil
}

// loadShippedConfig reads the view's settings from the shipped config with
// the daemon's own loader, so the bounds and baselines use what users run.
func (e *env) loadShippedConfig() error {
	getenv := func(k string) string {
		if k == "DATABASE_URL" {
			return "postgres://placeholder/db"
		}
		return ""
	}
	cfg, err := config.Load(e.shipped, getenv, config.Overrides{})
	if err != nil {
		return fmt.Errorf("bench: load shipped config: %w", err)
	}
	if len(cfg.Views) != 1 {
		return fmt.Errorf("bench: load shipped config: want exactly one view, got %d", len(cfg.Views))
	}
	v := &cfg.Views[0]
	e.view = v
	e.viewSQL = v.Name.Sanitized()
	e.run.Config = results.ConfigInfo{
		Path: "config.yaml", View: v.Name.String(), Debounce: v.Debounce, MaxDelay: v.MaxDelay,
		TargetLag: v.TargetLag, MaxLoad: v.MaxLoad, Schedule: v.Schedule, Concurrently: v.Concurrently, Detection: v.ChangeDetection, Query: v.Query,
	}
	return nil
}

func (e *env) describeServer(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, e.cluster.URL("postgres"))
	if err != nil {
		return fmt.Errorf("bench: describe server: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := conn.QueryRow(ctx, `SELECT version()`).Scan(&e.run.PGVersion); err != nil {
		return fmt.Errorf("bench: describe server: %w", err)
	}
	e.run.PgbenchVer = e.srv.Version(ctx, "pgbench")
	if e.cronOK {
		if _, err := conn.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_cron`); err != nil {
			return fmt.Errorf("bench: create extension pg_cron: %w", err)
		}
		var v string
		if err := conn.QueryRow(ctx, `SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'`).Scan(&v); err != nil {
			return fmt.Errorf("bench: pg_cron version: %w", err)
		}
		e.run.PgCron = "pg_cron " + v
		e.run.PgCronOK = true
	}
	return nil
}

// chooseLargest picks full mode's last size: 10M when the largest size
// measured so far projects (linearly) a load time and a CONCURRENTLY
// refresh at 10M within the limits, else 5M. The reason goes in the report.
func (e *env) chooseLargest() int {
	var ref *results.Size
	for _, s := range e.run.Sizes {
		if ref == nil || s.Charges > ref.Charges {
			ref = s
		}
	}
	if ref == nil {
		e.run.SizeChoice = "5M: no smaller size was measured to project 10M's cost from"
		return 5_000_000
	}
	f := 10_000_000 / float64(ref.Charges)
	load := time.Duration(ref.LoadSeconds * f * float64(time.Second))
	conc := stats.Median(costSeconds(ref, results.MethodPsqlConc))
	refresh := time.Duration(conc * f * float64(time.Second))
	why := fmt.Sprintf("projected linearly from %s (load %.1f s, REFRESH CONCURRENTLY %.2f s): load %s (limit %s), CONCURRENTLY refresh %s (limit %s, so that pg_cron's every-minute refresh fits its minute)",
		ref.Label, ref.LoadSeconds, conc, load.Round(time.Second), e.o.Max10MLoad, refresh.Round(time.Second), e.o.Max10MRefresh)
	if load <= e.o.Max10MLoad && refresh <= e.o.Max10MRefresh {
		e.run.SizeChoice = "10M: " + why
		return 10_000_000
	}
	e.run.SizeChoice = "5M instead of 10M: " + why
	return 5_000_000
}

func costSeconds(s *results.Size, method string) []float64 {
	for _, c := range s.Cost {
		if c.Method == method {
			return c.Seconds
		}
	}
	return nil
}

// sizeEnv is one data size's databases and daemon.
type sizeEnv struct {
	*env
	sz      *results.Size
	size    demodata.Size
	db      string
	pool    *pgxpool.Pool
	d       *daemon
	cronDBs []string
	// writerDBs: the writer test's copy of the data per mode, and the
	// daemons running on them during that test.
	writerDBs     map[string]string
	writerDaemons map[string]*daemon
	detectDB      string
	refresh       float64 // refresherd's median refresh time here (0 until measured)
	last          bool    // the last size of the run
}

func (e *env) runSize(ctx context.Context, n int, last bool) error {
	label := SizeLabel(n)
	size := demodata.DefaultSize(n)
	sz := &results.Size{Label: label, Charges: n, Users: size.Users, Jobs: size.Jobs, Months: size.Months, Seed: size.Seed}
	e.run.Sizes = append(e.run.Sizes, sz)
	s := &sizeEnv{env: e, sz: sz, size: size, db: "bench_" + strings.ToLower(label), last: last}
	e.logf("== size %s: %d charges, %d users, %d jobs", label, n, size.Users, size.Jobs)

	if err := s.setup(ctx); err != nil {
		return fmt.Errorf("bench %s: %w", label, err)
	}
	defer s.teardown(ctx)
	if err := s.sections(ctx); err != nil {
		return fmt.Errorf("bench %s: %w", label, err)
	}
	return nil
}

// setup loads the data, makes the copies that pg_cron and the writer test
// use, starts the daemon on the main database and waits for its first
// refresh.
func (s *sizeEnv) setup(ctx context.Context) error {
	if err := s.cluster.CreateDatabase(ctx, s.db); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	pool, err := pgxpool.New(ctx, s.cluster.URL(s.db))
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	if err := demodata.CreateSchema(ctx, pool); err != nil {
		pool.Close()
		return fmt.Errorf("setup: %w", err)
	}
	s.logf("loading %d charges", s.size.Charges)
	t0 := time.Now()
	err = demodata.Load(ctx, pool, s.size)
	s.sz.LoadSeconds = time.Since(t0).Seconds()
	pool.Close()
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	s.logf("loaded in %.1f s", s.sz.LoadSeconds)

	// Copies of the loaded data, taken before the daemon touches it: pg_cron's
	// databases (no trigger, as a pg_cron user has) and the writer test's
	// (its inserts must not grow the main table).
	label := strings.ToLower(s.sz.Label)
	if s.cronOK {
		// Quick mode writes every rate at once, each in its own copy; full
		// mode runs the rates one after the other on one copy.
		n := 1
		if s.o.Quick() {
			n = len(s.o.Rates)
		}
		for i := range n {
			s.cronDBs = append(s.cronDBs, fmt.Sprintf("cron%d_%s", i+1, label))
		}
	}
	copies := append([]string(nil), s.cronDBs...)
	if s.size.Charges == s.o.WriterSize {
		s.writerDBs, s.writerDaemons = map[string]string{}, map[string]*daemon{}
		if !slices.Contains(s.o.Skip, "writer") {
			for _, m := range s.o.Modes {
				s.writerDBs[m] = "writer_" + m + "_" + label
				copies = append(copies, s.writerDBs[m])
			}
		}
		if !slices.Contains(s.o.Skip, "detect") {
			s.detectDB = "detect_" + label
			copies = append(copies, s.detectDB)
		}
	}
	t0 = time.Now()
	for _, c := range copies {
		if err := s.copyDB(ctx, c); err != nil {
			return err
		}
	}
	s.sz.CopySeconds = time.Since(t0).Seconds()
	for _, c := range s.cronDBs {
		if err := s.createCronView(ctx, c); err != nil {
			return err
		}
	}

	s.logf("starting the daemon (shipped config)")
	s.d, err = startDaemon(ctx, s.bin, s.shipped, s.cluster.URL(s.db), s.view.Name.String())
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	if err := s.d.waitSettled(ctx, 30*time.Minute); err != nil {
		return fmt.Errorf("setup: first refresh: %w", err)
	}
	s.pool, err = pgxpool.New(ctx, s.cluster.URL(s.db))
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	// The app filters by user: it indexes user_id on the summary, as it
	// would on any table it reads that way. The plain view is the
	// alternative without a materialized view.
	for _, q := range []string{
		`CREATE INDEX IF NOT EXISTS app_chargesummary_user_id_idx ON ` + s.viewSQL + ` (user_id)`,
		`ANALYZE ` + s.viewSQL,
		`CREATE OR REPLACE VIEW public.bench_chargesummary_plain AS ` + s.view.Query,
	} {
		if _, err := s.pool.Exec(ctx, q); err != nil {
			return fmt.Errorf("setup: %s: %w", firstWords(q), err)
		}
	}
	if err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+s.viewSQL+`),
		pg_total_relation_size('public.app_charge'), pg_total_relation_size($1::regclass)`, s.viewSQL).
		Scan(&s.sz.SummaryRows, &s.sz.TableBytes, &s.sz.ViewBytes); err != nil {
		return fmt.Errorf("setup: sizes: %w", err)
	}
	return nil
}

func (s *sizeEnv) copyDB(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, s.cluster.URL("postgres"))
	if err != nil {
		return fmt.Errorf("copy database %s: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE "+
		pgx.Identifier{s.db}.Sanitize()+" STRATEGY FILE_COPY"); err != nil {
		return fmt.Errorf("copy database %s: %w", name, err)
	}
	return nil
}

// createCronView creates the summary as a pg_cron user would: the same
// query, populated, with the same unique index (CONCURRENTLY needs it) and
// the app's user_id index.
func (s *sizeEnv) createCronView(ctx context.Context, db string) error {
	conn, err := pgx.Connect(ctx, s.cluster.URL(db))
	if err != nil {
		return fmt.Errorf("create pg_cron's view in %s: %w", db, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, q := range []string{
		`CREATE MATERIALIZED VIEW ` + s.viewSQL + ` AS ` + s.view.Query,
		`CREATE UNIQUE INDEX app_chargesummary_refresherd_key ON ` + s.viewSQL + ` (id)`,
		`CREATE INDEX app_chargesummary_user_id_idx ON ` + s.viewSQL + ` (user_id)`,
		`ANALYZE ` + s.viewSQL,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("create pg_cron's view in %s: %s: %w", db, firstWords(q), err)
		}
	}
	return nil
}

func (s *sizeEnv) teardown(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	if s.pool != nil {
		s.pool.Close()
	}
	// Free the disk for the next size; the main database once its daemon
	// has exited.
	drop := func(db string) { s.dropDB(ctx, db) }
	if s.d != nil {
		t0, err := s.d.terminate(ctx)
		if err != nil {
			s.problem("%s: stopping the daemon: %v", s.sz.Label, err)
		}
		s.reap(s.d, t0, "main daemon, "+s.sz.Label, func() { drop(s.db) })
	} else {
		drop(s.db)
	}
	// A writer test that failed midway leaves its daemons running; their
	// copies are dropped once they have exited.
	s.stopWriterDaemons(ctx)
	dbs := append(slices.Clone(s.cronDBs), s.detectDB)
	for _, db := range s.writerDBs {
		dbs = append(dbs, db)
	}
	for _, db := range dbs {
		if db != "" {
			drop(db)
		}
	}
}

func (s *sizeEnv) dropDB(ctx context.Context, db string) {
	if err := s.cluster.DropDatabase(context.WithoutCancel(ctx), db); err != nil {
		s.logf("drop %s: %v", db, err)
	}
}

// sections runs the measurements at this size. In quick mode pg_cron's
// one-tick run shares its time with the daemon's idle period (different
// databases), and is slotted in where the next minute boundary is near
// enough that the whole run stays short.
func (s *sizeEnv) sections(ctx context.Context) error {
	var steps []step
	add := func(section string, st ...step) {
		if !slices.Contains(s.o.Skip, section) {
			steps = append(steps, st...)
		}
	}
	add("cost", step{"refresh cost", s.costSection, nil})
	add("reader", step{"reader impact", s.readerSection, func() time.Duration {
		r := s.refreshEstimate()
		return 2*s.o.ReaderIdle + time.Duration(s.o.ReaderRefreshes)*2*(300*time.Millisecond+r) + 2*time.Second
	}})
	// The writer test's daemons finish stopping in the background during
	// the freshness runs.
	if len(s.writerDBs) > 0 {
		add("writer", s.writerSteps()...)
	}
	for _, r := range s.o.Rates {
		add("fresh", step{fmt.Sprintf("freshness at %g/s (refresherd)", r), func(ctx context.Context) error { return s.freshRefresherd(ctx, r) },
			func() time.Duration {
				// Under sustained writes the first refresh comes max_delay
				// after the first change; writes go on until it shows.
				return max(s.o.FreshWindow, s.view.MaxDelay) + 3*s.refreshEstimate() + 2*time.Second
			}})
	}
	if s.detectDB != "" {
		add("detect", s.detectSteps()...)
	}
	if !s.o.Quick() {
		if s.cronOK {
			for _, r := range s.o.Rates {
				add("cron", step{fmt.Sprintf("freshness at %g/s (pg_cron)", r), func(ctx context.Context) error { return s.cronFull(ctx, r) }, nil})
			}
		}
		if s.last {
			add("idle", step{"idle and footprint", func(ctx context.Context) error { return s.idleSection(ctx, s.o.Idle, nil) }, nil})
		}
	}
	quickCronDone := !s.o.Quick() || slices.Contains(s.o.Skip, "cron") && slices.Contains(s.o.Skip, "idle")
	for _, st := range steps {
		if !quickCronDone {
			// The tick is taken at the first step boundary that leaves
			// between CronMinWindow and CronMaxWindow before it, unless the
			// next step, by its estimate, ends before the tick with
			// CronMinWindow still to go: the sample then waits less.
			until := time.Until(nextMinute(time.Now()))
			later := st.est != nil && until-st.est() >= s.o.CronMinWindow
			if until >= s.o.CronMinWindow && until <= s.o.CronMaxWindow && !later {
				if err := s.quickCronAndIdle(ctx); err != nil {
					return err
				}
				quickCronDone = true
			}
		}
		s.logf("-- %s", st.name)
		s.run.LoadAvg = append(s.run.LoadAvg, sysinfo.LoadAvg1())
		if err := st.run(ctx); err != nil {
			return fmt.Errorf("%s: %w", st.name, err)
		}
	}
	if !quickCronDone {
		return s.quickCronAndIdle(ctx)
	}
	return nil
}

// step is one part of a size's measurements.
type step struct {
	name string
	run  func(context.Context) error
	// est, when set, estimates how long the step takes (with some room),
	// for placing quick mode's pg_cron tick; nil when unknown. A step that
	// overruns its estimate may make the tick wait a minute more.
	est func() time.Duration
}

// refreshEstimate is refresherd's median refresh time at this size, for
// step estimates: 5 s until the refresh-cost section has measured it.
func (s *sizeEnv) refreshEstimate() time.Duration {
	if s.refresh <= 0 || math.IsNaN(s.refresh) {
		return 5 * time.Second
	}
	return time.Duration(s.refresh * float64(time.Second))
}

// nextMinute is the next minute boundary after t: when pg_cron's
// '* * * * *' job runs.
func nextMinute(t time.Time) time.Time { return t.Truncate(time.Minute).Add(time.Minute) }

func firstWords(q string) string {
	f := strings.Fields(q)
	if len(f) > 4 {
		f = f[:4]
	}
	return strings.Join(f, " ")
}

// Command triggerab measures what statement-trigger variants cost writers:
// the A/Bs behind docs/change-detection.md ("What writers pay"). It starts a
// throwaway PostgreSQL (fsync on), loads the demo data, installs
// refresherd's schema and the variants (variants.sql, or -sql), and then,
// per round and client count, runs the writer test's pgbench script once
// with no trigger and once with each variant enabled alone, in an order
// that rotates with the round. It prints, per variant, the median of the
// per-round TPS ratios to no trigger and to the shipped trigger, with the
// 95% interval of that median: this machine's throughput drifts by tens of
// percent over minutes and single rounds spread by 10-15%, so only ratios
// within a round, and many rounds, say anything.
//
//	go run ./bench/cmd/triggerab -rounds 40 -clients 32 -variants none,refresherd_notify,ab_empty,ab_doorbell
//
// No daemon runs: the doorbell stays disarmed after the first ring, which is
// what nearly every writer finds under sustained writes, and the change log
// is emptied after each run instead of drained during it (drains were
// measured to cost writers nothing these A/Bs can see).
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/bench/internal/harness"
	"github.com/refresherd/refresherd/bench/internal/pgtools"
	"github.com/refresherd/refresherd/bench/internal/stats"
	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/internal/demodata"
	"github.com/refresherd/refresherd/internal/pgcluster"
	"github.com/refresherd/refresherd/refresh"
	dbsql "github.com/refresherd/refresherd/sql"
)

//go:embed variants.sql
var variantsSQL string

// none is the baseline: every user trigger on the table disabled.
const none = "none"

// shipped is the trigger the daemon installs for change_detection notify.
const shipped = dbsql.TriggerName

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		log.Print(err)
		os.Exit(1)
	}
}

type options struct {
	charges  int
	clients  []int
	rounds   int
	duration time.Duration
	variants []string
	sql      string
	raw      string
	from     []string
	armEvery time.Duration
}

func parse(args []string) (options, error) {
	fs := flag.NewFlagSet("triggerab", flag.ContinueOnError)
	charges := fs.Int("charges", 1000000, "demo charges loaded")
	clients := fs.String("clients", "32", "pgbench client counts, comma-separated")
	rounds := fs.Int("rounds", 40, "rounds per client count (the median's 95% interval needs about 20 to be a few points wide)")
	duration := fs.Duration("duration", 5*time.Second, "pgbench -T of each run")
	variants := fs.String("variants", "none,refresherd_notify,ab_empty,ab_doorbell", "none (no trigger) and the triggers on public.app_charge to enable one at a time")
	sqlFile := fs.String("sql", "", "SQL creating the variants, disabled (default: the embedded variants.sql)")
	raw := fs.String("raw", "", "also write every run as round, clients, variant, TPS (tab-separated) to this file")
	armEvery := fs.Duration("arm-every", 0, "during every run, do a daemon's work at this interval (under a stream of writes the daemon polls every 200ms): re-arm every doorbell with a snapshot read, drain the change log; 0: no daemon work")
	from := fs.String("from", "", "run nothing: pool these -raw files (comma-separated; each file's rounds are rounds of their own) and print their summary for -variants and -clients")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	o := options{charges: *charges, rounds: *rounds, duration: *duration, sql: variantsSQL, raw: *raw, armEvery: *armEvery}
	for _, f := range strings.Split(*from, ",") {
		if f = strings.TrimSpace(f); f != "" {
			o.from = append(o.from, f)
		}
	}
	for _, c := range strings.Split(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || n < 1 {
			return o, fmt.Errorf("-clients: expected positive integers, got %q", c)
		}
		o.clients = append(o.clients, n)
	}
	for _, v := range strings.Split(*variants, ",") {
		if v = strings.TrimSpace(v); v != "" && !slices.Contains(o.variants, v) {
			o.variants = append(o.variants, v)
		}
	}
	if !slices.Contains(o.variants, none) || len(o.variants) < 2 {
		return o, fmt.Errorf("-variants: expected none and at least one trigger, got %q", *variants)
	}
	if o.rounds < 1 || o.duration < time.Second {
		return o, fmt.Errorf("-rounds must be at least 1 and -duration at least 1s")
	}
	if *sqlFile != "" {
		b, err := os.ReadFile(*sqlFile)
		if err != nil {
			return o, fmt.Errorf("-sql: %w", err)
		}
		o.sql = string(b)
	}
	return o, nil
}

func run(ctx context.Context, args []string, out io.Writer) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	if len(o.from) > 0 {
		samples, err := readRaw(o.from)
		if err != nil {
			return err
		}
		report(out, samples, o, fmt.Sprintf("pooled from %s", strings.Join(o.from, ", ")))
		return nil
	}
	cluster, err := pgcluster.Start(ctx, pgcluster.Options{FsyncOn: true, Logf: log.Printf})
	if err != nil {
		return fmt.Errorf("triggerab: %w", err)
	}
	defer cluster.Destroy()
	const db = "triggerab"
	if err := cluster.CreateDatabase(ctx, db); err != nil {
		return fmt.Errorf("triggerab: %w", err)
	}
	pool, err := pgxpool.New(ctx, cluster.URL(db))
	if err != nil {
		return fmt.Errorf("triggerab: %w", err)
	}
	defer pool.Close()
	size := demodata.DefaultSize(o.charges)
	log.Printf("loading %d charges", o.charges)
	if err := setUp(ctx, pool, size, o); err != nil {
		return err
	}
	var base int64
	if err := pool.QueryRow(ctx, `SELECT max(id) FROM public.app_charge`).Scan(&base); err != nil {
		return fmt.Errorf("triggerab: %w", err)
	}
	work, err := os.MkdirTemp("", "triggerab-")
	if err != nil {
		return fmt.Errorf("triggerab: %w", err)
	}
	defer os.RemoveAll(work)
	script := filepath.Join(work, "insert_charge.sql")
	if err := os.WriteFile(script, []byte(harness.WriterScript(size)), 0o644); err != nil {
		return fmt.Errorf("triggerab: %w", err)
	}
	srv := pgtools.Server{BinDir: cluster.BinDir(), Port: cluster.Port()}
	if err := (pgtools.Pgbench{DB: db, Script: script, Clients: 8, Duration: 5 * time.Second}).Warm(ctx, srv); err != nil {
		return fmt.Errorf("triggerab: warm-up: %w", err)
	}

	var samples []sample
	for r := 0; r < o.rounds; r++ {
		for _, c := range o.clients {
			line := fmt.Sprintf("round %d, %d clients:", r+1, c)
			for i := range o.variants {
				v := o.variants[(i+r)%len(o.variants)]
				if err := enableAlone(ctx, pool, v); err != nil {
					return err
				}
				tps, err := runWithDaemonWork(ctx, pool, o.armEvery, func(ctx context.Context) (float64, error) {
					return pgtools.Pgbench{DB: db, Script: script, Clients: c, Duration: o.duration}.Run(ctx, srv)
				})
				if err != nil {
					return fmt.Errorf("triggerab: %s: %w", v, err)
				}
				samples = append(samples, sample{round: r, clients: c, variant: v, tps: tps})
				line += fmt.Sprintf(" %s=%.0f", v, tps)
			}
			log.Print(line)
		}
		// Keep the table at its loaded size: a growing table makes later
		// rounds' inserts dearer for every variant alike, but the ratios
		// are cleaner without the drift.
		if _, err := pool.Exec(ctx, `DELETE FROM public.app_charge WHERE id > $1`, base); err != nil {
			return fmt.Errorf("triggerab: trim: %w", err)
		}
		if _, err := pool.Exec(ctx, `VACUUM public.app_charge`); err != nil {
			return fmt.Errorf("triggerab: vacuum: %w", err)
		}
	}
	if o.raw != "" {
		if err := writeRaw(o.raw, samples); err != nil {
			return err
		}
	}
	header := fmt.Sprintf("%d rounds of %s, %d charges, fsync on", o.rounds, o.duration, o.charges)
	if o.armEvery > 0 {
		header += fmt.Sprintf(", daemon work every %s", o.armEvery)
	}
	report(out, samples, o, header)
	return nil
}

// report prints, per client count, each variant against no trigger and
// against the shipped trigger.
func report(out io.Writer, samples []sample, o options, header string) {
	fmt.Fprintf(out, "%s; median of per-round TPS ratios, 95%% interval of that median\n", header)
	for _, c := range o.clients {
		against := []string{none}
		if slices.Contains(o.variants, shipped) {
			against = append(against, shipped)
		}
		for _, a := range against {
			fmt.Fprintf(out, "\n%d clients, against %s:\n\n| variant | median TPS | ratio | 95%% interval | rounds |\n|---|---:|---:|---|---:|\n", c, a)
			for _, s := range summarize(samples, c, o.variants, a) {
				iv := "too few rounds"
				if s.ok {
					iv = fmt.Sprintf("%.3fx-%.3fx", s.lo, s.hi)
				}
				fmt.Fprintf(out, "| %s | %.0f | %.3fx | %s | %d |\n", s.variant, s.medianTPS, s.ratio, iv, s.rounds)
			}
		}
	}
}

// setUp loads the demo data and creates refresherd's schema and the
// variants, and checks that each variant named is a trigger on the table.
func setUp(ctx context.Context, pool *pgxpool.Pool, size demodata.Size, o options) error {
	if err := demodata.CreateSchema(ctx, pool); err != nil {
		return fmt.Errorf("triggerab: %w", err)
	}
	if err := demodata.Load(ctx, pool, size); err != nil {
		return fmt.Errorf("triggerab: %w", err)
	}
	if err := refresh.EnsureSchema(ctx, pool); err != nil {
		return fmt.Errorf("triggerab: %w", err)
	}
	for _, q := range []string{o.sql, `VACUUM ANALYZE`} {
		if _, err := pool.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
			return fmt.Errorf("triggerab: set up: %w", err)
		}
	}
	for _, v := range o.variants {
		if v == none {
			continue
		}
		var ok bool
		if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger
			WHERE tgrelid = 'public.app_charge'::regclass AND tgname = $1 AND NOT tgisinternal)`, v).Scan(&ok); err != nil {
			return fmt.Errorf("triggerab: %w", err)
		}
		if !ok {
			return fmt.Errorf("triggerab: -variants: %s is no trigger on public.app_charge", v)
		}
	}
	return nil
}

// enableAlone enables trigger v alone on the table (none: no trigger),
// empties the logs the variants write, and checkpoints, so that each run
// starts from the same state.
func enableAlone(ctx context.Context, pool *pgxpool.Pool, v string) error {
	q := `ALTER TABLE public.app_charge DISABLE TRIGGER USER`
	if v != none {
		q += `, ENABLE TRIGGER ` + pgx.Identifier{v}.Sanitize()
	}
	for _, q := range []string{q, `TRUNCATE refresherd.changelog`, `DO $$ BEGIN
		IF to_regclass('refresherd.ab_changelog_oid') IS NOT NULL THEN TRUNCATE refresherd.ab_changelog_oid; END IF;
	END $$`, `CHECKPOINT`} {
		if _, err := pool.Exec(ctx, q); err != nil {
			return fmt.Errorf("triggerab: enable %s: %w", v, err)
		}
	}
	return nil
}

type sample struct {
	round, clients int
	variant        string
	tps            float64
}

type summary struct {
	variant          string
	medianTPS, ratio float64
	lo, hi           float64
	ok               bool
	rounds           int
}

// summarize gives, for each variant but against that ran, its median TPS at clients
// and the median of its per-round ratios to against's run of the same
// round, with the 95% interval of that median. A round where either ran
// no measurement is left out of the ratios.
func summarize(samples []sample, clients int, variants []string, against string) []summary {
	tps := map[string]map[int]float64{}
	for _, s := range samples {
		if s.clients != clients {
			continue
		}
		if tps[s.variant] == nil {
			tps[s.variant] = map[int]float64{}
		}
		tps[s.variant][s.round] = s.tps
	}
	var out []summary
	for _, v := range variants {
		if v == against {
			continue
		}
		var all, ratios []float64
		for r, t := range tps[v] {
			all = append(all, t)
			if b, ok := tps[against][r]; ok && b > 0 {
				ratios = append(ratios, t/b)
			}
		}
		if len(all) == 0 {
			continue // not in these runs
		}
		s := summary{variant: v, medianTPS: stats.Median(all), ratio: stats.Median(ratios), rounds: len(ratios)}
		s.lo, s.hi, s.ok = stats.MedianInterval(ratios, 0.95)
		out = append(out, s)
	}
	return out
}

func writeRaw(path string, samples []sample) error {
	var b strings.Builder
	for _, s := range samples {
		fmt.Fprintf(&b, "%d\t%d\t%s\t%.1f\n", s.round, s.clients, s.variant, s.tps)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("triggerab: write %s: %w", path, err)
	}
	return nil
}

// roundsPerFile separates the rounds of pooled -raw files.
const roundsPerFile = 1000000

// parseRawLine reads one line that writeRaw wrote.
func parseRawLine(line string) (sample, error) {
	f := strings.Split(line, "\t")
	if len(f) != 4 {
		return sample{}, fmt.Errorf("%d fields", len(f))
	}
	s := sample{variant: f[2]}
	var errs [3]error
	s.round, errs[0] = strconv.Atoi(f[0])
	s.clients, errs[1] = strconv.Atoi(f[1])
	s.tps, errs[2] = strconv.ParseFloat(f[3], 64)
	if err := errors.Join(errs[:]...); err != nil {
		return sample{}, err
	}
	if s.round < 0 || s.round >= roundsPerFile {
		return sample{}, fmt.Errorf("round %d out of range", s.round)
	}
	return s, nil
}

// readRaw reads -raw files; the rounds of the i-th file become rounds
// i*roundsPerFile+r, so that pooled files never pair runs of two files.
func readRaw(paths []string) ([]sample, error) {
	var out []sample
	for i, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("triggerab: -from: %w", err)
		}
		for n, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			s, err := parseRawLine(line)
			if err != nil {
				return nil, fmt.Errorf("triggerab: -from: %s line %d: expected round, clients, variant, TPS separated by tabs, got %q (%v)", p, n+1, line, err)
			}
			s.round += i * roundsPerFile
			out = append(out, s)
		}
	}
	return out, nil
}

// daemonWork is what a notify daemon does per ring, for every variant
// alike (each statement only has work when that variant's objects were
// touched): the daemon's poll, with its own SQL (refresh/detect_doorbell.go),
// over the doorbell of the shipped trigger here (and the ab_ ones), the
// snapshot and lock list of its watch, and the arm and drain it keeps for
// the trigger of earlier versions. A real daemon polls when a ring
// arrives, which under sustained writes is right after each re-arm; a fixed
// interval is that, without the listener.
func daemonWork(ctx context.Context, conn *pgxpool.Conn) error {
	b := &pgx.Batch{}
	b.Queue(refresh.ArmBellsSQL, []string{abDoorbell})
	b.Queue(refresh.WatchXactsSQL, []int64{}, []string{"public.app_charge"})
	b.Queue(refresh.ArmDoorbellSQL)
	b.Queue(refresh.ChangelogPollSQL, config.DetectNotify)
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("daemon work: %w", err)
	}
	return nil
}

// abDoorbell is the per-table doorbell of the variants here (variants.sql).
const abDoorbell = "refresherd.ab_doorbell_app_charge"

// runWithDaemonWork runs measure while, every interval (none if 0), one
// connection that LISTENs on the notify channel does daemonWork.
func runWithDaemonWork(ctx context.Context, pool *pgxpool.Pool, every time.Duration, measure func(context.Context) (float64, error)) (float64, error) {
	if every <= 0 {
		return measure(ctx)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("daemon work: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{dbsql.NotifyChannel}.Sanitize()); err != nil {
		return 0, fmt.Errorf("daemon work: %w", err)
	}
	// Stopped by a channel, not by cancelling its context: a query
	// cancelled mid-flight would close the connection.
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-stop:
				done <- nil
				return
			case <-ctx.Done():
				done <- ctx.Err()
				return
			case <-t.C:
			}
			if err := daemonWork(ctx, conn); err != nil {
				done <- err
				return
			}
		}
	}()
	tps, err := measure(ctx)
	close(stop)
	werr := <-done
	// Leave the connection as found: not listening, notifications read.
	if _, uerr := conn.Exec(ctx, "UNLISTEN *"); uerr != nil && werr == nil {
		werr = fmt.Errorf("daemon work: %w", uerr)
	}
	if err != nil {
		return 0, err
	}
	return tps, werr
}

// Command bench runs refresherd's benchmark against a throwaway PostgreSQL
// (fsync on) and writes a Markdown report with PNG plots:
//
//	go run ./bench/cmd/bench -size quick              # CI smoke: < 2 minutes
//	go run ./bench/cmd/bench -size full               # 100k, 1M and 10M (or 5M)
//	go run ./bench/cmd/bench -size quick -out DIR     # results elsewhere
//
// Results go to bench/results/<size>/ by default.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/refresherd/refresherd/bench/internal/harness"
	"github.com/refresherd/refresherd/bench/internal/report"
	"github.com/refresherd/refresherd/internal/daemontest"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	size := fs.String("size", "quick", "profile: quick (CI smoke, one small size, < 2 min) or full (100k, 1M, 10M or 5M)")
	out := fs.String("out", "", "results folder (default bench/results/<size>)")
	sizes := fs.String("sizes", "", "override the data sizes, e.g. 100k,1m,auto (auto: 10M if the 1M figures project it fits, else 5M)")
	modes := fs.String("modes", "none,notify,changelog,stats", "change_detection modes for the writer test (none is the no-trigger baseline) and, but none, the detection test")
	writerSize := fs.String("writer-size", "", "data size the writer test runs at (default 100k quick, 1M full)")
	freshWindow := fs.Duration("fresh-window", 0, "measured window of each refresherd freshness run (default 8s quick, 60s full)")
	cronMinutes := fs.Int("cron-minutes", 0, "full mode: pg_cron minutes measured per rate (default 3)")
	writerDuration := fs.Duration("writer-duration", 0, "pgbench -T per run (default 2s quick, 5s full: short runs, many rounds)")
	writerRounds := fs.Int("writer-rounds", 0, "pgbench rounds per mode and client count (default 1 quick, 20 full: per-round ratios spread by +-10%, so the median needs many for a 95% interval a few points wide)")
	costRounds := fs.Int("cost-rounds", 0, "refreshes per method in the cost test (default 3 quick, 5 full)")
	idle := fs.Duration("idle", 0, "full mode: idle period (default 60s; quick mode idles during pg_cron's run)")
	rates := fs.String("rates", "50,500", "freshness and detection write rates, commits per second (quick mode's detection test uses the first)")
	detectWindow := fs.Duration("detect-window", 0, "sustained writes per mode and rate in the detection test (default 2s quick, 30s full)")
	detectProbes := fs.Int("detect-probes", 0, "isolated probe commits per mode in the detection test (default 4 quick, 50 full)")
	skip := fs.String("skip", "", "sections not to run, for working on the harness: cost,reader,fresh,cron,writer,detect,idle,incremental")
	incremental := fs.Bool("incremental", false, "run the incremental-strategy section (always on in quick mode unless skipped)")
	shapes := fs.String("shapes", "", "incremental section: data shapes, demo (groups saturate) and distinct (nearly every charge its own group) (default demo,distinct; quick: distinct)")
	incStrategies := fs.String("inc-strategies", "", "incremental section: strategies, of "+strings.Join(harness.IncStrategyNames, ",")+" (default all; quick: incremental,full,pgivm)")
	incSizes := fs.String("inc-sizes", "", "incremental section: data sizes (default: quick 20k, full the -sizes with auto as 10M)")
	incWindow := fs.Duration("inc-window", 0, "incremental section: measured window of each freshness run (default 2s quick, 30s full)")
	incFullMax := fs.String("inc-full-max", "", "incremental section: largest size at which full and pg_cron run (default: quick its size, full 1m)")
	incSweep := fs.String("inc-sweep", "", "incremental section: apply sweep batch sizes, charges per transaction (default 10,100,1000 quick; 10,100,1000,10000 full)")
	incWriterSize := fs.String("inc-writer-size", "", "incremental section: size of the writer test (default: quick its size, full 1m)")
	incWriterShapes := fs.String("inc-writer-shapes", "distinct", "incremental section: shapes of the writer test")
	incWriterDuration := fs.Duration("inc-writer-duration", 0, "incremental section: pgbench -T per writer run (default 2s quick, 10s full)")
	incWriterRounds := fs.Int("inc-writer-rounds", 0, "incremental section: writer rounds per mode and client count (default 1 quick, 3 full)")
	pgSettings := map[string]string{}
	fs.Func("pg-setting", "extra PostgreSQL setting of the throwaway cluster, NAME=VALUE (repeatable), e.g. shared_buffers=2GB; the report lists the server settings", func(v string) error {
		k, val, ok := strings.Cut(v, "=")
		if !ok || k == "" {
			return fmt.Errorf("want NAME=VALUE, got %q", v)
		}
		pgSettings[k] = val
		return nil
	})
	render := fs.String("render", "", "write the report again from a run's results.gob (into -out, default that file's folder) without measuring")
	pgIvmSrc := fs.String("pgivm-src", "", "pg_ivm's source folder (default ../shared/anchors/pg_ivm beside the repository)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *render != "" {
		run, err := report.Load(*render)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		dir := *out
		if dir == "" {
			dir = filepath.Dir(*render)
		}
		if err := report.Write(dir, run); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		log.Printf("report written again from %s: %s", *render, filepath.Join(dir, "report.md"))
		return 0
	}
	o := harness.Options{
		Profile:        *size,
		CommandLine:    "go run ./bench/cmd/bench " + strings.Join(args, " "),
		Out:            *out,
		FreshWindow:    *freshWindow,
		CronMinutes:    *cronMinutes,
		WriterDuration: *writerDuration,
		WriterRounds:   *writerRounds,
		CostRounds:     *costRounds,
		Idle:           *idle,
		DetectWindow:   *detectWindow,
		DetectProbes:   *detectProbes,
		Logf:           log.Printf,

		Incremental:       *incremental,
		Shapes:            splitList(*shapes),
		IncStrategies:     splitList(*incStrategies),
		IncWindow:         *incWindow,
		IncWriterShapes:   splitList(*incWriterShapes),
		IncWriterDuration: *incWriterDuration,
		IncWriterRounds:   *incWriterRounds,
		PgIvmSrc:          *pgIvmSrc,
		PGSettings:        pgSettings,
	}
	if o.Out == "" {
		o.Out = filepath.Join(daemontest.ModuleRoot(), "bench", "results", *size)
	}
	var err error
	if *sizes != "" {
		if o.Sizes, err = harness.ParseSizes(*sizes); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 2
		}
	}
	if *writerSize != "" {
		ws, err := harness.ParseSizes(*writerSize)
		if err != nil || len(ws) != 1 || ws[0] == 0 {
			fmt.Fprintln(os.Stderr, "bench: bad -writer-size", *writerSize)
			return 2
		}
		o.WriterSize = ws[0]
	}
	one := func(flag, v string, dst *int) bool {
		if v == "" {
			return true
		}
		ns, err := harness.ParseSizes(v)
		if err != nil || len(ns) != 1 || ns[0] == 0 {
			fmt.Fprintln(os.Stderr, "bench: bad", flag, v)
			return false
		}
		*dst = ns[0]
		return true
	}
	if !one("-inc-full-max", *incFullMax, &o.IncFullMax) || !one("-inc-writer-size", *incWriterSize, &o.IncWriterSize) {
		return 2
	}
	if *incSizes != "" {
		if o.IncSizes, err = harness.ParseSizes(*incSizes); err != nil || slices.Contains(o.IncSizes, 0) {
			fmt.Fprintln(os.Stderr, "bench: bad -inc-sizes", *incSizes)
			return 2
		}
	}
	for _, b := range splitList(*incSweep) {
		n, err := strconv.Atoi(b)
		if err != nil || n <= 0 {
			fmt.Fprintln(os.Stderr, "bench: bad -inc-sweep", *incSweep)
			return 2
		}
		o.IncSweep = append(o.IncSweep, n)
	}
	for _, m := range strings.Split(*modes, ",") {
		if m = strings.TrimSpace(m); m != "" {
			o.Modes = append(o.Modes, m)
		}
	}
	for _, sec := range strings.Split(*skip, ",") {
		if sec = strings.TrimSpace(sec); sec != "" {
			o.Skip = append(o.Skip, sec)
		}
	}
	for _, r := range strings.Split(*rates, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(r), 64)
		if err != nil || v <= 0 {
			fmt.Fprintln(os.Stderr, "bench: bad -rates", *rates)
			return 2
		}
		o.Rates = append(o.Rates, v)
	}

	if err := o.ApplyProfile(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	t0 := time.Now()
	if _, err := harness.Run(ctx, o); err != nil {
		log.Printf("bench failed after %s: %v", time.Since(t0).Round(time.Second), err)
		return 1
	}
	log.Printf("bench done in %s: %s", time.Since(t0).Round(time.Second), filepath.Join(o.Out, "report.md"))
	return 0
}

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

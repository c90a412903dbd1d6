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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/refresherd/refresherd/bench/internal/harness"
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
	writerDuration := fs.Duration("writer-duration", 0, "pgbench -T per run (default 2s quick, 30s full)")
	writerRounds := fs.Int("writer-rounds", 0, "pgbench rounds per mode and client count (default 1 quick, 3 full)")
	costRounds := fs.Int("cost-rounds", 0, "refreshes per method in the cost test (default 3 quick, 5 full)")
	idle := fs.Duration("idle", 0, "full mode: idle period (default 60s; quick mode idles during pg_cron's run)")
	rates := fs.String("rates", "50,500", "freshness and detection write rates, commits per second (quick mode's detection test uses the first)")
	detectWindow := fs.Duration("detect-window", 0, "sustained writes per mode and rate in the detection test (default 2s quick, 30s full)")
	detectProbes := fs.Int("detect-probes", 0, "isolated probe commits per mode in the detection test (default 4 quick, 50 full)")
	skip := fs.String("skip", "", "sections not to run, for working on the harness: cost,reader,fresh,cron,writer,detect,idle")
	if err := fs.Parse(args); err != nil {
		return 2
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

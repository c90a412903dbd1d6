// Command refresherd-demo runs refresherd against a throwaway local
// PostgreSQL with the Django demo tables, 100k demo charges and a trickle of
// live charges, so the whole loop can be watched: charges change, the
// summary follows, /metrics and /status tell how fresh it is.
//
//	make demo   (or: go run ./cmd/refresherd-demo)
//
// Ctrl-C stops the daemon and the writer and deletes the cluster.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/internal/cli"
	"github.com/refresherd/refresherd/internal/demodata"
	"github.com/refresherd/refresherd/internal/pgcluster"
)

var version = "dev"

func main() {
	charges := flag.Int("charges", 100_000, "demo charges to load")
	rate := flag.Float64("rate", 3, "live charge writes per second (inserts, some updates and deletes)")
	listen := flag.String("http-listen", "127.0.0.1:9481", "daemon HTTP address")
	cfgPath := flag.String("config", "config.yaml", "refresherd configuration")
	keep := flag.Bool("keep", false, "keep the PostgreSQL cluster running after Ctrl-C (prints how to reach it)")
	flag.Parse()
	os.Exit(run(*charges, *rate, *listen, *cfgPath, *keep))
}

func run(charges int, rate float64, listen, cfgPath string, keep bool) int {
	logger := log.New(os.Stdout, "demo: ", log.Ltime)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if _, err := os.Stat(cfgPath); err != nil {
		logger.Printf("%v (run from the repository root, or pass -config)", err)
		return 2
	}

	logger.Printf("starting a throwaway PostgreSQL (installs Debian's postgresql if missing)...")
	cluster, err := pgcluster.Start(ctx, pgcluster.Options{Logf: logger.Printf})
	if err != nil {
		logger.Printf("start PostgreSQL: %v", err)
		return 1
	}
	if keep {
		defer logger.Printf("cluster kept: %s (data in %s)", cluster.URL("demo"), cluster.DataDir())
	} else {
		defer cluster.Destroy()
	}
	if err := cluster.CreateDatabase(ctx, "demo"); err != nil {
		logger.Printf("create database: %v", err)
		return 1
	}
	url := cluster.URL("demo")
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		logger.Printf("connect: %v", err)
		return 1
	}
	defer pool.Close()
	size := demodata.DefaultSize(charges)
	start := time.Now()
	if err := demodata.CreateSchema(ctx, pool); err != nil {
		logger.Printf("create demo tables: %v", err)
		return 1
	}
	if err := demodata.Load(ctx, pool, size); err != nil {
		logger.Printf("load demo charges: %v", err)
		return 1
	}
	logger.Printf("loaded %d charges for %d users and %d jobs in %v", size.Charges, size.Users, size.Jobs, time.Since(start).Round(time.Millisecond))

	// The daemon runs in this process exactly as `refresherd run` would; it
	// stops on the same Ctrl-C.
	daemonDone := make(chan int, 1)
	go func() {
		daemonDone <- cli.Main([]string{"run", "--config", cfgPath, "--http-listen", listen, "--log-format", "console"}, cli.Env{
			Version: version,
			Stdout:  os.Stdout,
			Stderr:  os.Stderr,
			Getenv: func(k string) string {
				if k == "DATABASE_URL" {
					return url
				}
				return os.Getenv(k)
			},
		})
	}()

	abs, _ := filepath.Abs(cfgPath)
	fmt.Printf(`
refresherd demo is running
  metrics:  http://%[1]s/metrics
  status:   http://%[1]s/status
  database: psql '%[2]s'
            SELECT * FROM app_chargesummary WHERE user_id = 1;
            SELECT refresherd.data_as_of('public.app_chargesummary');
  config:   %[3]s
  refresh now: kill -USR1 %[4]d
  writing about %[5]g charge changes per second; Ctrl-C to stop

`, listen, url, abs, os.Getpid(), rate)

	w := demodata.NewWriter(pool, size, time.Now().UnixNano(), logger.Printf)
	writerDone := make(chan demodata.Counts, 1)
	go func() {
		counts, err := w.Run(ctx, rate, demodata.Mix{Insert: 0.7, Update: 0.2, Delete: 0.1})
		if err != nil && ctx.Err() == nil {
			logger.Printf("writer: %v", err)
		}
		writerDone <- counts
	}()

	code := <-daemonDone
	stop()
	counts := <-writerDone
	logger.Printf("wrote %d inserts, %d updates, %d deletes", counts.Inserts, counts.Updates, counts.Deletes)
	if code == cli.ExitOK {
		missing, extra, err := demodata.Diff(context.Background(), pool, "public.app_chargesummary")
		if err == nil {
			logger.Printf("summary vs aggregate at exit: %d rows missing, %d extra (changes after the last refresh are expected to be missing)", missing, extra)
		}
	}
	return code
}

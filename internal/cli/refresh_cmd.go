package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/refresh"
)

const refreshHelp = `Refresh views once, now, with the daemon's own code: create refresherd's
schema and each view (with its unique index and change triggers) when
missing, then refresh each view in one transaction that also records its
status (trigger "manual"), exactly as the daemon does. For a CronJob or a
deploy step; a running daemon needs no restart.

VIEW... are schema-qualified view names from the configuration, refreshed in
the order given (default: every configured view, in configuration order). A
refresh waits for a running refresh of the same view (by the daemon or
another refresh command) instead of overlapping it. The view's
statement_timeout and lock_timeout apply. SIGINT/SIGTERM cancel the running
refresh on the server; the view keeps its previous data.

Output, one line per refreshed view on stdout:
  <view> refreshed in <duration> (<concurrently|plain>), data as of <RFC 3339 time>
A failure is printed on stderr and recorded in the status table; the
remaining views are still refreshed.

Exit codes: 0 every view refreshed, 1 any failure, 2 bad usage, an unknown
view or a bad configuration.`

const (
	// setupTimeout bounds creating the schema or a view (its WITH NO DATA
	// creation is quick; set-up waits at most 10s for each lock).
	setupTimeout = 2 * time.Minute
	// refreshSlack is added to a view's statement and lock timeouts for the
	// client-side deadline: the server enforces those; this only catches a
	// server that stopped answering.
	refreshSlack = time.Minute
)

func runRefresh(args []string, env Env) int {
	fs := newCmdFlags("refresh", "refresh [--config FILE] [--database-url URL] [VIEW...]", refreshHelp, env)
	df := addDBFlags(fs)
	names, code, ok := parseInterspersed(fs, args)
	if !ok {
		return code
	}
	s, err := loadDB(df, env)
	if err != nil {
		return errorf(env, ExitUsage, "refresh", "%v", err)
	}
	env = redacted(env, s)
	views, err := selectViews(s.cfg, names)
	if err != nil {
		return errorf(env, ExitUsage, "refresh", "%v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// One refresh at a time plus the connection RecordFailure may need.
	s.poolCfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, s.poolCfg)
	if err != nil {
		return errorf(env, ExitFailure, "refresh", "create connection pool: %v", err)
	}
	defer pool.Close()

	sctx, cancel := context.WithTimeout(ctx, setupTimeout)
	err = refresh.EnsureSchema(sctx, pool)
	cancel()
	if err != nil {
		return errorf(env, ExitFailure, "refresh", "prepare database: %v", err)
	}
	host, _ := os.Hostname()
	identity := host + "/" + strconv.Itoa(os.Getpid())
	failed := 0
	for _, v := range views {
		if ctx.Err() != nil {
			errorf(env, ExitFailure, "refresh", "%s: not refreshed: interrupted", v.Name)
			failed++
			continue
		}
		line, err := refreshOne(ctx, refresh.NewStrategy(pool, identity, v), v)
		if err != nil {
			errorf(env, ExitFailure, "refresh", "%v", err)
			failed++
			continue
		}
		fmt.Fprintln(env.Stdout, line)
	}
	if failed > 0 {
		return ExitFailure
	}
	return ExitOK
}

// refreshOne sets up and refreshes one view like a daemon worker does, and
// returns its report line.
func refreshOne(ctx context.Context, r refresh.Strategy, v *config.View) (string, error) {
	sctx, cancel := context.WithTimeout(ctx, setupTimeout)
	_, err := r.Setup(sctx, v, nil)
	cancel()
	if err != nil {
		return "", fmt.Errorf("set up %s: %w", v.Name, err)
	}
	rctx, cancel := context.WithTimeout(ctx, v.StatementTimeout+v.LockTimeout+refreshSlack)
	defer cancel()
	out, err := r.Refresh(rctx, v, refresh.TriggerManual, nil)
	if err != nil {
		// An interrupted refresh is not a failure of the view: like the
		// daemon on shutdown, record nothing.
		if ctx.Err() != nil {
			return "", fmt.Errorf("%w (interrupted; the view keeps its previous data)", err)
		}
		if rerr := r.RecordFailure(ctx, v, refresh.TriggerManual, out.Duration, err); rerr != nil {
			return "", fmt.Errorf("%w; also: %w", err, rerr)
		}
		return "", err
	}
	mode := "plain"
	switch name, _ := refresh.Describe(r); {
	case name == config.StrategyIncremental && out.Rebuilt != "":
		mode = "incremental, rebuilt: " + out.Rebuilt
	case name == config.StrategyIncremental:
		mode = fmt.Sprintf("incremental, %d groups", out.Touched)
	case out.Concurrently:
		mode = "concurrently"
	}
	return fmt.Sprintf("%s refreshed in %s (%s), data as of %s",
		v.Name, formatDuration(out.Duration), mode, out.AsOf.UTC().Format(time.RFC3339Nano)), nil
}

// selectViews returns the configured views named, in the order named and
// without repeats, or all of them when none is named. Names are compared
// parsed, so "public.x" and "\"public\".\"x\"" are the same view.
func selectViews(cfg *config.Config, names []string) ([]*config.View, error) {
	if len(names) == 0 {
		out := make([]*config.View, len(cfg.Views))
		for i := range cfg.Views {
			out[i] = &cfg.Views[i]
		}
		return out, nil
	}
	var out []*config.View
	var unknown []string
	seen := map[config.QualifiedName]bool{}
	for _, n := range names {
		q, err := config.ParseQualifiedName(n)
		if err != nil {
			return nil, fmt.Errorf("view %q: %w", n, err)
		}
		if seen[q] {
			continue
		}
		seen[q] = true
		found := false
		for i := range cfg.Views {
			if cfg.Views[i].Name == q {
				out = append(out, &cfg.Views[i])
				found = true
				break
			}
		}
		if !found {
			unknown = append(unknown, q.String())
		}
	}
	if len(unknown) > 0 {
		configured := make([]string, len(cfg.Views))
		for i, v := range cfg.Views {
			configured[i] = v.Name.String()
		}
		word := "view"
		if len(unknown) > 1 {
			word = "views"
		}
		return nil, fmt.Errorf("unknown %s %s: not in %s (configured: %s)",
			word, strings.Join(unknown, ", "), cfg.File, strings.Join(configured, ", "))
	}
	return out, nil
}

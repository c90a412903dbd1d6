package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/refresh"
	"github.com/refresherd/refresherd/refresh/incremental"
)

const verifyHelp = `Compare each incremental summary with a fresh full aggregate of its query,
in one snapshot, and print the rows in which they differ. Groups whose
changes are still waiting in the key log (not yet applied by the daemon)
are not mismatches; their number is printed. A view whose strategy is full
(or auto choosing full) is a REFRESH of its query and is skipped.

VIEW... are schema-qualified view names from the configuration (default:
every configured view).

Output, per view on stdout:
  <view> equal (<n> pending groups)
  <view> MISMATCH: <n> rows differ
    summary only: col=value, ...
    query only:   col=value, ...
  <view> skipped: strategy full

Exit codes: 0 every verified view equal, 1 a mismatch or failure, 2 bad
usage, an unknown view or a bad configuration.`

// verifyShown is how many mismatched rows are printed per view.
const verifyShown = 20

func runVerify(args []string, env Env) int {
	fs := newCmdFlags("verify", "verify [--config FILE] [--database-url URL] [VIEW...]", verifyHelp, env)
	df := addDBFlags(fs)
	names, code, ok := parseInterspersed(fs, args)
	if !ok {
		return code
	}
	return verifyWith(fs, df, names, env)
}

func verifyWith(_ *flag.FlagSet, df *dbFlags, names []string, env Env) int {
	s, err := loadDB(df, env)
	if err != nil {
		return errorf(env, ExitUsage, "verify", "%v", err)
	}
	env = redacted(env, s)
	views, err := selectViews(s.cfg, names)
	if err != nil {
		return errorf(env, ExitUsage, "verify", "%v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s.poolCfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, s.poolCfg)
	if err != nil {
		return errorf(env, ExitFailure, "verify", "create connection pool: %v", err)
	}
	defer pool.Close()
	failed := false
	for _, v := range views {
		if !verifyOne(ctx, pool, v, env) {
			failed = true
		}
	}
	if failed {
		return ExitFailure
	}
	return ExitOK
}

// verifyOne verifies one view and prints its result; it reports whether the
// view is fine (equal or skipped).
func verifyOne(ctx context.Context, pool *pgxpool.Pool, v *config.View, env Env) bool {
	if v.Strategy == config.StrategyFull {
		fmt.Fprintf(env.Stdout, "%s skipped: strategy full\n", v.Name)
		return true
	}
	res, err := refresh.Verify(ctx, pool, v, verifyShown)
	var nq *incremental.NotQualified
	switch {
	case errors.As(err, &nq) && v.Strategy == config.StrategyAuto:
		fmt.Fprintf(env.Stdout, "%s skipped: strategy full (auto: %s)\n", v.Name, nq.Reason)
		return true
	case err != nil:
		errorf(env, ExitFailure, "verify", "%v", err)
		return false
	case res.Mismatched == 0:
		fmt.Fprintf(env.Stdout, "%s equal (%d pending groups)\n", v.Name, res.PendingGroups)
		return true
	}
	fmt.Fprintf(env.Stdout, "%s MISMATCH: %d rows differ\n", v.Name, res.Mismatched)
	for _, r := range res.Rows {
		fmt.Fprintf(env.Stdout, "  %s\n", formatRow(r))
	}
	if int64(len(res.Rows)) < res.Mismatched {
		fmt.Fprintf(env.Stdout, "  ... %d more\n", res.Mismatched-int64(len(res.Rows)))
	}
	return false
}

// formatRow prints a mismatched row: its side first, then its columns in
// name order.
func formatRow(m incremental.Mismatch) string {
	keys := make([]string, 0, len(m.Row))
	for k := range m.Row {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m.Row[k]
	}
	return fmt.Sprintf("%-13s %s", m.Side+":", strings.Join(parts, ", "))
}

package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/refresh"
	"github.com/refresherd/refresherd/refresh/incremental"
)

// dryRunIncremental describes what start-up does with an incremental or
// auto view; "" when auto falls back to full (the caller describes that).
func dryRunIncremental(ctx context.Context, pool *pgxpool.Pool, v *config.View) (string, error) {
	plan, err := refresh.Analyze(ctx, pool, v)
	var nq *incremental.NotQualified
	switch {
	case errors.As(err, &nq) && v.Strategy == config.StrategyAuto:
		return fmt.Sprintf("%s: strategy auto: full (the query does not qualify for incremental: %s)", v.Name, nq.Reason), nil
	case errors.As(err, &nq):
		return fmt.Sprintf("%s: PROBLEM: strategy incremental, but the query does not qualify: %s", v.Name, nq.Reason), nil
	case err != nil:
		return "", fmt.Errorf("dry run: %w", err)
	}
	var kind string
	err = pool.QueryRow(ctx, `SELECT coalesce((SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)), '')`, v.Name.Sanitized()).Scan(&kind)
	if err != nil {
		return "", fmt.Errorf("dry run: look up %s: %w", v.Name, err)
	}
	what := "keep it with rounds over the changed groups (a rebuild if the definition changed or the key log was lost)"
	switch kind {
	case "":
		what = "install the capture triggers on " + plan.Source.String() + ", then build the summary table"
	case "m":
		what = "install the capture triggers on " + plan.Source.String() + ", then build the summary table beside the materialized view and swap it in"
	case "r":
	default:
		return fmt.Sprintf("%s: PROBLEM: exists and is neither a table nor a materialized view; it would not be managed", v.Name), nil
	}
	return fmt.Sprintf("%s: strategy incremental (configured %s): %s", v.Name, v.Strategy, what), nil
}

// dryRun prints what `run` would change in the database at start-up,
// changing nothing: views to create, definitions to rebuild (and what would
// block a rebuild), views to adopt.
func dryRun(cfg *config.Config, poolCfg *pgxpool.Config, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return fmt.Errorf("dry run: connect: %w", err)
	}
	defer pool.Close()
	var hasSchema bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('refresherd.view_status') IS NOT NULL`).Scan(&hasSchema); err != nil {
		return fmt.Errorf("dry run: %w", err)
	}
	if !hasSchema {
		fmt.Fprintln(out, "create schema refresherd (status table, refresh log, trigger functions)")
	}
	for i := range cfg.Views {
		v := &cfg.Views[i]
		if v.Strategy != config.StrategyFull {
			line, err := dryRunIncremental(ctx, pool, v)
			if err != nil {
				return err
			}
			if line != "" {
				fmt.Fprintln(out, line)
				continue
			}
		}
		var kind string
		err := pool.QueryRow(ctx, `SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)`, v.Name.Sanitized()).Scan(&kind)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			fmt.Fprintf(out, "%s: create the materialized view and its unique index (%v), then populate it\n", v.Name, v.UniqueKey)
			continue
		case err != nil:
			return fmt.Errorf("dry run: look up %s: %w", v.Name, err)
		case kind != "m":
			fmt.Fprintf(out, "%s: PROBLEM: exists and is not a materialized view; it would not be managed\n", v.Name)
			continue
		}
		stored := ""
		if hasSchema {
			var h *string
			err := pool.QueryRow(ctx, `SELECT definition_hash FROM refresherd.view_status WHERE view_name = $1`, v.Name.String()).Scan(&h)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("dry run: read status of %s: %w", v.Name, err)
			}
			if h != nil {
				stored = *h
			}
		}
		switch stored {
		case "":
			fmt.Fprintf(out, "%s: adopt the existing materialized view (its definition is assumed to match)\n", v.Name)
		case refresh.DefinitionHash(v):
			fmt.Fprintf(out, "%s: up to date\n", v.Name)
		default:
			plan, err := refresh.PlanSwap(ctx, pool, v)
			if err != nil {
				return fmt.Errorf("dry run: %w", err)
			}
			fmt.Fprintf(out, "%s: definition changed: %s\n", v.Name, plan)
		}
	}
	return nil
}

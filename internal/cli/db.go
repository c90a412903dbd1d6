package cli

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/config"
)

// Helpers shared by the one-shot database commands (status, refresh, check).

// dbFlags are the flags every database command takes, with run's meaning.
type dbFlags struct {
	config      string
	databaseURL string
}

func addDBFlags(fs *flag.FlagSet) *dbFlags {
	f := &dbFlags{}
	fs.StringVar(&f.config, "config", "config.yaml", "configuration file")
	fs.StringVar(&f.databaseURL, "database-url", "", "PostgreSQL URL (overrides $DATABASE_URL and database.url)")
	return f
}

// newCmdFlags is newFlags with a description printed between the synopsis
// and the flags, so each command's -h explains what it does and its exit
// codes.
func newCmdFlags(name, synopsis, description string, env Env) *flag.FlagSet {
	fs := newFlags(name, synopsis, env)
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "Usage: refresherd %s\n\n%s\n\nFlags:\n", synopsis, strings.TrimSpace(description))
		fs.PrintDefaults()
	}
	return fs
}

// parseInterspersed parses flags that may come before, between or after
// positional arguments (`refresh public.a --config x`), which flag.Parse
// alone stops at. ok false means the caller returns code.
func parseInterspersed(fs *flag.FlagSet, args []string) (positional []string, code int, ok bool) {
	for {
		if code, ok := parseFlags(fs, args); !ok {
			return nil, code, false
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, 0, true
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// dbSetup is a loaded configuration with its parsed connection settings.
type dbSetup struct {
	cfg        *config.Config
	poolCfg    *pgxpool.Config
	sessionCfg *pgx.ConnConfig
	secrets    []string
}

// loadDB loads and validates the configuration exactly as run does
// (loadConfig, connConfigs), so a config error reads the same in every
// command. Only the fields run's overrides know are overridden here.
func loadDB(f *dbFlags, env Env) (*dbSetup, error) {
	cfg, err := loadConfig(f.config, env, config.Overrides{DatabaseURL: f.databaseURL})
	if err != nil {
		return nil, err
	}
	poolCfg, sessionCfg, err := connConfigs(cfg)
	if err != nil {
		return nil, err
	}
	s := &dbSetup{cfg: cfg, poolCfg: poolCfg, sessionCfg: sessionCfg}
	s.secrets = secretsOf(cfg.Database.URL, cfg.Database.DirectURL, poolCfg.ConnConfig.Password, sessionCfg.Password)
	return s, nil
}

// setAppName labels a tool's connections in pg_stat_activity (for example
// "refresherd-status") unless the URL chose a name of its own. The daemon's
// and the refresh command's connections keep "refresherd": status counts a
// REFRESH by that name as a refresh in progress.
func setAppName(c *pgx.ConnConfig, name string) {
	if c.RuntimeParams["application_name"] == "refresherd" {
		c.RuntimeParams["application_name"] = name
	}
}

// connect opens one connection (status and check need no pool). The
// connect timeout comes from connConfigs (10s unless the URL sets one).
func connect(ctx context.Context, c *pgx.ConnConfig) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

// closeConn closes conn under a short deadline of its own: the command's
// context may already be done, and a dead server must not hang the exit.
func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// minSecretLen: shorter strings are not redacted; replacing every "ab" in
// the output would garble it, and such a password is no secret anyway.
const minSecretLen = 4

// secretsOf returns the non-empty secrets, longest first, so a URL is
// replaced whole before the password inside it.
func secretsOf(ss ...string) []string {
	var out []string
	for _, s := range ss {
		if len(s) >= minSecretLen {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// redactWriter replaces secrets (database URLs and passwords) in what goes
// through it. Error messages from drivers and servers are not ours to
// vouch for, so the commands' whole output passes through it. Callers write
// whole lines or documents at once, so a secret is never split between
// writes.
type redactWriter struct {
	w       io.Writer
	secrets []string
}

func (r *redactWriter) Write(p []byte) (int, error) {
	out := p
	for _, s := range r.secrets {
		if bytes.Contains(out, []byte(s)) {
			out = bytes.ReplaceAll(out, []byte(s), []byte("[redacted]"))
		}
	}
	if _, err := r.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// redacted returns env with its output redacted of s's secrets.
func redacted(env Env, s *dbSetup) Env {
	if len(s.secrets) == 0 {
		return env
	}
	env.Stdout = &redactWriter{w: env.Stdout, secrets: s.secrets}
	env.Stderr = &redactWriter{w: env.Stderr, secrets: s.secrets}
	return env
}

// oneLine makes a message fit one line of a table or a line-oriented
// report: PostgreSQL errors may carry newlines (DETAIL, query context).
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// truncate cuts s to at most n runes, marking the cut.
func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

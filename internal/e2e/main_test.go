// Package e2e runs the built refresherd binary against a real PostgreSQL, as
// users run it: config file, environment, signals, HTTP endpoints.
package e2e

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/internal/daemontest"
)

func TestMain(m *testing.M) { daemontest.Main(m) }

// execBinary runs the refresherd binary with args and returns its combined
// output.
func execBinary(ctx context.Context, t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, daemontest.Binary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// waitIdle waits until the summary has no refresh running or pending.
func waitIdle(t *testing.T, ctx context.Context, p *daemontest.Proc) {
	t.Helper()
	if err := p.WaitIdle(ctx, view); err != nil {
		t.Fatal(err)
	}
}

// startShippedIdle runs the daemon with the shipped config on a new demo
// database of n charges and returns once the view is populated and the
// daemon is idle, with a pool on the database. A password, if given, is put
// in the daemon's database URL (the test cluster trusts local connections,
// so any password works).
func startShippedIdle(ctx context.Context, t *testing.T, n int, password string) (*daemontest.Proc, *pgxpool.Pool) {
	t.Helper()
	dbURL, pool := daemontest.DemoDB(t, n)
	if password != "" {
		u, err := url.Parse(dbURL)
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.UserPassword(u.User.Username(), password)
		dbURL = u.String()
	}
	p := daemontest.StartT(t, daemontest.Options{
		Args: []string{"--config", daemontest.ShippedConfig()},
		Env:  []string{"DATABASE_URL=" + dbURL},
	})
	if err := daemontest.Settled(ctx, pool, view); err != nil {
		t.Fatalf("initial population: %v", err)
	}
	waitIdle(t, ctx, p)
	return p, pool
}

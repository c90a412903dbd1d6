// Package e2e runs the built refresherd binary against a real PostgreSQL, as
// users run it: config file, environment, signals, HTTP endpoints.
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/internal/daemontest"
	"github.com/refresherd/refresherd/internal/demodata"
	"github.com/refresherd/refresherd/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// bin is refresherd built once for this test binary; the tests run it as
// users do, as a separate process.
var bin daemontest.Binary

func mustBinary(t *testing.T) string {
	t.Helper()
	return bin.Path(t)
}

// demoDB creates a database with the Django tables and n charges.
func demoDB(t *testing.T, n int) (string, *pgxpool.Pool) {
	t.Helper()
	url := pgtest.NewDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := demodata.CreateSchema(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if err := demodata.Load(ctx, pool, demodata.DefaultSize(n)); err != nil {
		t.Fatal(err)
	}
	return url, pool
}

// writeConfig writes a config file into the test's temp dir.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// shippedConfig is the repository's config.yaml.
func shippedConfig() string { return filepath.Join(daemontest.ModuleRoot(), "config.yaml") }

// startDaemon starts the binary and stops it (SIGKILL if need be) at cleanup.
func startDaemon(t *testing.T, env []string, args ...string) *daemontest.Proc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := daemontest.Start(ctx, daemontest.Options{Binary: mustBinary(t), Args: args, Env: env})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !p.Exited() {
			p.Kill()
		}
		if t.Failed() {
			t.Logf("daemon logs:\n%s", p.Logs())
		}
	})
	return p
}

// settled waits until the summary equals the aggregate exactly.
func settled(ctx context.Context, pool *pgxpool.Pool, view string) error {
	return daemontest.Eventually(ctx, 50*time.Millisecond, func() error {
		missing, extra, err := demodata.Diff(ctx, pool, view)
		if err != nil {
			return err
		}
		if missing != 0 || extra != 0 {
			return fmt.Errorf("summary differs from the aggregate: %d rows missing, %d extra", missing, extra)
		}
		return nil
	})
}

package daemontest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/internal/demodata"
	"github.com/refresherd/refresherd/internal/pgtest"
)

// This file is the test-package side of daemontest: the one TestMain, the
// binary built once per test process, and a daemon started for one test.
//
//	func TestMain(m *testing.M) { daemontest.Main(m) }
//
//	p := daemontest.StartT(t, daemontest.Options{Args: []string{"--config", cfg}, Env: env})

// startTimeout bounds StartT: the daemon logs its HTTP address before it
// touches the database, so this is process start-up only.
const startTimeout = 30 * time.Second

// binaryCache builds the daemon at most once per test process.
type binaryCache struct {
	mu   sync.Mutex
	done bool
	dir  string
	path string
	err  error
}

// built is daemontest's only package state: a test process builds the
// binary once however many tests run it, and Main removes it at the end.
var built binaryCache

func (c *binaryCache) get() (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return c.path, c.err
	}
	c.done = true
	c.dir, c.err = os.MkdirTemp("", "refresherd-test-bin-")
	if c.err != nil {
		c.err = fmt.Errorf("build refresherd: %w", c.err)
		return "", c.err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c.path, c.err = Build(ctx, c.dir)
	return c.path, c.err
}

func (c *binaryCache) remove() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dir != "" {
		_ = os.RemoveAll(c.dir)
	}
}

// Binary returns the path of refresherd built from this tree, building it on
// first use in this test process; a build failure fails t.
func Binary(t testing.TB) string {
	t.Helper()
	path, err := built.get()
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// Main is TestMain for packages that run the daemon against the package's
// shared PostgreSQL (pgtest): it runs the tests, removes the binary they
// built and exits.
func Main(m *testing.M) {
	code := pgtest.Run(m)
	built.remove()
	os.Exit(code)
}

// MainOwnClusters is Main for packages whose tests each start a private
// cluster (pgtest.NewCluster), so no shared one is started.
func MainOwnClusters(m *testing.M) {
	code := pgtest.RunOwnClusters(m)
	built.remove()
	os.Exit(code)
}

// StartT starts the daemon for t (Options.Binary defaults to Binary(t)) and
// fails t if it does not come up. At cleanup the daemon is killed if the
// test has not stopped it, and its logs are printed if the test failed.
func StartT(t testing.TB, o Options) *Proc {
	t.Helper()
	if o.Binary == "" {
		o.Binary = Binary(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	p, err := Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !p.Exited() {
			p.Kill()
		}
		if t.Failed() {
			t.Logf("daemon %d logs:\n%s", p.PID(), p.Logs())
		}
	})
	return p
}

// ShippedConfig is the repository's config.yaml.
func ShippedConfig() string { return filepath.Join(ModuleRoot(), "config.yaml") }

// WriteConfig writes a config file into the test's temporary directory and
// returns its path.
func WriteConfig(t testing.TB, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// DemoDB creates a database on the package's shared server with the Django
// tables and n demo charges; it returns its URL and a pool on it, closed at
// cleanup.
func DemoDB(t testing.TB, n int) (string, *pgxpool.Pool) {
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

// Settled waits until the summary view equals the aggregate over the
// current data exactly, or ctx ends.
func Settled(ctx context.Context, pool *pgxpool.Pool, view string) error {
	return Eventually(ctx, 50*time.Millisecond, func() error {
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

// SummaryView is the YAML `views:` list item of the demo summary
// (public.app_chargesummary, keyed by id, watching public.app_charge)
// defined by query (demodata.SummaryQuery or one with the same rows), for
// test configs.
func SummaryView(query string) string {
	return `  - name: public.app_chargesummary
    unique_key: [id]
    sources: [public.app_charge]
    query: |
      ` + strings.ReplaceAll(query, "\n", "\n      ") + "\n"
}

// Result is one finished one-shot command.
type Result struct {
	Stdout, Stderr string
	Code           int
}

// Run runs `refresherd ARGS` to completion with the environment's
// DATABASE_URL, DATABASE_DIRECT_URL and REFRESHERD_PIDFILE dropped and env
// added, so a test sees only what it passes. A command that cannot start
// fails t; a non-zero exit is a Result.
func Run(t testing.TB, env []string, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	c := exec.CommandContext(ctx, Binary(t), args...)
	for _, e := range os.Environ() {
		name, _, _ := strings.Cut(e, "=")
		switch name {
		case "DATABASE_URL", "DATABASE_DIRECT_URL", "REFRESHERD_PIDFILE":
			continue
		}
		c.Env = append(c.Env, e)
	}
	c.Env = append(c.Env, env...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	r := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	default:
		t.Fatalf("refresherd %v: %v", args, err)
	}
	return r
}

// commandTimeout bounds one one-shot command in tests.
const commandTimeout = 3 * time.Minute

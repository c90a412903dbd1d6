// Package pgbouncertest runs refresherd behind a real PgBouncer in
// transaction pooling mode, as Django shops run it: database.url through
// PgBouncer, database.direct_url straight to PostgreSQL for LISTEN and the
// leader lock. The daemon and the commands are the built binary, run as
// users run them; each test starts its own PgBouncer (installed with apt-get
// when missing) in front of the package's throwaway cluster.
package pgbouncertest

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/refresherd/refresherd/internal/daemontest"
	"github.com/refresherd/refresherd/internal/pgbouncer"
	"github.com/refresherd/refresherd/internal/pgtest"
)

func TestMain(m *testing.M) { daemontest.Main(m) }

const view = "public.app_chargesummary"

// startBouncer starts PgBouncer in mode in front of the test server and
// stops it at cleanup. A PgBouncer per test keeps each test's pools to
// itself.
func startBouncer(t *testing.T, mode string) *pgbouncer.Bouncer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute) // may install it
	defer cancel()
	b, err := pgbouncer.Start(ctx, pgtest.AdminURL(), pgbouncer.Options{Logf: t.Logf, PoolMode: mode})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if log, err := os.ReadFile(b.LogPath()); err == nil {
				t.Logf("pgbouncer log:\n%s", log)
			}
		}
		b.Stop()
	})
	return b
}

// via is url through b.
func via(t *testing.T, b *pgbouncer.Bouncer, url string) string {
	t.Helper()
	u, err := b.URL(url)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// result is one finished command.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return "exit " + strconv.Itoa(r.code) + "\n--- stdout:\n" + r.stdout + "--- stderr:\n" + r.stderr
}

// lines returns the non-empty lines of s.
func (r result) lines() []string {
	var out []string
	for _, l := range strings.Split(r.stdout, "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// linesWith returns the stdout lines that start with prefix.
func (r result) linesWith(prefix string) []string {
	var out []string
	for _, l := range r.lines() {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return out
}

// cmd runs `refresherd ARGS` with only the given database variables.
func cmd(t *testing.T, env []string, args ...string) result {
	t.Helper()
	dr := daemontest.Run(t, env, args...)
	r := result{stdout: dr.Stdout, stderr: dr.Stderr, code: dr.Code}
	return r
}

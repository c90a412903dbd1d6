// Package clitest runs refresherd's one-shot commands (status, refresh,
// check, version, help) as a user does: the built binary as a process, a
// config file, a real PostgreSQL database per test.
package clitest

import (
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/internal/daemontest"
)

func TestMain(m *testing.M) { daemontest.Main(m) }

// secret is put in every database URL the commands get (the test cluster
// trusts local connections, so any password works); no output may show it.
const secret = "Sup3rSecretPw"

// result is one finished command.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return "exit " + strconv.Itoa(r.code) + "\n--- stdout:\n" + r.stdout + "--- stderr:\n" + r.stderr
}

// cmd runs `refresherd ARGS` with extra environment entries and returns its
// output and exit code. The caller's DATABASE_URL and friends are dropped
// so tests see only what they pass. It fails the test if the output shows
// the password.
func cmd(t *testing.T, env []string, args ...string) result {
	t.Helper()
	dr := daemontest.Run(t, env, args...)
	r := result{stdout: dr.Stdout, stderr: dr.Stderr, code: dr.Code}
	if strings.Contains(r.stdout+r.stderr, secret) {
		t.Errorf("refresherd %v printed the database password:\n%s", args, r)
	}
	return r
}

// withPassword returns u with user (if not empty) and the test password.
func withPassword(t *testing.T, u, user string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	if user == "" {
		user = p.User.Username()
	}
	p.User = url.UserPassword(user, secret)
	return p.String()
}

// demoDB creates a database with the Django tables and n charges; it
// returns the URL (with the test password) and an admin pool.
func demoDB(t *testing.T, n int) (string, *pgxpool.Pool) {
	t.Helper()
	u, pool := daemontest.DemoDB(t, n)
	return withPassword(t, u, ""), pool
}

// lines returns the non-empty lines of s.
func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

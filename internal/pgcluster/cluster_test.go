package pgcluster

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func startCluster(t *testing.T, opts Options) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Destroy)
	return c
}

func queryInt(t *testing.T, ctx context.Context, url, sql string) int64 {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int64
	if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := startCluster(t, Options{Settings: map[string]string{"application_name": "it's pgcluster"}})

	if !strings.HasPrefix(c.URL("x"), "postgres://postgres@127.0.0.1:"+strconv.Itoa(c.Port())+"/x?") {
		t.Fatalf("URL = %q", c.URL("x"))
	}
	for _, p := range []string{c.DataDir(), c.LogPath(), filepath.Join(c.BinDir(), "postgres")} {
		if _, err := os.Stat(p); err != nil {
			t.Fatal(err)
		}
	}
	// The socket must sit in the short temp dir (path length limit).
	sock := filepath.Join(filepath.Dir(c.DataDir()), ".s.PGSQL."+strconv.Itoa(c.Port()))
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("unix socket: %v", err)
	}

	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	var fsync, appName string
	if err := conn.QueryRow(ctx, "SELECT current_setting('fsync'), current_setting('application_name')").Scan(&fsync, &appName); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if fsync != "off" || appName != "it's pgcluster" {
		t.Fatalf("fsync=%q application_name=%q", fsync, appName)
	}

	const db = "Mixed Case-db"
	if err := c.CreateDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	if got := queryInt(t, ctx, c.URL(db), "WITH c AS (SELECT 1) SELECT count(*) FROM (SELECT 1) x"); got != 1 {
		t.Fatalf("count = %d", got)
	}
	if out, err := c.Psql(ctx, db, "-c", "CREATE TABLE t AS SELECT g FROM generate_series(1, 10) g").CombinedOutput(); err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	if got := queryInt(t, ctx, c.URL(db), "SELECT count(*) FROM t"); got != 10 {
		t.Fatalf("count = %d", got)
	}

	// Data survives an immediate stop (crash-like) and a restart on the same port.
	if err := c.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PostmasterPID(); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("PostmasterPID after stop: %v", err)
	}
	if err := c.StartAgain(ctx); err != nil {
		t.Fatal(err)
	}
	if got := queryInt(t, ctx, c.URL(db), "SELECT sum(g) FROM t"); got != 55 {
		t.Fatalf("sum = %d", got)
	}

	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}

	// Kill: a connection open at the time fails; the cluster comes back with the data.
	held, err := pgx.Connect(ctx, c.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close(ctx)
	pid, err := c.PostmasterPID()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Kill took %s", time.Since(t0))
	if !processGone(pid) {
		t.Fatalf("postmaster %d still alive", pid)
	}
	if _, err := c.PostmasterPID(); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("PostmasterPID after kill: %v", err)
	}
	if err := held.Ping(ctx); err == nil {
		t.Fatal("ping on a connection to a killed server succeeded")
	}
	if err := c.StartAgain(ctx); err != nil {
		t.Fatal(err)
	}
	if got := queryInt(t, ctx, c.URL(db), "SELECT count(*) FROM t"); got != 10 {
		t.Fatalf("count after kill = %d", got)
	}

	out, err := c.Psql(ctx, db, "-At", "-c", "SELECT max(g) FROM t").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "10" {
		t.Fatalf("psql: %v %q", err, out)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir(), "pg_controldata"), c.DataDir())
	c.RunAsOwner(cmd)
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "in production") {
		t.Fatalf("pg_controldata: %v\n%s", err, out)
	}

	if err := c.DropDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	if err := c.DropDatabase(ctx, db); err != nil {
		t.Fatalf("dropping a missing database: %v", err)
	}
	if err := c.Stop(ctx, "bogus"); err == nil {
		t.Fatal("Stop accepted an unknown mode")
	}

	base := filepath.Dir(c.DataDir())
	c.Destroy()
	c.Destroy()
	if _, err := os.Stat(base); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temp dir after Destroy: %v", err)
	}
	if !processGone(pid) {
		t.Fatal("postmaster alive after Destroy")
	}
}

func TestFsyncOn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := startCluster(t, Options{FsyncOn: true})
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var fsync, fpw, maxConn string
	if err := conn.QueryRow(ctx, "SELECT current_setting('fsync'), current_setting('full_page_writes'), current_setting('max_connections')").Scan(&fsync, &fpw, &maxConn); err != nil {
		t.Fatal(err)
	}
	if fsync != "on" || fpw != "on" || maxConn != "200" {
		t.Fatalf("fsync=%s full_page_writes=%s max_connections=%s", fsync, fpw, maxConn)
	}
}

// A cluster whose owning process died is reaped by the next Start.
func TestReapStale(t *testing.T) {
	c := startCluster(t, Options{})
	pid, err := c.PostmasterPID()
	if err != nil {
		t.Fatal(err)
	}
	// Pretend the owner is a process that has exited.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	owner := filepath.Join(filepath.Dir(c.DataDir()), ownerFile)
	if err := os.WriteFile(owner, []byte(strconv.Itoa(dead.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	startCluster(t, Options{})
	if _, err := os.Stat(c.DataDir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale cluster dir still there: %v", err)
	}
	if !waitGone(pid, 10*time.Second) {
		t.Fatal("stale postmaster still running")
	}
}

func TestVersionLess(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{{"9.6", "15", true}, {"15", "9.6", false}, {"14", "15", true}, {"15", "15", false}, {"10", "9.6", false}} {
		if got := versionLess(tc.a, tc.b); got != tc.want {
			t.Errorf("versionLess(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
}

func TestEnsureInstalledBinDirEnv(t *testing.T) {
	t.Setenv(EnvBinDir, t.TempDir())
	if _, err := EnsureInstalled(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "no initdb") {
		t.Fatalf("err = %v", err)
	}
}

func TestProcState(t *testing.T) {
	if s := procState([]byte("12 (post (gres)) Z 1 2")); s != 'Z' {
		t.Fatalf("state %q", s)
	}
}

// The start error carries the server's reason from the log (Start relies on
// it to retry on a port taken meanwhile).
func TestStartAgainPortTaken(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := startCluster(t, Options{})
	if err := c.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port())))
	if err != nil {
		t.Fatal(err)
	}
	err = c.StartAgain(ctx)
	_ = l.Close()
	if err == nil || !strings.Contains(err.Error(), "could not bind") {
		t.Fatalf("StartAgain on a taken port: %v", err)
	}
	if err := c.StartAgain(ctx); err != nil {
		t.Fatal(err)
	}
}

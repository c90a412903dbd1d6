// Package pgcluster runs a throwaway PostgreSQL cluster (initdb into a temp
// dir, a free port on 127.0.0.1, trust authentication as user "postgres") for
// tests, the demo and benchmarks.
//
// initdb refuses to run as root, so when the process runs as root the server
// binaries run as the "postgres" OS user and the temp dir is chowned to it.
// Clients connect over TCP (see URL) and need no special credentials.
//
// pg_ctl detaches the postmaster into its own session, so a test binary that
// dies without Destroy (a panic, a go test -timeout) leaves it running. Start
// therefore reaps clusters whose owning process is gone before creating one.
package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNotRunning is returned by PostmasterPID when no postmaster is running.
var ErrNotRunning = errors.New("pgcluster: postmaster not running")

// Options configures Start. The zero value is a fast, fsync-less cluster.
type Options struct {
	// Logf receives progress messages; nil discards them.
	Logf func(string, ...any)
	// Settings are extra postgresql.conf settings (e.g. shared_preload_libraries).
	// Values are written quoted, which PostgreSQL accepts for every type.
	Settings map[string]string
	// FsyncOn keeps fsync and full_page_writes on; the default turns both off
	// for speed, which only matters if the machine crashes.
	FsyncOn bool
}

// Cluster is a running (or stopped) throwaway cluster. Its methods are safe
// for concurrent use, but stopping and starting it concurrently is not useful.
type Cluster struct {
	binDir   string
	baseDir  string // temp dir: data dir, log, unix socket
	dataDir  string
	logPath  string
	port     int
	logf     func(string, ...any)
	cred     *syscall.Credential // postgres OS user when we are root, else nil
	settings map[string]string
	fsyncOn  bool

	mu        sync.Mutex
	destroyed bool
}

const (
	dirPrefix    = "refresherd-pg-"
	ownerFile    = "owner.pid"
	confFile     = "refresherd.conf"
	readyTimeout = 60 * time.Second
)

// Start creates and starts a new cluster and waits until it accepts
// connections. It calls EnsureInstalled first. Call Destroy when done.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	binDir, err := EnsureInstalled(ctx, logf)
	if err != nil {
		return nil, err
	}
	c := &Cluster{binDir: binDir, logf: logf, settings: opts.Settings, fsyncOn: opts.FsyncOn}
	if os.Geteuid() == 0 {
		if c.cred, err = PostgresCredential(); err != nil {
			return nil, fmt.Errorf("pgcluster: start: %w", err)
		}
	}

	base := TempBase(c.cred != nil)
	reapStale(base, logf)
	c.baseDir, err = os.MkdirTemp(base, dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: start: %w", err)
	}
	c.dataDir = filepath.Join(c.baseDir, "data")
	c.logPath = filepath.Join(c.baseDir, "postgres.log")
	ok := false
	defer func() {
		if !ok {
			c.Destroy()
		}
	}()
	// Written first so that reapStale in another process can tell the dir is ours.
	if err := os.WriteFile(filepath.Join(c.baseDir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, fmt.Errorf("pgcluster: start: %w", err)
	}
	if err := c.chown(c.baseDir); err != nil {
		return nil, fmt.Errorf("pgcluster: start: %w", err)
	}

	t0 := time.Now()
	if err := c.initdb(ctx); err != nil {
		return nil, err
	}
	logf("pgcluster: initdb %s took %s", c.dataDir, time.Since(t0).Round(time.Millisecond))

	// Another process can take the port between our probe and the postmaster's
	// bind; then pick another one.
	var startErr error
	for attempt := 0; attempt < 5; attempt++ {
		if c.port, err = FreePort(); err != nil {
			return nil, fmt.Errorf("pgcluster: start: %w", err)
		}
		if err := c.writeConf(); err != nil {
			return nil, err
		}
		startErr = c.pgctlStart(ctx)
		if startErr == nil || !strings.Contains(startErr.Error(), "could not bind") {
			break
		}
		logf("pgcluster: port %d taken, retrying", c.port)
	}
	if startErr != nil {
		return nil, fmt.Errorf("pgcluster: start: %w", startErr)
	}
	if err := c.waitReady(ctx); err != nil {
		return nil, fmt.Errorf("pgcluster: start: %w", err)
	}
	logf("pgcluster: PostgreSQL ready at %s (data %s) after %s", c.URL("postgres"), c.dataDir, time.Since(t0).Round(time.Millisecond))
	ok = true
	return c, nil
}

// URL returns a connection URL for database db as superuser postgres.
func (c *Cluster) URL(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port is the TCP port on 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// BinDir is the directory of the PostgreSQL binaries in use.
func (c *Cluster) BinDir() string { return c.binDir }

// DataDir is the cluster's data directory.
func (c *Cluster) DataDir() string { return c.dataDir }

// LogPath is the server log file.
func (c *Cluster) LogPath() string { return c.logPath }

// CreateDatabase creates database name (quoted as an identifier).
func (c *Cluster) CreateDatabase(ctx context.Context, name string) error {
	return c.adminExec(ctx, "create database", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
}

// DropDatabase drops database name if it exists, disconnecting its sessions.
func (c *Cluster) DropDatabase(ctx context.Context, name string) error {
	return c.adminExec(ctx, "drop database", "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
}

func (c *Cluster) adminExec(ctx context.Context, op, sql string) error {
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		return fmt.Errorf("pgcluster: %s: %w", op, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("pgcluster: %s: %w", op, err)
	}
	return nil
}

// Stop stops the server with pg_ctl stop -m mode (fast, immediate or smart)
// and waits until it is down.
func (c *Cluster) Stop(ctx context.Context, mode string) error {
	switch mode {
	case "fast", "immediate", "smart":
	default:
		return fmt.Errorf("pgcluster: stop: unknown mode %q (want fast, immediate or smart)", mode)
	}
	if err := c.run(ctx, "pg_ctl", "stop", "-D", c.dataDir, "-m", mode, "-w", "-t", "120"); err != nil {
		return fmt.Errorf("pgcluster: stop: %w", err)
	}
	return nil
}

// StartAgain starts a stopped or killed cluster on the same data dir and port
// and waits until it accepts connections (after crash recovery, if any).
func (c *Cluster) StartAgain(ctx context.Context) error {
	var err error
	// After Kill, orphaned backends may still hold the old shared memory for a
	// moment and the postmaster refuses to start: retry briefly.
	for attempt := 0; attempt < 50; attempt++ {
		if err = c.pgctlStart(ctx); err == nil {
			break
		}
		// "pre-existing shared memory block (key ..., ID ...) is still in use"
		if !strings.Contains(err.Error(), "pre-existing shared memory block") {
			return fmt.Errorf("pgcluster: start again: %w", err)
		}
		if serr := sleepCtx(ctx, 200*time.Millisecond); serr != nil {
			return fmt.Errorf("pgcluster: start again: %w", serr)
		}
	}
	if err != nil {
		return fmt.Errorf("pgcluster: start again: %w", err)
	}
	if err := c.waitReady(ctx); err != nil {
		return fmt.Errorf("pgcluster: start again: %w", err)
	}
	return nil
}

// Restart stops the server (mode fast) and starts it again.
func (c *Cluster) Restart(ctx context.Context) error {
	if err := c.Stop(ctx, "fast"); err != nil {
		return fmt.Errorf("pgcluster: restart: %w", err)
	}
	if err := c.StartAgain(ctx); err != nil {
		return fmt.Errorf("pgcluster: restart: %w", err)
	}
	return nil
}

// Kill sends SIGKILL to the postmaster, as a crash would, and waits until it
// and the backends it had have exited (backends exit on their own when they
// notice the postmaster is gone; stragglers get SIGKILL after 30 s). The next
// StartAgain performs crash recovery.
func (c *Cluster) Kill() error {
	pid, err := c.PostmasterPID()
	if err != nil {
		return fmt.Errorf("pgcluster: kill: %w", err)
	}
	children := childrenOf(pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("pgcluster: kill: %w", err)
	}
	if !waitGone(pid, 30*time.Second) {
		return fmt.Errorf("pgcluster: kill: postmaster %d still alive 30s after SIGKILL", pid)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, ch := range children {
		if !waitGone(ch, time.Until(deadline)) {
			_ = syscall.Kill(ch, syscall.SIGKILL)
			waitGone(ch, 5*time.Second)
		}
	}
	// The postmaster is not our child: whoever inherits it (init) reaps it
	// when it gets round to it (measured: ~1.7 s here). Until then kill(pid, 0)
	// still succeeds and a new postmaster refuses to start because of its lock
	// files, so remove those of the dead process, as a supervisor that had
	// reaped it would allow.
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		for _, lock := range []string{
			filepath.Join(c.dataDir, "postmaster.pid"),
			filepath.Join(c.baseDir, fmt.Sprintf(".s.PGSQL.%d.lock", c.port)),
		} {
			if err := os.Remove(lock); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("pgcluster: kill: %w", err)
			}
		}
	}
	return nil
}

// PostmasterPID returns the pid in postmaster.pid if that process is alive;
// otherwise an error wrapping ErrNotRunning.
func (c *Cluster) PostmasterPID() (int, error) {
	pid, err := readPostmasterPID(c.dataDir)
	if err != nil {
		return 0, err
	}
	if processGone(pid) {
		return 0, fmt.Errorf("pgcluster: postmaster %d from postmaster.pid has exited: %w", pid, ErrNotRunning)
	}
	return pid, nil
}

// Destroy stops the server (mode immediate) if it runs and removes the temp
// dir. It logs instead of returning errors and is safe to call twice.
func (c *Cluster) Destroy() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.destroyed {
		return
	}
	c.destroyed = true
	if _, err := c.PostmasterPID(); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		err := c.Stop(ctx, "immediate")
		cancel()
		if err != nil {
			c.logf("pgcluster: destroy: %v; killing it", err)
			if err := c.Kill(); err != nil {
				c.logf("pgcluster: destroy: %v", err)
			}
		}
	}
	if err := os.RemoveAll(c.baseDir); err != nil {
		c.logf("pgcluster: destroy: %v", err)
	}
}

// Psql returns a psql command connected to database db over TCP, with psqlrc
// ignored and ON_ERROR_STOP set; append e.g. "-c", sql or "-f", file.
func (c *Cluster) Psql(ctx context.Context, db string, args ...string) *exec.Cmd {
	bin := filepath.Join(c.binDir, "psql")
	if !isExecutable(bin) {
		if p, err := exec.LookPath("psql"); err == nil {
			bin = p
		}
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", c.URL(db)}, args...)...)
	cmd.Env = CleanEnv()
	return cmd
}

// RunAsOwner makes cmd run as the OS user that owns the cluster (postgres when
// we are root; a no-op otherwise) with the temp dir as working directory if
// none is set. Only tools that touch the data dir need it (pg_controldata,
// pg_resetwal, ...); clients such as psql or pgbench connect over TCP and
// do not.
func (c *Cluster) RunAsOwner(cmd *exec.Cmd) {
	if cmd.Dir == "" {
		cmd.Dir = c.baseDir
	}
	if c.cred == nil {
		return
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cred := *c.cred
	cmd.SysProcAttr.Credential = &cred
}

func (c *Cluster) initdb(ctx context.Context) error {
	args := []string{"-D", c.dataDir, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"}
	err := c.run(ctx, "initdb", append(args, "--locale=C.UTF-8")...)
	if err != nil && ctx.Err() == nil {
		// Systems without the C.UTF-8 locale: plain C sorts the same for our data.
		c.logf("pgcluster: initdb with C.UTF-8 failed (%v); retrying with locale C", err)
		if rerr := os.RemoveAll(c.dataDir); rerr != nil {
			return fmt.Errorf("pgcluster: initdb: %w", rerr)
		}
		err = c.run(ctx, "initdb", append(args, "--locale=C")...)
	}
	if err != nil {
		return fmt.Errorf("pgcluster: initdb: %w", err)
	}
	// Pull our settings in from a separate file so that a port change on retry
	// rewrites only that file.
	f, err := os.OpenFile(filepath.Join(c.dataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("pgcluster: initdb: %w", err)
	}
	_, err = fmt.Fprintf(f, "\ninclude_if_exists '%s'\n", confFile)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pgcluster: initdb: %w", err)
	}
	return nil
}

func (c *Cluster) writeConf() error {
	var b strings.Builder
	b.WriteString("# written by refresherd internal/pgcluster\n")
	set := func(k, v string) { fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(v, "'", "''")) }
	set("listen_addresses", "127.0.0.1")
	set("port", strconv.Itoa(c.port))
	// Socket paths are limited to ~107 bytes, so the socket goes in the short
	// temp dir rather than the default /var/run/postgresql (root-owned anyway).
	set("unix_socket_directories", c.baseDir)
	set("max_connections", "200")
	if !c.fsyncOn {
		set("fsync", "off")
		set("full_page_writes", "off")
	}
	set("log_line_prefix", "%m [%p] %q%u@%d ")
	keys := make([]string, 0, len(c.settings))
	for k := range c.settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		set(k, c.settings[k])
	}
	path := filepath.Join(c.dataDir, confFile)
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("pgcluster: write %s: %w", confFile, err)
	}
	if err := c.chown(path); err != nil {
		return fmt.Errorf("pgcluster: write %s: %w", confFile, err)
	}
	return nil
}

func (c *Cluster) pgctlStart(ctx context.Context) error {
	var offset int64
	if fi, err := os.Stat(c.logPath); err == nil {
		offset = fi.Size()
	}
	err := c.run(ctx, "pg_ctl", "start", "-w", "-t", "120", "-D", c.dataDir, "-l", c.logPath)
	if err != nil {
		// pg_ctl only says "could not start server": the reason is in what
		// this attempt appended to the log.
		logText, _ := os.ReadFile(c.logPath)
		if offset <= int64(len(logText)) {
			logText = logText[offset:]
		}
		return fmt.Errorf("%w\nserver log %s:\n%s", err, c.logPath, tail(string(logText), 2000))
	}
	return nil
}

// waitReady pings until the server accepts a real connection: pg_ctl -w can
// return before our TCP listener is usable in rare cases, and after crash
// recovery connections are refused for a while.
func (c *Cluster) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var last error
	for {
		last = ping(ctx, c.URL("postgres"))
		if last == nil {
			return nil
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return fmt.Errorf("wait for server at %s: %w (last error: %v)", c.URL("postgres"), err, last)
		}
	}
}

func ping(ctx context.Context, url string) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return conn.Ping(cctx)
}

// run runs a PostgreSQL binary as the cluster owner and returns its output in
// the error.
func (c *Cluster) run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, name), args...)
	cmd.Env = CleanEnv()
	// Without a working directory the owner can enter (root's cwd is often
	// /root), initdb and pg_ctl fail.
	c.RunAsOwner(cmd)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// The postmaster that pg_ctl forks does not inherit our pipes, but guard
	// against a grandchild keeping them open anyway.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail(out.String(), 2000))
	}
	return nil
}

func (c *Cluster) chown(path string) error {
	if c.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
		return fmt.Errorf("chown %s to postgres: %w", path, err)
	}
	return nil
}

// PostgresCredential is the OS user postgres's identity, for running
// PostgreSQL's tools (and PgBouncer) as it when the caller is root: they
// refuse to run as root.
func PostgresCredential() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs the OS user postgres (PostgreSQL and PgBouncer refuse root): %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("uid of postgres: %w", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("gid of postgres: %w", err)
	}
	// An empty Groups list drops root's supplementary groups in the child.
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// CleanEnv is the environment without PG* variables, which would point a
// tool at another server.
func CleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}

// TempBase picks the parent of a temp dir holding a unix socket: $TMPDIR
// unless it is so long that the socket path would not fit, or (as root) not
// reachable by the postgres user.
func TempBase(asRoot bool) string {
	base := os.TempDir()
	// <base>/refresherd-pg-NNNNNNNNNN/.s.PGSQL.NNNNN.lock must stay under 107 bytes.
	if len(base) > 64 || (asRoot && !othersCanTraverse(base)) {
		return "/tmp"
	}
	return base
}

func othersCanTraverse(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// FreePort returns a TCP port on 127.0.0.1 that is free now.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	return port, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

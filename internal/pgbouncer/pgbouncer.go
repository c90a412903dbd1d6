// Package pgbouncer runs a throwaway PgBouncer in front of a PostgreSQL
// server for tests: pool mode transaction by default (what Django shops run),
// listening on a free port on 127.0.0.1, its unix socket, configuration and
// log in a temp dir, forwarding every database name to the server.
//
// PgBouncer refuses to run as root, so when the process runs as root it runs
// as the "postgres" OS user, like internal/pgcluster's servers. It admits the
// server URL's user by trust (the test clusters trust local connections too);
// a password in that URL is what PgBouncer uses to log in to the server.
//
// PgBouncer runs in the foreground as a child of the test process and gets
// SIGKILL when that process dies; a dir left behind by a test binary that died
// anyway is removed (and its PgBouncer killed) by the next Start.
package pgbouncer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/refresherd/refresherd/internal/pgcluster"
)

// EnvBinary overrides where the pgbouncer binary is looked up.
const EnvBinary = "PGBOUNCER"

const (
	dirPrefix    = "refresherd-pgbouncer-"
	ownerFile    = "owner.pid"
	pidFile      = "pgbouncer.pid"
	iniFile      = "pgbouncer.ini"
	authFile     = "userlist.txt"
	logFile      = "pgbouncer.log"
	readyTimeout = 60 * time.Second
	stopTimeout  = 10 * time.Second
)

// Options configures Start. The zero value is a transaction-mode pool.
type Options struct {
	// Logf receives progress messages; nil discards them.
	Logf func(string, ...any)
	// PoolMode is "transaction" (the default), "session" or "statement".
	PoolMode string
}

// Bouncer is a running PgBouncer. Stop it when done; its methods are safe
// for concurrent use.
type Bouncer struct {
	bin     string
	dir     string
	port    int
	logf    func(string, ...any)
	cred    *syscall.Credential // postgres OS user when we are root, else nil
	cmd     *exec.Cmd
	logOut  *os.File
	done    chan struct{} // closed when the process has exited
	waitErr error         // valid after done

	mu      sync.Mutex
	stopped bool
}

// Start starts PgBouncer in front of the server of serverURL (its host, port,
// user and password; the database in it is used to check that PgBouncer
// reaches the server) and waits until a query goes through it. It installs
// PgBouncer first when missing (see EnsureInstalled). Call Stop when done.
func Start(ctx context.Context, serverURL string, opts Options) (*Bouncer, error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	mode := opts.PoolMode
	switch mode {
	case "":
		mode = "transaction"
	case "transaction", "session", "statement":
	default:
		return nil, fmt.Errorf("pgbouncer: start: unknown pool mode %q (want transaction, session or statement)", mode)
	}
	server, err := pgconn.ParseConfig(serverURL)
	if err != nil {
		return nil, fmt.Errorf("pgbouncer: start: server URL: %w", err)
	}
	if strings.ContainsAny(server.Host, " '\"\\") {
		return nil, fmt.Errorf("pgbouncer: start: server host %q cannot be written into pgbouncer.ini", server.Host)
	}
	bin, err := EnsureInstalled(ctx, logf)
	if err != nil {
		return nil, err
	}
	b := &Bouncer{bin: bin, logf: logf, done: make(chan struct{})}
	if os.Geteuid() == 0 {
		if b.cred, err = pgcluster.PostgresCredential(); err != nil {
			return nil, fmt.Errorf("pgbouncer: start: %w", err)
		}
	}

	base := pgcluster.TempBase(b.cred != nil)
	reapStale(base, logf)
	if b.dir, err = os.MkdirTemp(base, dirPrefix); err != nil {
		return nil, fmt.Errorf("pgbouncer: start: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			b.Stop()
		}
	}()
	// Written first so that reapStale in another process can tell the dir is ours.
	if err := os.WriteFile(filepath.Join(b.dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, fmt.Errorf("pgbouncer: start: %w", err)
	}
	if err := b.chown(b.dir); err != nil {
		return nil, fmt.Errorf("pgbouncer: start: %w", err)
	}
	if err := b.writeFile(authFile, authFileText(server.User, server.Password)); err != nil {
		return nil, fmt.Errorf("pgbouncer: start: %w", err)
	}

	// Another process can take the port between our probe and PgBouncer's
	// bind; then pick another one.
	t0 := time.Now()
	for attempt := 0; ; attempt++ {
		if b.port, err = pgcluster.FreePort(); err != nil {
			return nil, fmt.Errorf("pgbouncer: start: %w", err)
		}
		if err := b.writeFile(iniFile, b.ini(server.Host, server.Port, mode)); err != nil {
			return nil, fmt.Errorf("pgbouncer: start: %w", err)
		}
		probeURL, err := b.viaPort(serverURL)
		if err != nil {
			return nil, fmt.Errorf("pgbouncer: start: server URL: %w", err)
		}
		err = b.launch(ctx, probeURL)
		if err == nil {
			break
		}
		if attempt < 4 && strings.Contains(err.Error(), "Address already in use") {
			logf("pgbouncer: port %d taken, retrying", b.port)
			continue
		}
		return nil, fmt.Errorf("pgbouncer: start: %w", err)
	}
	logf("pgbouncer: PgBouncer (%s pooling) ready on 127.0.0.1:%d after %s", mode, b.port, time.Since(t0).Round(time.Millisecond))
	ok = true
	return b, nil
}

// Port is the TCP port PgBouncer listens on, on 127.0.0.1.
func (b *Bouncer) Port() int { return b.port }

// LogPath is PgBouncer's log (its stdout and stderr).
func (b *Bouncer) LogPath() string { return filepath.Join(b.dir, logFile) }

// URL returns dbURL (a postgres:// URL of the server Start was given) with
// its host and port replaced by PgBouncer's: the same database, user,
// password and parameters, through the pooler.
func (b *Bouncer) URL(dbURL string) (string, error) {
	u, err := b.viaPort(dbURL)
	if err != nil {
		return "", fmt.Errorf("pgbouncer: url: %w", err)
	}
	return u, nil
}

func (b *Bouncer) viaPort(dbURL string) (string, error) {
	u, err := url.Parse(dbURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", errors.New("want a postgres:// URL")
	}
	u.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port))
	return u.String(), nil
}

// Stop stops PgBouncer (SIGTERM: immediate shutdown, closing every client
// and server connection; SIGKILL if it lingers) and removes its temp dir. It
// logs instead of returning errors and is safe to call twice.
func (b *Bouncer) Stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return
	}
	b.stopped = true
	b.stopProcess()
	if b.dir != "" {
		if err := os.RemoveAll(b.dir); err != nil {
			b.logf("pgbouncer: stop: %v", err)
		}
	}
}

// stopProcess ends a launched process and waits for it.
func (b *Bouncer) stopProcess() {
	if b.cmd == nil {
		return
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-b.done:
	case <-t.C:
		b.logf("pgbouncer: stop: still running %s after SIGTERM; killing it", stopTimeout)
		_ = b.cmd.Process.Kill()
		<-b.done
	}
	_ = b.logOut.Close()
	b.cmd = nil
}

func (b *Bouncer) ini(host string, port uint16, mode string) string {
	var s strings.Builder
	s.WriteString("; written by refresherd internal/pgbouncer\n[databases]\n")
	// The fallback entry: any database name goes to the same name on the server.
	fmt.Fprintf(&s, "* = host=%s port=%d\n\n[pgbouncer]\n", host, port)
	set := func(k, v string) { fmt.Fprintf(&s, "%s = %s\n", k, v) }
	set("listen_addr", "127.0.0.1")
	set("listen_port", strconv.Itoa(b.port))
	set("unix_socket_dir", b.dir)
	set("pidfile", filepath.Join(b.dir, pidFile))
	set("auth_type", "trust")
	set("auth_file", filepath.Join(b.dir, authFile))
	set("pool_mode", mode)
	set("max_client_conn", "500")
	set("default_pool_size", "20")
	// A server restarted by a fault test is retried within a second, not
	// after the default 15 s.
	set("server_login_retry", "1")
	return s.String()
}

// authFileText admits user: auth_type trust checks no password but still
// wants the name in the auth file. The password (if any) is the one
// PgBouncer logs in to the server with.
func authFileText(user, password string) string {
	quote := func(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
	return quote(user) + " " + quote(password) + "\n"
}

// launch starts the process and waits until probeURL answers a query through
// it, or the process exits.
func (b *Bouncer) launch(ctx context.Context, probeURL string) error {
	out, err := os.OpenFile(b.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	// Not CommandContext: PgBouncer outlives Start's context.
	cmd := exec.Command(b.bin, filepath.Join(b.dir, iniFile))
	cmd.Dir = b.dir
	cmd.Env = pgcluster.CleanEnv()
	cmd.Stdout, cmd.Stderr = out, out
	// SIGKILL when the test process dies without Stop (a panic, go test
	// -timeout), so no PgBouncer outlives it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if b.cred != nil {
		cred := *b.cred
		cmd.SysProcAttr.Credential = &cred
	}
	var offset int64
	if fi, err := out.Stat(); err == nil {
		offset = fi.Size()
	}
	if err := cmd.Start(); err != nil {
		_ = out.Close()
		return fmt.Errorf("run %s: %w", b.bin, err)
	}
	b.cmd, b.logOut, b.done = cmd, out, make(chan struct{})
	done := b.done
	go func() {
		b.waitErr = cmd.Wait()
		close(done)
	}()
	if err := b.waitReady(ctx, probeURL); err != nil {
		select {
		case <-done:
			// It exited by itself: the reason is in what this attempt logged.
			b.cmd = nil
			_ = out.Close()
			return fmt.Errorf("pgbouncer exited (%v):\n%s", b.waitErr, b.logSince(offset))
		default:
		}
		b.stopProcess()
		return fmt.Errorf("%w\npgbouncer log:\n%s", err, b.logSince(offset))
	}
	return nil
}

// waitReady pings through PgBouncer until a query reaches the server: a
// listening socket alone does not show that PgBouncer can log in to it.
func (b *Bouncer) waitReady(ctx context.Context, probeURL string) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		last := ping(ctx, probeURL)
		if last == nil {
			return nil
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-b.done:
			t.Stop()
			return errors.New("pgbouncer exited")
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for pgbouncer on port %d: %w (last error: %v)", b.port, ctx.Err(), last)
		case <-t.C:
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

func (b *Bouncer) logSince(offset int64) string {
	text, _ := os.ReadFile(b.LogPath())
	if offset <= int64(len(text)) {
		text = text[offset:]
	}
	s := strings.TrimSpace(string(text))
	if len(s) > 2000 {
		s = "..." + s[len(s)-2000:]
	}
	return s
}

// writeFile writes a file into the temp dir, readable by PgBouncer only.
func (b *Bouncer) writeFile(name, text string) error {
	path := filepath.Join(b.dir, name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := b.chown(path); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

func (b *Bouncer) chown(path string) error {
	if b.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(b.cred.Uid), int(b.cred.Gid)); err != nil {
		return fmt.Errorf("chown %s to postgres: %w", path, err)
	}
	return nil
}

// EnsureInstalled returns the path of the pgbouncer binary: $PGBOUNCER if
// set, else pgbouncer on PATH or in /usr/sbin (Debian's place, not on a
// normal user's PATH). If none is found and the process runs as root, it
// installs the Debian package "pgbouncer" with apt-get; otherwise it returns
// an error saying what to install.
func EnsureInstalled(ctx context.Context, logf func(string, ...any)) (string, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	bin, err := findBinary()
	if err != nil || bin != "" {
		return bin, err
	}
	if os.Geteuid() != 0 {
		return "", errors.New("pgbouncer: ensure installed: no pgbouncer on PATH or in /usr/sbin; install it " +
			"(Debian/Ubuntu: `sudo apt-get install pgbouncer`, or run scripts/ensure-pgbouncer.sh as root) " +
			"or set " + EnvBinary + " to its path")
	}
	logf("pgbouncer: PgBouncer not found; installing it with apt-get")
	installedMeanwhile := func() bool { bin, err := findBinary(); return err != nil || bin != "" }
	if err := pgcluster.AptInstall(ctx, "pgbouncer", installedMeanwhile); err != nil {
		return "", fmt.Errorf("pgbouncer: ensure installed: %w", err)
	}
	if bin, err = findBinary(); err != nil {
		return "", err
	}
	if bin == "" {
		return "", errors.New("pgbouncer: ensure installed: apt-get installed pgbouncer but no pgbouncer binary was found")
	}
	logf("pgbouncer: installed %s", bin)
	return bin, nil
}

// findBinary returns "" with a nil error when nothing is installed.
func findBinary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		// An explicit choice that is wrong must not silently fall back.
		if !isExecutable(p) {
			return "", fmt.Errorf("pgbouncer: find binary: %s=%q is not an executable", EnvBinary, p)
		}
		return p, nil
	}
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	if p := "/usr/sbin/pgbouncer"; isExecutable(p) {
		return p, nil
	}
	return "", nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// reapStale removes dirs under base left by test processes that died
// without Stop, killing their PgBouncer if it still runs (Pdeathsig should
// have). Dirs without an owner.pid are being created right now.
func reapStale(base string, logf func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(base, dirPrefix+"*"))
	for _, dir := range dirs {
		owner, err := readPID(filepath.Join(dir, ownerFile))
		if err != nil || processAlive(owner) {
			continue
		}
		if pid, err := readPID(filepath.Join(dir, pidFile)); err == nil && processAlive(pid) && isPgBouncer(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if err := os.RemoveAll(dir); err == nil {
			logf("pgbouncer: removed stale %s (owner process %d is gone)", dir, owner)
		}
	}
}

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("bad pid in %s", path)
	}
	return pid, nil
}

func processAlive(pid int) bool {
	return !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// isPgBouncer guards against signalling an unrelated process that reused a
// stale pid.
func isPgBouncer(pid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && filepath.Base(exe) == "pgbouncer"
}

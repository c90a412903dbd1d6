// Package pgtools runs PostgreSQL's own client programs for the benchmark:
// psql with \timing for single statements, pgbench for write throughput,
// and installs pg_cron when it is missing.
package pgtools

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/refresherd/refresherd/internal/pgcluster"
)

// Server is where the tools connect: over TCP to 127.0.0.1:Port as the
// superuser postgres (the throwaway cluster trusts local connections).
type Server struct {
	BinDir string
	Port   int
}

// Env is the environment for PostgreSQL client programs: ours without PG*
// variables that could point them elsewhere.
func Env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}

func (s Server) bin(name string) string { return filepath.Join(s.BinDir, name) }

// connArgs are the connection flags of psql and pgbench.
func (s Server) connArgs() []string {
	return []string{"-h", "127.0.0.1", "-p", strconv.Itoa(s.Port), "-U", "postgres"}
}

// PsqlCommand is the psql invocation (for the report) that Timed runs.
func (s Server) PsqlCommand(db, sql string) string {
	return "psql -X -h 127.0.0.1 -p PORT -U postgres -d " + db + ` -c '\timing on' -c ` + shellQuote(sql)
}

var timingRe = regexp.MustCompile(`(?m)^Time: ([0-9.]+) ms`)

// Timed runs sql in its own psql session (autocommit) and returns the
// statement's time as psql's \timing reports it: client-side, from sending
// the statement to the end of its result, so it includes the commit but not
// psql's start-up or connection.
func (s Server) Timed(ctx context.Context, db, sql string) (time.Duration, error) {
	args := append([]string{"-X", "-q", "-v", "ON_ERROR_STOP=1"}, s.connArgs()...)
	args = append(args, "-d", db, "-c", `\timing on`, "-c", sql)
	cmd := exec.CommandContext(ctx, s.bin("psql"), args...)
	cmd.Env = Env()
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("psql %q: %w: %s", sql, err, strings.TrimSpace(stderr.String()))
	}
	m := timingRe.FindAllStringSubmatch(out.String(), -1)
	if len(m) == 0 {
		return 0, fmt.Errorf("psql %q: no timing in output %q", sql, out.String())
	}
	ms, err := strconv.ParseFloat(m[len(m)-1][1], 64)
	if err != nil {
		return 0, fmt.Errorf("psql %q: parse timing: %w", sql, err)
	}
	return time.Duration(ms * float64(time.Millisecond)), nil
}

// Pgbench describes one fixed-duration pgbench run of a custom script.
type Pgbench struct {
	DB       string
	Script   string // path of the -f script
	Clients  int
	Duration time.Duration
}

// Args are pgbench's arguments: -n (no vacuum of pgbench's own tables,
// which do not exist), -j up to 2 threads (this machine's cores), -T
// seconds, simple query protocol as Django uses.
func (p Pgbench) Args(s Server) []string {
	secs := max(int(p.Duration.Round(time.Second)/time.Second), 1)
	args := append([]string{"-n"}, s.connArgs()...)
	return append(args, "-f", p.Script, "-c", strconv.Itoa(p.Clients), "-j", strconv.Itoa(min(p.Clients, 2)),
		"-T", strconv.Itoa(secs), "-P", "1", p.DB)
}

// Command is the invocation for the report: the port is left symbolic,
// and with Clients 0 the client count too.
func (p Pgbench) Command() string {
	c, j := "C", "min(C,2)"
	if p.Clients > 0 {
		c, j = strconv.Itoa(p.Clients), strconv.Itoa(min(p.Clients, 2))
	}
	secs := max(int(p.Duration.Round(time.Second)/time.Second), 1)
	return fmt.Sprintf("pgbench -n -h 127.0.0.1 -p PORT -U postgres -f %s -c %s -j %s -T %d -P 1 %s", p.Script, c, j, secs, p.DB)
}

var tpsRe = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)
var progressRe = regexp.MustCompile(`(?m)^progress: ([0-9.]+) s, ([0-9.]+) tps`)
var failedRe = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)

// Run runs pgbench with per-second progress reports and returns the mean
// TPS of the seconds after the first: the first second is warm-up (every
// new backend loads its caches; with 32 clients on 2 cores that stalls
// commits for a good part of a second). A run of one second returns
// pgbench's overall TPS without connection time.
func (p Pgbench) Run(ctx context.Context, s Server) (float64, error) {
	out, err := p.exec(ctx, s)
	if err != nil {
		return 0, err
	}
	tps, err := ParseTPS(out)
	if err != nil {
		return 0, p.fail(err, out)
	}
	return tps, nil
}

// Warm runs pgbench untimed, to bring a database into the caches: only a
// pgbench error or a failed transaction is an error. A short warm-up on a
// slow machine may commit nothing at all (its second goes on connecting
// and loading caches), which is not one.
func (p Pgbench) Warm(ctx context.Context, s Server) error {
	out, err := p.exec(ctx, s)
	if err != nil {
		return err
	}
	if err := failedTransactions(out); err != nil {
		return p.fail(err, out)
	}
	return nil
}

// exec runs pgbench and returns its output.
func (p Pgbench) exec(ctx context.Context, s Server) (string, error) {
	cmd := exec.CommandContext(ctx, s.bin("pgbench"), p.Args(s)...)
	cmd.Env = Env()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", p.fail(err, out.String())
	}
	return out.String(), nil
}

// fail wraps a run's error with the end of its output.
func (p Pgbench) fail(err error, out string) error {
	return fmt.Errorf("pgbench -c %d: %w\n%s", p.Clients, err, tail(out, 1500))
}

// failedTransactions says how many transactions pgbench reported failed.
func failedTransactions(out string) error {
	if m := failedRe.FindStringSubmatch(out); m != nil && m[1] != "0" {
		return fmt.Errorf("%s failed transactions", m[1])
	}
	return nil
}

// ParseTPS reads pgbench's output (with -P 1): the mean of the per-second
// progress TPS after the first second, or the overall TPS without
// connection time when there is at most one progress line. Failed
// transactions are an error.
func ParseTPS(out string) (float64, error) {
	if err := failedTransactions(out); err != nil {
		return 0, err
	}
	if prog := progressRe.FindAllStringSubmatch(out, -1); len(prog) > 1 {
		sum := 0.0
		for _, pr := range prog[1:] {
			v, err := strconv.ParseFloat(pr[2], 64)
			if err != nil {
				return 0, fmt.Errorf("parse progress: %w", err)
			}
			sum += v
		}
		return sum / float64(len(prog)-1), nil
	}
	m := tpsRe.FindStringSubmatch(out)
	if m == nil {
		return 0, errors.New("no tps in output")
	}
	tps, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("parse tps: %w", err)
	}
	return tps, nil
}

// Version returns `BIN --version` of a PostgreSQL program.
func (s Server) Version(ctx context.Context, name string) string {
	out, err := exec.CommandContext(ctx, s.bin(name), "--version").Output()
	if err != nil {
		return "unknown: " + err.Error()
	}
	return strings.TrimSpace(string(out))
}

// EnsurePgCron makes sure the pg_cron extension is installed for the
// PostgreSQL in binDir: it looks for pg_cron.so in pg_config's pkglibdir and,
// when missing and running as root, installs Debian's postgresql-MAJOR-cron.
// It returns what it did, for the report.
func EnsurePgCron(ctx context.Context, binDir string, logf func(string, ...any)) (string, error) {
	out, err := exec.CommandContext(ctx, filepath.Join(binDir, "pg_config"), "--pkglibdir", "--version").Output()
	if err != nil {
		return "", fmt.Errorf("ensure pg_cron: pg_config: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 2 {
		return "", fmt.Errorf("ensure pg_cron: pg_config printed %q", out)
	}
	libDir, version := strings.TrimSpace(lines[0]), strings.TrimSpace(lines[1])
	so := filepath.Join(libDir, "pg_cron.so")
	if _, err := os.Stat(so); err == nil {
		return "already installed (" + so + ")", nil
	}
	f := strings.Fields(version) // "PostgreSQL 15.18 (Debian ...)"
	if len(f) < 2 {
		return "", fmt.Errorf("ensure pg_cron: cannot parse version %q", version)
	}
	major, _, _ := strings.Cut(f[1], ".")
	pkg := "postgresql-" + major + "-cron"
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("ensure pg_cron: %s is missing and installing %s needs root (sudo apt-get install %s)", so, pkg, pkg)
	}
	logf("installing %s with apt-get", pkg)
	present := func() bool { _, err := os.Stat(so); return err == nil }
	if err := pgcluster.AptInstall(ctx, pkg, present); err != nil {
		return "", fmt.Errorf("ensure pg_cron: %w", err)
	}
	if _, err := os.Stat(so); err != nil {
		return "", fmt.Errorf("ensure pg_cron: installed %s but %s is missing: %w", pkg, so, err)
	}
	return "installed " + pkg + " with apt-get", nil
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// EnsurePgIvm makes pg_ivm available to the PostgreSQL in binDir, built
// from its source folder src (an anchor kept beside the repository; its
// code is never copied into it): when pg_config's pkglibdir already holds
// pg_ivm.so and its extension folder the control file of this very source,
// nothing is done; otherwise, as root, it installs Debian's
// postgresql-server-dev-MAJOR when PGXS or the server's headers are
// missing, builds a copy of src in a folder under work (without LLVM
// bitcode) and runs `make install`. It
// returns what it did and the version, for the report; an error says
// plainly why pg_ivm is not available.
func EnsurePgIvm(ctx context.Context, binDir, src, work string, logf func(string, ...any)) (how, version string, err error) {
	control, err := os.ReadFile(filepath.Join(src, "pg_ivm.control"))
	if err != nil {
		return "", "", fmt.Errorf("ensure pg_ivm: no source at %s: %w", src, err)
	}
	m := regexp.MustCompile(`(?m)^default_version\s*=\s*'([^']+)'`).FindSubmatch(control)
	if m == nil {
		return "", "", fmt.Errorf("ensure pg_ivm: no default_version in %s", filepath.Join(src, "pg_ivm.control"))
	}
	version = string(m[1])
	pgConfig := filepath.Join(binDir, "pg_config")
	out, err := exec.CommandContext(ctx, pgConfig, "--pkglibdir", "--sharedir", "--pgxs", "--includedir-server", "--version").Output()
	if err != nil {
		return "", version, fmt.Errorf("ensure pg_ivm: pg_config: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 5 {
		return "", version, fmt.Errorf("ensure pg_ivm: pg_config printed %q", out)
	}
	libDir, shareDir, pgxs, serverInclude, pgVersion := strings.TrimSpace(lines[0]), strings.TrimSpace(lines[1]),
		strings.TrimSpace(lines[2]), strings.TrimSpace(lines[3]), strings.TrimSpace(lines[4])
	so := filepath.Join(libDir, "pg_ivm.so")
	installedControl := filepath.Join(shareDir, "extension", "pg_ivm.control")
	installed := func() bool {
		got, err := os.ReadFile(installedControl)
		_, serr := os.Stat(so)
		return err == nil && serr == nil && bytes.Equal(got, control)
	}
	if installed() {
		return "already installed (" + so + ", built from " + src + ")", version, nil
	}
	if os.Geteuid() != 0 {
		return "", version, fmt.Errorf("ensure pg_ivm: %s is missing and building and installing it from %s needs root", so, src)
	}
	var did []string
	// Debian 12 ships pgxs.mk in postgresql-client-MAJOR; the server's
	// headers come only with postgresql-server-dev-MAJOR.
	present := func() bool {
		_, err := os.Stat(pgxs)
		_, herr := os.Stat(filepath.Join(serverInclude, "postgres.h"))
		return err == nil && herr == nil
	}
	if !present() {
		f := strings.Fields(pgVersion) // "PostgreSQL 15.18 (Debian ...)"
		if len(f) < 2 {
			return "", version, fmt.Errorf("ensure pg_ivm: cannot parse version %q", pgVersion)
		}
		major, _, _ := strings.Cut(f[1], ".")
		pkg := "postgresql-server-dev-" + major
		// The same version as the installed server: the newest
		// server-dev would upgrade postgresql-MAJOR under the clusters
		// that other tests may be running.
		if v, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Version}", "postgresql-"+major).Output(); err == nil && len(bytes.TrimSpace(v)) > 0 {
			pkg += "=" + string(bytes.TrimSpace(v))
		}
		logf("installing %s with apt-get (to build pg_ivm)", pkg)
		if err := pgcluster.AptInstall(ctx, pkg, present); err != nil {
			return "", version, fmt.Errorf("ensure pg_ivm: %s (the server's own version; a newer one would upgrade the server): %w", pkg, err)
		}
		did = append(did, "installed "+pkg+" with apt-get")
	}
	build, err := os.MkdirTemp(work, "pg_ivm-build-")
	if err != nil {
		return "", version, fmt.Errorf("ensure pg_ivm: %w", err)
	}
	defer os.RemoveAll(build)
	if err := os.CopyFS(build, os.DirFS(src)); err != nil {
		return "", version, fmt.Errorf("ensure pg_ivm: copy %s: %w", src, err)
	}
	// The copy keeps the source's read-only modes; make writes objects.
	_ = filepath.WalkDir(build, func(p string, d os.DirEntry, err error) error {
		if err == nil {
			mode := os.FileMode(0o644)
			if d.IsDir() {
				mode = 0o755
			}
			_ = os.Chmod(p, mode)
		}
		return nil
	})
	logf("building pg_ivm %s from %s", version, src)
	for _, target := range []string{"all", "install"} {
		cmd := exec.CommandContext(ctx, "make", "-C", build, "PG_CONFIG="+pgConfig, "with_llvm=no", target)
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", version, fmt.Errorf("ensure pg_ivm: make %s: %w\n%s", target, err, tail(string(out), 1500))
		}
	}
	if !installed() {
		return "", version, fmt.Errorf("ensure pg_ivm: make install ran but %s or %s is missing", so, installedControl)
	}
	did = append(did, "built from "+src+" (PGXS, with_llvm=no) and installed with make install")
	return strings.Join(did, "; "), version, nil
}

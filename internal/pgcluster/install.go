package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// EnvBinDir overrides where the PostgreSQL server binaries are looked up.
const EnvBinDir = "PG_BINDIR"

// installLockPath serialises apt-get across test binaries that go test runs in
// parallel: dpkg takes its lock without waiting, so a second installer would fail.
const installLockPath = "/tmp/refresherd-pg-install.lock"

// EnsureInstalled returns the directory holding initdb, pg_ctl and postgres.
//
// It looks at $PG_BINDIR (if set, it must contain initdb), then the newest
// /usr/lib/postgresql/*/bin with initdb, then initdb on PATH. If none is found
// and the process runs as root it installs the Debian package "postgresql" with
// apt-get; otherwise it returns an error saying what to install.
func EnsureInstalled(ctx context.Context, logf func(string, ...any)) (binDir string, err error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	dir, err := findBinDir()
	if err != nil || dir != "" {
		return dir, err
	}
	if os.Geteuid() != 0 {
		return "", errors.New("pgcluster: ensure installed: no PostgreSQL server binaries (initdb) " +
			"under /usr/lib/postgresql/*/bin or on PATH; install them (Debian/Ubuntu: " +
			"`sudo apt-get install postgresql`, or run scripts/ensure-postgres.sh as root) " +
			"or set " + EnvBinDir + " to the directory containing initdb")
	}

	logf("pgcluster: PostgreSQL not found; installing it with apt-get (takes a minute)")
	// Another process may have installed it while AptInstall waited for the lock.
	installedMeanwhile := func() bool { dir, err := findBinDir(); return err != nil || dir != "" }
	if err := AptInstall(ctx, "postgresql", installedMeanwhile); err != nil {
		return "", fmt.Errorf("pgcluster: ensure installed: %w", err)
	}
	dir, err = findBinDir()
	if err != nil {
		return "", err
	}
	if dir == "" {
		return "", errors.New("pgcluster: ensure installed: apt-get installed postgresql but no initdb was found")
	}
	logf("pgcluster: installed PostgreSQL in %s", dir)
	return dir, nil
}

// findBinDir returns "" with a nil error when nothing is installed.
func findBinDir() (string, error) {
	if dir := os.Getenv(EnvBinDir); dir != "" {
		// An explicit choice that is wrong must not silently fall back to another version.
		if !isExecutable(filepath.Join(dir, "initdb")) {
			return "", fmt.Errorf("pgcluster: find binaries: %s=%q has no initdb", EnvBinDir, dir)
		}
		return dir, nil
	}
	if dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin"); len(dirs) > 0 {
		sort.Slice(dirs, func(i, j int) bool {
			return versionLess(filepath.Base(filepath.Dir(dirs[j])), filepath.Base(filepath.Dir(dirs[i])))
		})
		for _, d := range dirs {
			if isExecutable(filepath.Join(d, "initdb")) {
				return d, nil
			}
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		// Debian symlinks initdb into /usr/local/bin or /usr/bin; the server binary
		// (postgres) lives only next to the real file.
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		return filepath.Dir(p), nil
	}
	return "", nil
}

// versionLess compares dotted numeric versions such as "9.6" and "15".
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x < y
		}
	}
	return false
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// AptInstall installs Debian package pkg with apt-get (update, then install
// without recommends), holding the lock that queues installers: dpkg does not
// wait for its own lock, so a second concurrent apt-get would fail. present,
// when set, is asked once the lock is held; if it reports the package there
// (another process installed it meanwhile), nothing runs.
func AptInstall(ctx context.Context, pkg string, present func() bool) error {
	unlock, err := lockFile(ctx, installLockPath)
	if err != nil {
		return fmt.Errorf("apt-get install %s: %w", pkg, err)
	}
	defer unlock()
	if present != nil && present() {
		return nil
	}
	for _, args := range [][]string{{"update"}, {"install", "-y", "--no-install-recommends", pkg}} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", args[0], err, tail(string(out), 2000))
		}
	}
	return nil
}

// lockFile takes an exclusive flock, released by the returned function. It
// polls with LOCK_NB so that waiting honours ctx.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		_ = f.Close()
	}, nil
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

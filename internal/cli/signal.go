package cli

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// runSignal signals a running daemon. Container images without a shell have
// no kill(1): `kubectl exec deploy/refresherd -- refresherd signal refresh`.
func runSignal(args []string, env Env) int {
	fs := newFlags("signal", "signal refresh|reload [--pid N | --pidfile FILE]", env)
	pid := fs.Int("pid", 0, "PID of the daemon (default: from --pidfile, $REFRESHERD_PIDFILE, else 1, the daemon in a container)")
	pidfile := fs.String("pidfile", "", "file holding the daemon's PID (written by 'run --pidfile')")
	// Accept flags after the action too: `signal refresh --pid 42`.
	var action string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		action, args = args[0], args[1:]
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if action == "" && fs.NArg() > 0 {
		action = fs.Arg(0)
	}
	var sig syscall.Signal
	switch action {
	case "refresh":
		sig = syscall.SIGUSR1
	case "reload":
		sig = syscall.SIGHUP
	default:
		fs.Usage()
		return errorf(env, ExitUsage, "signal", "expected refresh or reload, got %q", action)
	}
	target, err := resolvePID(*pid, *pidfile, env.Getenv("REFRESHERD_PIDFILE"))
	if err != nil {
		return errorf(env, ExitUsage, "signal", "%v", err)
	}
	if err := syscall.Kill(target, sig); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return errorf(env, ExitFailure, "signal", "no process with PID %d: is the daemon running?", target)
		}
		return errorf(env, ExitFailure, "signal", "send %s to PID %d: %v", sig, target, err)
	}
	fmt.Fprintf(env.Stdout, "sent %s (%s) to PID %d\n", action, sig, target)
	return ExitOK
}

func resolvePID(pid int, pidfile, envPidfile string) (int, error) {
	if pid != 0 {
		if pid < 0 {
			return 0, fmt.Errorf("--pid must be positive, got %d", pid)
		}
		return pid, nil
	}
	if pidfile == "" {
		pidfile = envPidfile
	}
	if pidfile == "" {
		return 1, nil
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return 0, fmt.Errorf("read pidfile: %w", err)
	}
	p, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || p <= 0 {
		return 0, fmt.Errorf("pidfile %s does not hold a PID: %q", pidfile, strings.TrimSpace(string(b)))
	}
	return p, nil
}

// Package cli implements refresherd's commands: the daemon (run) and the
// tools around it.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"strings"
)

// Exit codes (DESIGN.md): 0 clean stop, 1 runtime failure, 2 bad usage or
// configuration.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// Env is what a command may use of its process.
type Env struct {
	Version string
	Stdout  io.Writer
	Stderr  io.Writer
	Getenv  func(string) string
}

type command struct {
	name, summary string
	run           func(args []string, env Env) int
}

func commands() []command {
	return []command{
		{"run", "run the daemon", runDaemon},
		{"status", "show each view's data as-of, staleness, last result and the leader, from the database", runStatus},
		{"refresh", "refresh views once, now, and exit (for a CronJob or deploy step)", runRefresh},
		{"verify", "compare incremental summaries with a full aggregate and print mismatched rows", runVerify},
		{"check", "validate the config and preflight the database (privileges, sources, views)", runCheck},
		{"signal", "signal a running daemon: refresh (SIGUSR1) or reload (SIGHUP)", runSignal},
		{"version", "print the version", runVersion},
	}
}

// Main dispatches to a subcommand and returns the exit code.
func Main(args []string, env Env) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(env.Stderr)
		if len(args) == 0 {
			return ExitUsage
		}
		return ExitOK
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:], env)
		}
	}
	fmt.Fprintf(env.Stderr, "refresherd: unknown command %q\n\n", args[0])
	usage(env.Stderr)
	return ExitUsage
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "refresherd keeps PostgreSQL materialized views fresh.")
	fmt.Fprintln(w, "\nUsage: refresherd <command> [flags]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'refresherd <command> -h' for a command's flags.")
}

// newFlags makes a flag set that reports errors instead of exiting.
func newFlags(name, synopsis string, env Env) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "Usage: refresherd %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args; ok false means the caller returns code.
func parseFlags(fs *flag.FlagSet, args []string) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK, false
		}
		return ExitUsage, false
	}
	return 0, true
}

func runVersion(args []string, env Env) int {
	fs := newFlags("version", "version", env)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	fmt.Fprintf(env.Stdout, "refresherd %s (%s)\n", env.Version, runtime.Version())
	return ExitOK
}

// errorf prints "refresherd <cmd>: msg" to stderr and returns code.
func errorf(env Env, code int, cmd, format string, args ...any) int {
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintf(env.Stderr, "refresherd %s: %s\n", cmd, strings.TrimSpace(msg))
	return code
}

package refresh

import (
	"time"

	"github.com/refresherd/refresherd/config"
)

// Client-side bounds. The server enforces statement_timeout and
// lock_timeout, but only while it runs: a server that stopped answering (a
// frozen host, a black-holed network) ignores the cancel request pgx sends
// when a context expires, and only the socket deadline that follows
// (DeadlineDelay of the connection's context watcher) frees the caller. So
// every call that can block gets a context deadline, named here.
const (
	// AcquireTimeout bounds the wait for a pool connection; dialing a new
	// one has its own ConnectTimeout inside it.
	AcquireTimeout = 30 * time.Second
	// BeginTimeout bounds BEGIN (with the timeouts set up front): it does no
	// work, so a slow BEGIN means the server is not answering.
	BeginTimeout = 10 * time.Second
	// CommitTimeout bounds COMMIT, which waits for the WAL flush (and for a
	// synchronous standby when there is one).
	CommitTimeout = 30 * time.Second
	// RollbackTimeout bounds the ROLLBACK after a failure; it runs detached
	// from the caller's cancellation so the transaction ends cleanly.
	RollbackTimeout = 10 * time.Second
	// RefreshMargin is added to a view's statement_timeout and lock_timeout
	// for the client-side deadline of a whole refresh: the bookkeeping
	// statements around the REFRESH are small, so it only has to cover a
	// slow but live server.
	RefreshMargin = 10 * time.Second
	// RecordFailureTimeout bounds writing a failed attempt, which runs even
	// during shutdown and must not hold it up.
	RecordFailureTimeout = 5 * time.Second
	// SetupTimeout bounds each set-up transaction (EnsureSchema, EnsureView,
	// each table of EnsureTriggers) and each set-up query (CheckDefinition,
	// PlanSwap, pg_depend look-ups): at most a couple of SetupLockTimeout
	// waits plus catalog work. A unique-index build inside it gets the time
	// left, server-side.
	SetupTimeout = 30 * time.Second
	// IndexBuildHeadroom is how long before the set-up deadline the
	// server's statement_timeout stops a unique-index build, so that its
	// error arrives while the client still listens.
	IndexBuildHeadroom = time.Second
	// SetupLockTimeout bounds each lock wait during set-up (creating a
	// trigger locks the source table against writers): a busy table delays
	// set-up of that view, it never hangs the daemon.
	SetupLockTimeout = 10 * time.Second
)

// RefreshBound is the client-side deadline of one refresh transaction of v:
// the REFRESH may use all of statement_timeout, the view lock wait all of
// lock_timeout, and RefreshMargin covers the rest.
func RefreshBound(v *config.View) time.Duration {
	return v.StatementTimeout + v.LockTimeout + RefreshMargin
}

// swapBuildBound is the client-side deadline of a swap's build transaction:
// two long statements (the build and its index), each under
// statement_timeout, after lock waits under lock_timeout.
func swapBuildBound(v *config.View) time.Duration {
	return 2*v.StatementTimeout + v.LockTimeout + RefreshMargin
}

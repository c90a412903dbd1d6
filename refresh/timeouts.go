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

// Every fixed timing of the engine is named in this file; configurable ones
// (statement_timeout, lock_timeout, debounce, ...) come from the config.
// Engine timings.
const (
	// defaultListenerPingEvery: a quiet LISTEN connection is pinged this
	// often, so a silently dead one is found.
	defaultListenerPingEvery = 10 * time.Second
	// defaultLeaderRetryEvery: a follower asks for the leader lock this often.
	defaultLeaderRetryEvery = 2 * time.Second
	// defaultLeaderCheckEvery: the leader checks its lock connection this
	// often; a term ends at most about this long after the lock is lost
	// (fencing covers the gap).
	defaultLeaderCheckEvery = 2 * time.Second
	// defaultHealthEvery: database reachability for /readyz.
	defaultHealthEvery = 5 * time.Second
	// sessionConnectTimeout bounds connecting the leader and listener
	// sessions.
	sessionConnectTimeout = 10 * time.Second
	// sessionQueryTimeout bounds a lock attempt or ping on those sessions.
	sessionQueryTimeout = 5 * time.Second
	// healthCheckTimeout bounds one health connect + ping.
	healthCheckTimeout = 3 * time.Second
	// connCloseTimeout bounds closing a connection (a dead server must not
	// hang a shutdown).
	connCloseTimeout = 2 * time.Second
	// termPrepareTimeout bounds a term's database preparation (schema,
	// triggers, status read); it is retried with backoff.
	termPrepareTimeout = 2 * time.Minute
	// triggerSyncTimeout bounds the trigger sync after a reload.
	triggerSyncTimeout = time.Minute
	// manualPassTimeout bounds passing a manual refresh to the leader.
	manualPassTimeout = 5 * time.Second
	// verifyCheckEvery: how often the verifier looks for a due
	// verify_schedule.
	verifyCheckEvery = time.Second
	// capturePollTimeout bounds one check of an incremental view's key log.
	capturePollTimeout = 10 * time.Second
	// upstreamSetupWait: a view whose declared upstream is not set up yet
	// looks again this soon.
	upstreamSetupWait = 200 * time.Millisecond
	// doorbellRingGap: under a steady stream of writes, notify's doorbell
	// is rung as soon as it is re-armed; its polls then come at most every
	// min(poll_interval, this), which is also the most they add to a
	// change's detection (hidden by the debounce: a change is dated at its
	// ringer, not at the poll). Each poll costs about 1.5 ms of database
	// CPU (reading pg_locks takes the lock manager's partition locks) and
	// 1 ms of the daemon's: at 50 ms, its 20 polls a second cost writers
	// at 32 clients more than the trigger did (docs/change-detection.md).
	doorbellRingGap = 200 * time.Millisecond
	// doorbellStreamWindow: a ring within this of the end of a rung poll
	// is taken for a stream and waits for the ring gap; a later one (a
	// lone write's) is answered at once. Writers that keep the database
	// busy ring within a few ms of each re-arm.
	doorbellStreamWindow = 50 * time.Millisecond
)

package refresh

import "time"

// Every fixed timing of the engine, named in one place. Configurable ones
// (statement_timeout, lock_timeout, debounce, ...) come from the config.
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
	// upstreamSetupWait: a view whose declared upstream is not set up yet
	// looks again this soon.
	upstreamSetupWait = 200 * time.Millisecond
)

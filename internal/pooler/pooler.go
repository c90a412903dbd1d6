// Package pooler tells whether a connection reaches PostgreSQL through a
// connection pooler such as PgBouncer, and whether that pooler hands one
// server connection to several clients (transaction or statement pooling),
// which breaks what needs a session of its own: LISTEN and session advisory
// locks.
//
// Detection rests on the backend key: PostgreSQL tells each new session its
// backend pid (BackendKeyData), so pg_backend_pid() on that session returns
// the same number. A pooler answers the client's connect itself with a key
// of its own, and the query runs on whichever server connection the pooler
// picks, so the two differ. A plain TCP proxy passes the key through and is
// rightly seen as no pooler.
package pooler

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// probeRounds is how many times SharesServerConnections lets each of two
// clients run a statement; one shared server connection settles it.
const probeRounds = 3

// Detect reports whether conn goes through a connection pooler.
func Detect(ctx context.Context, conn *pgx.Conn) (bool, error) {
	pid, err := backendPID(ctx, conn)
	if err != nil {
		return false, fmt.Errorf("detect pooler: %w", err)
	}
	return pid != conn.PgConn().PID(), nil
}

// SharesServerConnections reports whether the pooler in front of conn was
// seen running statements of two clients on one server connection: conn and
// a second connection made with cfg (to the same pooler) run a statement in
// turn, and a pooler that pools by session never gives the server connection
// of an open client to another. True is certain. False means it was not
// seen: session pooling, or a pooler that, busy with other clients, happened
// to hand the two clients different server connections (PgBouncer reuses the
// most recently freed one first, so on an idle pool it is seen at once).
// conn must not be inside a transaction.
func SharesServerConnections(ctx context.Context, conn *pgx.Conn, cfg *pgx.ConnConfig) (bool, error) {
	other, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return false, fmt.Errorf("probe pooler: connect a second client: %w", err)
	}
	defer func() { _ = other.Close(context.WithoutCancel(ctx)) }()
	for range probeRounds {
		a, err := backendPID(ctx, conn)
		if err != nil {
			return false, fmt.Errorf("probe pooler: %w", err)
		}
		b, err := backendPID(ctx, other)
		if err != nil {
			return false, fmt.Errorf("probe pooler: %w", err)
		}
		if a == b {
			return true, nil
		}
	}
	return false, nil
}

// backendPID runs with an unnamed statement whatever the connection's
// default: behind a transaction pooler a named one could land on a server
// connection where another client already prepared that name.
func backendPID(ctx context.Context, conn *pgx.Conn) (uint32, error) {
	var pid uint32
	if err := conn.QueryRow(ctx, `SELECT pg_backend_pid()`, pgx.QueryExecModeExec).Scan(&pid); err != nil {
		return 0, fmt.Errorf("read pg_backend_pid(): %w", err)
	}
	return pid, nil
}

package refresh

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"go.uber.org/zap"
)

// checkHealth checks the database periodically on a connection of its own,
// so a pool full of slow refreshes never makes the database look
// unreachable; /readyz reads the result so a probe never waits on the
// database.
func (e *Engine) checkHealth(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), connCloseTimeout)
			_ = conn.Close(cctx)
			cancel()
		}
	}()
	for {
		var err error
		conn, err = e.ping(ctx, conn)
		if ctx.Err() != nil {
			return
		}
		e.mu.Lock()
		was := e.dbErr
		e.dbErr = err
		e.checks++
		e.mu.Unlock()
		switch {
		case err != nil && (was == nil || was == errNotChecked):
			e.log.Warn("database unreachable", zap.Error(err))
		case err == nil && was != nil:
			e.log.Info("database reachable")
		}
		if !e.waitHealth(ctx) {
			return
		}
	}
}

// ping checks the database on conn, connecting first when conn is nil; it
// returns the connection to use next time (nil after a failure).
func (e *Engine) ping(ctx context.Context, conn *pgx.Conn) (*pgx.Conn, error) {
	pctx, cancel := context.WithTimeout(ctx, healthCheckTimeout)
	defer cancel()
	if conn == nil {
		c, err := pgx.ConnectConfig(pctx, e.healthConnConfig())
		if err != nil {
			return nil, fmt.Errorf("connect: %w", err)
		}
		conn = c
	}
	if err := conn.Ping(pctx); err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), connCloseTimeout)
		_ = conn.Close(cctx)
		cancel()
		return nil, fmt.Errorf("ping: %w", err)
	}
	return conn, nil
}

// healthConnConfig is the refresh pool's connection settings: health means
// "refreshes can reach the database", through the same route.
func (e *Engine) healthConnConfig() *pgx.ConnConfig {
	c := e.pool.Config().ConnConfig.Copy()
	if c.RuntimeParams["application_name"] == "refresherd" {
		c.RuntimeParams["application_name"] = "refresherd-health"
	}
	// A ping has nothing for a cancel request to stop: end a wait by the
	// socket deadline at once, so a hung server reads as unreachable after
	// healthCheckTimeout rather than that plus the cancel grace.
	c.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: pc.Conn()}
	}
	return c
}

// waitHealth waits for the next check: HealthEvery, or sooner when asked.
func (e *Engine) waitHealth(ctx context.Context) bool {
	t := time.NewTimer(e.opts.HealthEvery)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-e.healthNow:
	case <-t.C:
	}
	return true
}

// healthChecks counts the database checks done (tests wait on it).
func (e *Engine) healthChecks() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.checks
}

// errNotChecked is the database state before the first check.
var errNotChecked = errors.New("not checked yet")

// checkHealthSoon asks for a database check now (a connection was lost or
// made), so /readyz follows within moments rather than HealthEvery.
func (e *Engine) checkHealthSoon() {
	select {
	case e.healthNow <- struct{}{}:
	default:
	}
}

// Ready reports whether this replica can do its job: the database answers,
// and on the leader the listener is connected.
func (e *Engine) Ready() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.stopping:
		return errors.New("shutting down")
	case e.dbErr != nil:
		return fmt.Errorf("database: %w", e.dbErr)
	case e.leader && !e.listenerConnected:
		return errors.New("listener not connected")
	}
	return nil
}

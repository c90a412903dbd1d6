package refresh

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// Elector holds leadership with a session-level advisory lock on a dedicated
// connection: the lock lives exactly as long as that connection, so a killed
// leader frees it at once and a partitioned one loses it when the server
// drops the session. Followers retry with jitter.
type Elector struct {
	ConnConfig *pgx.ConnConfig
	Name       string
	// RetryEvery is how often a follower tries for the lock; CheckEvery how
	// often the leader pings its connection (jittered by 20%).
	RetryEvery, CheckEvery time.Duration
	Backoff                Backoff
	Log                    *zap.Logger
	// OnChange is called from the elector goroutine when leadership starts
	// or ends; lockPID is the backend holding the lock (0 when it ends).
	OnChange func(leader bool, lockPID uint32)
}

// Run campaigns until ctx is done; then it releases the lock (under a
// detached short deadline, so shutdown hands over at once).
func (e *Elector) Run(ctx context.Context) {
	key := LeaderLockKey(e.Name)
	attempt := 0
	for ctx.Err() == nil {
		conn, err := e.connect(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			attempt++
			d := e.Backoff.Delay(attempt)
			// A follower asks for the lock every RetryEvery anyway; waiting
			// longer between connection attempts only delays the catch-up
			// after a database outage (with a 10 s backoff cap it came up to
			// 10 s after the server was back). A failed connect costs the
			// server next to nothing, so cap the wait at RetryEvery.
			if e.RetryEvery > 0 && d > e.RetryEvery {
				d = jitter(e.RetryEvery, 0.3)
			}
			if attempt == 1 {
				e.Log.Warn("leader election cannot connect; retrying", zap.Error(err), zap.Duration("retry_in", d))
			}
			sleep(ctx, d)
			continue
		}
		attempt = 0
		err = e.session(ctx, conn, key)
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), connCloseTimeout)
		_ = conn.Close(closeCtx)
		cancel()
		if err != nil && ctx.Err() == nil {
			e.Log.Warn("leader election connection lost", zap.Error(err))
		}
	}
}

func (e *Elector) connect(ctx context.Context) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, sessionConnectTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, e.ConnConfig)
	if err != nil {
		return nil, fmt.Errorf("connect leader election: %w", err)
	}
	return conn, nil
}

// session campaigns and leads on one connection until it fails or ctx ends.
func (e *Elector) session(ctx context.Context, conn *pgx.Conn, key int64) error {
	leading := false
	var pid uint32
	defer func() {
		if !leading {
			return
		}
		// Resign first, so workers stop before anyone else can lead.
		e.OnChange(false, 0)
		e.Log.Info("leadership released")
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), connCloseTimeout)
		defer cancel()
		_, _ = conn.Exec(uctx, `SELECT pg_advisory_unlock($1)`, key)
	}()
	for {
		if !leading {
			var got bool
			qctx, cancel := context.WithTimeout(ctx, sessionQueryTimeout)
			err := conn.QueryRow(qctx, `SELECT pg_try_advisory_lock($1), pg_backend_pid()`, key).Scan(&got, &pid)
			cancel()
			if err != nil {
				return fmt.Errorf("try leader lock: %w", err)
			}
			if got {
				leading = true
				e.Log.Info("became leader", zap.String("name", e.Name))
				e.OnChange(true, pid)
				continue
			}
			if !sleep(ctx, jitter(e.RetryEvery, 0.3)) {
				return ctx.Err()
			}
			continue
		}
		if !sleep(ctx, jitter(e.CheckEvery, 0.2)) {
			return ctx.Err()
		}
		pctx, cancel := context.WithTimeout(ctx, sessionQueryTimeout)
		err := conn.Ping(pctx)
		cancel()
		if err != nil {
			// The lock may already be gone with the session: stop leading
			// now rather than after a reconnect.
			leading = false
			e.OnChange(false, 0)
			e.Log.Warn("lost leadership: connection check failed", zap.Error(err))
			return fmt.Errorf("check leader connection: %w", err)
		}
	}
}

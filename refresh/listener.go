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

// Listener holds one dedicated LISTEN connection. The connection only
// listens and reads (notifications pile up in the server's queue while it is
// busy); when it has been quiet for PingEvery it is pinged, so a silently
// dead connection is found. After every (re)connect it LISTENs first and
// then reports the connect, so the caller's catch-up refresh cannot miss a
// change committed in between.
type Listener struct {
	ConnConfig *pgx.ConnConfig
	Channel    string
	PingEvery  time.Duration
	Backoff    Backoff
	Log        *zap.Logger
	// OnConnect is called after LISTEN succeeded; lastGood is when the
	// previous connection was last known healthy (zero on the first).
	OnConnect func(lastGood time.Time)
	// OnDisconnect is called when the connection is lost; lastGood is when
	// it was last known healthy.
	OnDisconnect func(err error, lastGood time.Time)
	// OnNotify is called for each notification, from the listener goroutine;
	// it must not block.
	OnNotify func(payload string, received time.Time)
}

// Run listens until ctx is done, reconnecting with backoff.
func (l *Listener) Run(ctx context.Context) {
	var lastGood time.Time
	attempt := 0
	for ctx.Err() == nil {
		conn, err := l.connect(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			attempt++
			d := l.Backoff.Delay(attempt)
			if attempt == 1 {
				l.Log.Warn("listener cannot connect; retrying", zap.Error(err), zap.Duration("retry_in", d))
			} else {
				l.Log.Debug("listener connect failed", zap.Error(err), zap.Int("attempt", attempt), zap.Duration("retry_in", d))
			}
			sleep(ctx, d)
			continue
		}
		attempt = 0
		l.Log.Info("listener connected", zap.String("channel", l.Channel))
		l.OnConnect(lastGood)
		lastGood = time.Now()
		err = l.loop(ctx, conn, &lastGood)
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), connCloseTimeout)
		_ = conn.Close(closeCtx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		l.Log.Warn("listener connection lost; reconnecting", zap.Error(err))
		l.OnDisconnect(err, lastGood)
	}
}

func (l *Listener) connect(ctx context.Context) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, sessionConnectTimeout)
	defer cancel()
	// This connection only waits for notifications; nothing runs on the
	// server that a cancel request could stop. With the cancel-request
	// handler the daemon gives its other connections, ending a wait (at
	// shutdown, at the end of a leadership term, or PingEvery's timeout)
	// took pgx's fallback socket deadline, 5 s: shutdown waited for it. A
	// socket deadline ends the wait at once and keeps the connection usable.
	cfg := l.ConnConfig.Copy()
	cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: pc.Conn()}
	}
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect listener: %w", err)
	}
	if _, err := conn.Exec(cctx, "LISTEN "+pgx.Identifier{l.Channel}.Sanitize()); err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("listen on %s: %w", l.Channel, err)
	}
	return conn, nil
}

func (l *Listener) loop(ctx context.Context, conn *pgx.Conn, lastGood *time.Time) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, l.PingEvery)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			now := time.Now()
			*lastGood = now
			l.OnNotify(n.Payload, now)
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err):
			// Quiet for PingEvery: make sure the connection is alive.
			pctx, cancel := context.WithTimeout(ctx, sessionQueryTimeout)
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("ping listener: %w", err)
			}
			*lastGood = time.Now()
		default:
			return fmt.Errorf("wait for notification: %w", err)
		}
	}
}

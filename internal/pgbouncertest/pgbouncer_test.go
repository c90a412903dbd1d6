package pgbouncertest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/refresherd/refresherd/internal/pgtest"
)

// TestHelperPoolsByTransaction checks the helper itself: queries go through
// it, it pools by transaction (two clients run on one server connection and
// pgx's default named statements collide, the failure refresherd's commands
// had), and Stop ends it and removes its files.
func TestHelperPoolsByTransaction(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := startBouncer(t, "")
	url := via(t, b, pgtest.NewDB(t))

	connect := func(mode pgx.QueryExecMode) *pgx.Conn {
		t.Helper()
		cfg, err := pgx.ParseConfig(url)
		if err != nil {
			t.Fatal(err)
		}
		cfg.DefaultQueryExecMode = mode
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
		return conn
	}
	backendPID := func(conn *pgx.Conn) (uint32, error) {
		var pid uint32
		err := conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid)
		return pid, err
	}

	a, c := connect(pgx.QueryExecModeExec), connect(pgx.QueryExecModeExec)
	pa, err := backendPID(a)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := backendPID(c)
	if err != nil {
		t.Fatal(err)
	}
	// PgBouncer reuses the most recently freed server connection first.
	if pa != pc {
		t.Errorf("two clients in turn got server connections %d and %d; transaction pooling gives both the same", pa, pc)
	}

	a, c = connect(pgx.QueryExecModeCacheStatement), connect(pgx.QueryExecModeCacheStatement)
	if _, err := backendPID(a); err != nil {
		t.Fatal(err)
	}
	_, err = backendPID(c)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42P05" {
		t.Errorf("second client with named statements: got %v, want duplicate_prepared_statement (42P05)", err)
	}

	dir := filepath.Dir(b.LogPath())
	b.Stop()
	b.Stop() // a second Stop is harmless
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp dir %s after Stop: %v", dir, err)
	}
	if conn, err := pgx.Connect(ctx, url); err == nil {
		_ = conn.Close(ctx)
		t.Error("PgBouncer still accepts connections after Stop")
	}
}

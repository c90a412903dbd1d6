package pgbouncertest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/refresherd/refresherd/internal/pgtest"
	"github.com/refresherd/refresherd/internal/pooler"
)

// TestDetectPooler: a direct connection is no pooler; through PgBouncer it
// is, and whether server connections are shared tells transaction pooling
// from session pooling.
func TestDetectPooler(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	direct := pgtest.NewDB(t)
	for _, tc := range []struct {
		name          string
		url           string
		pooled, share bool
	}{
		{"direct", direct, false, false},
		{"transaction", via(t, startBouncer(t, "transaction"), direct), true, true},
		{"session", via(t, startBouncer(t, "session"), direct), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// pgx's default named statements: the probe must not trip on them.
			cfg, err := pgx.ParseConfig(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			conn, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			pooled, err := pooler.Detect(ctx, conn)
			if err != nil {
				t.Fatal(err)
			}
			if pooled != tc.pooled {
				t.Errorf("Detect = %v, want %v", pooled, tc.pooled)
			}
			share, err := pooler.SharesServerConnections(ctx, conn, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if share != tc.share {
				t.Errorf("SharesServerConnections = %v, want %v", share, tc.share)
			}
		})
	}
}

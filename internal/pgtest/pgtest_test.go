package pgtest_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/internal/pgcluster"
	"github.com/refresherd/refresherd/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func dbExists(t *testing.T, ctx context.Context, name string) bool {
	t.Helper()
	conn, err := pgx.Connect(ctx, pgtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n == 1
}

func TestNewDB(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var names []string
	t.Run("Sub Test/with:odd*chars and a very long name that goes on and on", func(t *testing.T) {
		for range 2 {
			url := pgtest.NewDB(t)
			pool, err := pgxpool.New(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			// Left open on purpose: the drop must still succeed (WITH (FORCE)).
			t.Cleanup(pool.Close)
			var name string
			var tables int
			if err := pool.QueryRow(ctx, "SELECT current_database(), (SELECT count(*) FROM pg_tables WHERE schemaname = 'public')").Scan(&name, &tables); err != nil {
				t.Fatal(err)
			}
			if tables != 0 {
				t.Fatalf("new database has %d tables", tables)
			}
			if !strings.HasPrefix(name, "t_testnewdb_sub_test_with_odd_chars_") || len(name) > 63 {
				t.Fatalf("database name %q", name)
			}
			names = append(names, name)
		}
	})
	if len(names) != 2 || names[0] == names[1] {
		t.Fatalf("names %v", names)
	}
	for _, n := range names {
		if dbExists(t, ctx, n) {
			t.Fatalf("database %s not dropped on cleanup", n)
		}
	}
}

func TestParallelNewDB(t *testing.T) {
	for i := range 4 {
		t.Run("p", func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			conn, err := pgx.Connect(ctx, pgtest.NewDB(t))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			// Same table name in every database: they must be separate.
			if _, err := conn.Exec(ctx, "CREATE TABLE t AS SELECT $1::int AS i", i); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSharedAndAdminURL(t *testing.T) {
	if os.Getenv(pgtest.EnvURL) != "" {
		if pgtest.Shared() != nil {
			t.Fatal("Shared() should be nil with an external server")
		}
	} else {
		c := pgtest.Shared()
		if c == nil {
			t.Fatal("Shared() = nil")
		}
		if pgtest.AdminURL() != c.URL("postgres") {
			t.Fatalf("AdminURL %q != %q", pgtest.AdminURL(), c.URL("postgres"))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var super bool
	if err := conn.QueryRow(ctx, "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&super); err != nil || !super {
		t.Fatalf("admin role cannot create databases: %v", err)
	}
}

func TestNewCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := pgtest.NewCluster(t, pgcluster.Options{Settings: map[string]string{"work_mem": "8MB"}})
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var wm string
	if err := conn.QueryRow(ctx, "SHOW work_mem").Scan(&wm); err != nil || wm != "8MB" {
		t.Fatalf("work_mem %q %v", wm, err)
	}
	if s := pgtest.Shared(); s != nil && s.Port() == c.Port() {
		t.Fatal("NewCluster returned the shared cluster")
	}
}

package pgbouncertest

import (
	"strings"
	"testing"

	"github.com/refresherd/refresherd/internal/daemontest"
)

// TestCommandsThroughPgBouncer: on a fresh database, with no daemon, check,
// refresh (which creates refresherd's schema and the view) and status work
// through PgBouncer in transaction mode with nothing but the two URLs set.
// Before refresherd chose unnamed statements for database.url, refresh and
// check failed here with `prepared statement "stmtcache_..." already
// exists`.
func TestCommandsThroughPgBouncer(t *testing.T) {
	direct, _ := daemontest.DemoDB(t, 500)
	b := startBouncer(t, "transaction")
	env := []string{"DATABASE_URL=" + via(t, b, direct), "DATABASE_DIRECT_URL=" + direct}

	r := cmd(t, env, "check", "--config", daemontest.ShippedConfig())
	if r.code != 0 || r.stderr != "" || !hasLine(r, pooledURLOK) || !hasLine(r, directURLOK) {
		t.Fatalf("check on a fresh database: %s", r)
	}
	r = cmd(t, env, "refresh", "--config", daemontest.ShippedConfig())
	if r.code != 0 || r.stderr != "" || !strings.HasPrefix(r.stdout, view+" refreshed in ") {
		t.Fatalf("refresh: %s", r)
	}
	r = cmd(t, env, "status", "--config", daemontest.ShippedConfig())
	if r.code != 0 || r.stderr != "" || len(r.linesWith(view+" ")) != 1 {
		t.Fatalf("status: %s", r)
	}
	r = cmd(t, env, "check", "--config", daemontest.ShippedConfig())
	if r.code != 0 || r.stderr != "" || len(r.linesWith("PROBLEM ")) != 0 || len(r.linesWith("WARNING ")) != 0 {
		t.Fatalf("check after refresh: %s", r)
	}
}

// TestCheckSessionThroughPooler: check reports LISTEN and the leader lock
// going through a pooler: a problem when it shares server connections
// (transaction pooling), a warning when it cannot tell (session pooling),
// in both cases naming database.direct_url.
func TestCheckSessionThroughPooler(t *testing.T) {
	direct, _ := daemontest.DemoDB(t, 100)
	txn := via(t, startBouncer(t, "transaction"), direct)
	session := via(t, startBouncer(t, "session"), direct)

	// database.url at a transaction pool, no direct_url.
	r := cmd(t, []string{"DATABASE_URL=" + txn}, "check", "--config", daemontest.ShippedConfig())
	want := "PROBLEM database: database.url goes through a connection pooler that runs several clients' statements on one server connection " +
		"(transaction or statement pooling), and refresherd runs LISTEN and holds the leader lock on it: both need a session of their own, " +
		"so change notifications would be lost and two replicas could both refresh; set database.direct_url to PostgreSQL itself or to a session-mode pool"
	if r.code != 1 || r.stderr != "refresherd check: 1 problem(s) found\n" || !equalLines(r.linesWith("PROBLEM "), want) {
		t.Errorf("check without direct_url behind a transaction pool: %s", r)
	}

	// database.direct_url at the transaction pool too.
	r = cmd(t, []string{"DATABASE_URL=" + txn, "DATABASE_DIRECT_URL=" + txn}, "check", "--config", daemontest.ShippedConfig())
	want = "PROBLEM database: database.direct_url goes through a connection pooler that runs several clients' statements on one server connection " +
		"(transaction or statement pooling), and refresherd runs LISTEN and holds the leader lock on it: both need a session of their own, " +
		"so change notifications would be lost and two replicas could both refresh; point database.direct_url at PostgreSQL itself or at a session-mode pool"
	if r.code != 1 || !equalLines(r.linesWith("PROBLEM "), want) {
		t.Errorf("check with direct_url behind a transaction pool: %s", r)
	}

	// A session pool works, but check cannot see its pool mode: a warning.
	r = cmd(t, []string{"DATABASE_URL=" + session}, "check", "--config", daemontest.ShippedConfig())
	want = "WARNING database: database.url goes through a connection pooler (the server's backend pid differs from the one given at connect), " +
		"and refresherd runs LISTEN and holds the leader lock on it: fine with session pooling; behind PgBouncer in transaction or statement mode, " +
		"set database.direct_url to PostgreSQL itself or to a session-mode pool"
	if r.code != 0 || r.stderr != "" || len(r.linesWith("PROBLEM ")) != 0 || !equalLines(r.linesWith("WARNING "), want) {
		t.Errorf("check without direct_url behind a session pool: %s", r)
	}

	// A URL that asks for named prepared statements behind a pooler.
	r = cmd(t, []string{"DATABASE_URL=" + txn + "&default_query_exec_mode=cache_statement", "DATABASE_DIRECT_URL=" + direct},
		"check", "--config", daemontest.ShippedConfig())
	want = "WARNING database: database.url goes through a connection pooler and sets default_query_exec_mode=cache_statement: " +
		"behind PgBouncer in transaction mode that needs PgBouncer 1.21+ with max_prepared_statements, or refreshes fail with prepared statement errors; " +
		"without the parameter refresherd uses unnamed statements, which every pool mode carries"
	if r.code != 0 || len(r.linesWith("PROBLEM ")) != 0 || !equalLines(r.linesWith("WARNING "), want) || !hasLine(r, directURLOK) {
		t.Errorf("check with default_query_exec_mode=cache_statement: %s", r)
	}
}

func equalLines(got []string, want ...string) bool {
	return strings.Join(got, "\n") == strings.Join(want, "\n")
}

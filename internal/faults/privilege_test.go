package faults

import (
	"context"
	"net/url"
	"testing"
	"time"
)

// The grants of docs/security.md, for database app. The role's only
// database privileges are these: PUBLIC's defaults (CONNECT, TEMPORARY) are
// revoked first, so nothing is inherited from them. TEMPORARY is needed:
// REFRESH ... CONCURRENTLY builds its diff in a temporary table ("permission
// denied to create temporary tables" without it).
const (
	revokePublic = `REVOKE ALL ON DATABASE app FROM PUBLIC`
	createRole   = `CREATE ROLE refresherd_app LOGIN PASSWORD 'not-used-with-trust-auth'`
	grantCommon  = `GRANT CONNECT, TEMPORARY ON DATABASE app TO refresherd_app;
GRANT USAGE, CREATE ON SCHEMA public TO refresherd_app;
GRANT SELECT, TRIGGER ON public.app_charge TO refresherd_app`
	// Either the role creates its schema ...
	grantCreateSchema = `GRANT CREATE ON DATABASE app TO refresherd_app`
	// ... or an administrator creates it for the role.
	precreateSchema = `CREATE SCHEMA refresherd AUTHORIZATION refresherd_app`
	// The application writes as an ordinary role, with no privilege on
	// refresherd's schema: the change trigger must still work for it. It
	// reads the views refresherd_app will create (default privileges).
	createWriter = `CREATE ROLE app_writer LOGIN;
GRANT CONNECT ON DATABASE app TO app_writer;
GRANT USAGE ON SCHEMA public TO app_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.app_charge TO app_writer;
GRANT SELECT ON public.app_user, public.app_job TO app_writer;
ALTER DEFAULT PRIVILEGES FOR ROLE refresherd_app IN SCHEMA public GRANT SELECT ON TABLES TO app_writer`
	// With a pre-created schema, the administrator can also let the app
	// read refresherd.data_as_of() before the tables exist.
	appReadsStatus = `GRANT USAGE ON SCHEMA refresherd TO app_writer;
ALTER DEFAULT PRIVILEGES FOR ROLE refresherd_app IN SCHEMA refresherd GRANT SELECT ON TABLES TO app_writer`
)

// TestLeastPrivilege runs the daemon as a role with only the privileges
// docs/security.md lists, in both variants (the role creates its schema, or
// owns a pre-created one), and checks it works end to end: view created and
// owned by the role, populated, refreshed on a change written by the
// application's role.
func TestLeastPrivilege(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		schema []string
	}{
		{"create schema", []string{grantCreateSchema}},
		{"pre-created schema", []string{precreateSchema, appReadsStatus}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 2000)
			for _, sql := range append([]string{revokePublic, createRole, grantCommon, createWriter}, tc.schema...) {
				e.exec(t, sql)
			}
			daemonURL := roleURL(t, e.url, "refresherd_app")
			p := start(t, config{}.write(t), "DATABASE_URL="+daemonURL)
			e.settle(t, p)

			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var owner string
			var super bool
			if err := e.pool.QueryRow(ctx, `SELECT m.matviewowner, r.rolsuper FROM pg_matviews m
				JOIN pg_roles r ON r.rolname = m.matviewowner
				WHERE m.schemaname = 'public' AND m.matviewname = 'app_chargesummary'`).Scan(&owner, &super); err != nil {
				t.Fatal(err)
			}
			if owner != "refresherd_app" || super {
				t.Errorf("view owned by %s (superuser %v), want refresherd_app", owner, super)
			}

			// A change by the application's role: trigger, NOTIFY, refresh.
			writer := connect(t, roleURL(t, e.url, "app_writer"))
			if _, err := writer.Exec(ctx, `INSERT INTO app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 5.55, '2026-07-01', 2, NULL)`); err != nil {
				t.Fatalf("insert as app_writer: %v", err)
			}
			if _, err := writer.Exec(ctx, `UPDATE app_charge SET amount = amount + 1 WHERE id = 1`); err != nil {
				t.Fatalf("update as app_writer: %v", err)
			}
			e.mustSettle(t, 10*time.Second)
			// The application reads the summary (and, where granted, its
			// data time).
			var n int
			if err := writer.QueryRow(ctx, `SELECT count(*) FROM public.app_chargesummary`).Scan(&n); err != nil || n == 0 {
				t.Errorf("app_writer reads the summary: %d rows, %v", n, err)
			}
			if len(tc.schema) > 1 {
				var asOf *time.Time
				if err := writer.QueryRow(ctx, `SELECT refresherd.data_as_of('public.app_chargesummary')`).Scan(&asOf); err != nil || asOf == nil {
					t.Errorf("app_writer reads refresherd.data_as_of(): %v, %v", asOf, err)
				}
			}
			if st := e.status(t); st.LastResult != "success" || st.LastError != "" {
				t.Errorf("view_status: result %q, error %q", st.LastResult, st.LastError)
			}
			for name, want := range map[string]float64{"refresherd_leader": 1, "refresherd_listener_connected": 1} {
				if v := mustMetric(t, p, name, nil); v != want {
					t.Errorf("%s = %v, want %v", name, v, want)
				}
			}
			if v := mustMetric(t, p, "refresherd_refreshes_total", map[string]string{"view": view, "result": "error"}); v != 0 {
				t.Errorf("%v failed refreshes as refresherd_app", v)
			}
			if n := p.CountLogs(func(l map[string]any) bool { return l["level"] == "error" || l["level"] == "warn" }); n != 0 {
				t.Errorf("%d warnings or errors logged as refresherd_app", n)
			}
		})
	}
}

// roleURL is u with its user replaced (the test cluster trusts local
// connections, so no password is needed).
func roleURL(t *testing.T, u, role string) string {
	t.Helper()
	parsed, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	parsed.User = url.User(role)
	return parsed.String()
}

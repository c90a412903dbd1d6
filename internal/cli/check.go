package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/refresherd/refresherd/config"
	"github.com/refresherd/refresherd/internal/pooler"
	"github.com/refresherd/refresherd/refresh"
	"github.com/refresherd/refresherd/refresh/incremental"
	dbsql "github.com/refresherd/refresherd/sql"
)

const checkHelp = `Validate the configuration and preflight the database without changing
anything: connectivity and server version; the privileges refresherd needs
(CREATE on the database and refresherd's schema objects, CREATE in each
missing view's schema or ownership of each existing view, TRIGGER on each
watched source table); each source exists and is a table; each existing view
is a populated materialized view with (or able to get) a unique index usable
by REFRESH ... CONCURRENTLY; each query plans (EXPLAIN in a read-only
transaction that is rolled back).

The database connection also tells whether a connection pooler such as
PgBouncer sits in front of the server: through database.url any pool mode
works; LISTEN and the leader lock need a session of their own, which a
transaction or statement pool does not give: set database.direct_url.

Output on stdout, one line per check:
  ok <subject>: <what was found>
  WARNING <subject>: <what may be wrong, depending on what check cannot see>
  PROBLEM <subject>: <what is wrong and how to fix it>
where subject is "config", "database", "refresherd schema" or a view name.
The configuration error, if any, reads as it does for 'refresherd run'.

Exit codes: 0 no problem (warnings allowed), 1 problems found (or the
database is unreachable), 2 bad usage or configuration.`

const (
	// checkTimeout bounds the whole preflight; each EXPLAIN also runs under
	// the view's lock_timeout and checkStatementTimeout.
	checkTimeout          = 5 * time.Minute
	checkStatementTimeout = "30s"
	// minServerVersion: set-up uses CREATE OR REPLACE TRIGGER (PostgreSQL 14).
	minServerVersion = 140000
)

// checker prints the report and counts problems.
type checker struct {
	env      Env
	problems int
	role, db string
	version  int
}

func (c *checker) ok(subject, format string, args ...any) {
	fmt.Fprintf(c.env.Stdout, "ok %s: %s\n", subject, oneLine(fmt.Sprintf(format, args...)))
}

// warn reports what may be wrong, depending on what check cannot see (a
// pooler's pool mode, say); warnings do not change the exit code.
func (c *checker) warn(subject, format string, args ...any) {
	fmt.Fprintf(c.env.Stdout, "WARNING %s: %s\n", subject, oneLine(fmt.Sprintf(format, args...)))
}

func (c *checker) problem(subject, format string, args ...any) {
	c.problems++
	fmt.Fprintf(c.env.Stdout, "PROBLEM %s: %s\n", subject, oneLine(fmt.Sprintf(format, args...)))
}

func runCheck(args []string, env Env) int {
	fs := newCmdFlags("check", "check [--config FILE] [--database-url URL]", checkHelp, env)
	df := addDBFlags(fs)
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return errorf(env, ExitUsage, "check", "unexpected arguments: %v", fs.Args())
	}
	s, err := loadDB(df, env)
	if err != nil {
		return errorf(env, ExitUsage, "check", "%v", err)
	}
	env = redacted(env, s)
	c := &checker{env: env}
	names := make([]string, len(s.cfg.Views))
	for i, v := range s.cfg.Views {
		names[i] = v.Name.String()
	}
	c.ok("config", "%s: %d view(s): %s", s.cfg.File, len(names), strings.Join(names, ", "))

	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	setAppName(s.poolCfg.ConnConfig, "refresherd-check")
	conn, err := connect(ctx, s.poolCfg.ConnConfig)
	if err != nil {
		c.problem("database", "cannot connect (database.url): %v", err)
		return c.finish()
	}
	defer closeConn(conn)
	if err := c.checkServer(ctx, conn); err != nil {
		c.problem("database", "%v", err)
		return c.finish()
	}
	if err := c.checkPoolers(ctx, s, conn); err != nil {
		c.problem("database", "%v", err)
	}
	if err := c.checkSchema(ctx, conn); err != nil {
		c.problem("refresherd schema", "%v", err)
	}
	for i := range s.cfg.Views {
		v := &s.cfg.Views[i]
		if err := c.checkView(ctx, conn, v); err != nil {
			c.problem(v.Name.String(), "%v", err)
		}
	}
	return c.finish()
}

// checkPoolers finds connection poolers in front of the server. Through
// database.url any pooler is fine: its connections use unnamed statements
// (see connConfigs). The session URL (database.direct_url, else
// database.url) carries LISTEN and the leader lock, which a pooler that
// shares server connections between clients breaks. conn is the
// database.url connection.
func (c *checker) checkPoolers(ctx context.Context, s *dbSetup, conn *pgx.Conn) error {
	pooled, err := pooler.Detect(ctx, conn)
	if err != nil {
		return err
	}
	if pooled {
		// The modes a transaction pool may break: named statements, and a
		// describe and an execute that may land on different server
		// connections. Only a URL that sets the parameter gets them.
		switch s.poolCfg.ConnConfig.DefaultQueryExecMode {
		case pgx.QueryExecModeCacheStatement:
			c.warn("database", "database.url goes through a connection pooler and sets default_query_exec_mode=cache_statement: behind PgBouncer in transaction mode "+
				"that needs PgBouncer 1.21+ with max_prepared_statements, or refreshes fail with prepared statement errors; without the parameter refresherd uses unnamed statements, which every pool mode carries")
		case pgx.QueryExecModeDescribeExec:
			c.warn("database", "database.url goes through a connection pooler and sets default_query_exec_mode=describe_exec: behind a transaction pool "+
				"a statement's describe and execute may reach different server connections; without the parameter refresherd uses unnamed statements, which every pool mode carries")
		default:
			c.ok("database", "database.url goes through a connection pooler: refresherd sends it unnamed statements, which every pool mode carries")
		}
	}

	key, sessionConn, sessionCfg := "database.url", conn, s.poolCfg.ConnConfig
	if s.cfg.Database.DirectURL != "" {
		key, sessionCfg = "database.direct_url", s.sessionCfg
		setAppName(sessionCfg, "refresherd-check")
		dc, err := connect(ctx, sessionCfg)
		if err != nil {
			c.problem("database", "cannot connect (database.direct_url, used for LISTEN and the leader lock): %v", err)
			return nil
		}
		defer closeConn(dc)
		sessionConn = dc
		if pooled, err = pooler.Detect(ctx, dc); err != nil {
			return err
		}
		if !pooled {
			c.ok("database", "database.direct_url connects to PostgreSQL itself (no pooler in between): LISTEN and the leader lock get a session of their own")
			return nil
		}
	}
	if !pooled {
		return nil
	}
	shared, err := pooler.SharesServerConnections(ctx, sessionConn, sessionCfg)
	if err != nil {
		return err
	}
	fix := "set database.direct_url to PostgreSQL itself or to a session-mode pool"
	if key == "database.direct_url" {
		fix = "point database.direct_url at PostgreSQL itself or at a session-mode pool"
	}
	if shared {
		c.problem("database", "%s goes through a connection pooler that runs several clients' statements on one server connection (transaction or statement pooling), "+
			"and refresherd runs LISTEN and holds the leader lock on it: both need a session of their own, so change notifications would be lost and "+
			"two replicas could both refresh; %s", key, fix)
		return nil
	}
	c.warn("database", "%s goes through a connection pooler (the server's backend pid differs from the one given at connect), and refresherd runs LISTEN "+
		"and holds the leader lock on it: fine with session pooling; behind PgBouncer in transaction or statement mode, %s", key, fix)
	return nil
}

func (c *checker) finish() int {
	if c.problems > 0 {
		return errorf(c.env, ExitFailure, "check", "%d problem(s) found", c.problems)
	}
	return ExitOK
}

// checkServer reports who we are and whether the server is recent enough.
func (c *checker) checkServer(ctx context.Context, conn *pgx.Conn) error {
	var version string
	if err := conn.QueryRow(ctx, `SELECT current_user, current_database(), current_setting('server_version'),
			current_setting('server_version_num')::int`).Scan(&c.role, &c.db, &version, &c.version); err != nil {
		return fmt.Errorf("check server: %w", err)
	}
	c.ok("database", "connected to PostgreSQL %s, database %q as role %q", version, c.db, c.role)
	if c.version < minServerVersion {
		c.problem("database", "PostgreSQL %s is too old: refresherd needs 14 or later (it uses CREATE OR REPLACE TRIGGER)", version)
	}
	return nil
}

// checkSchema checks what EnsureSchema needs, as verified against the
// server: the schema is created only when missing (that needs CREATE on the
// database); sql/schema.sql runs at every start, and PostgreSQL checks
// CREATE TABLE IF NOT EXISTS against the schema's before it finds the
// object exists; CREATE INDEX IF NOT EXISTS needs the table's ownership
// and CREATE OR REPLACE FUNCTION the function's. Keep this in step with
// sql/schema.sql.
func (c *checker) checkSchema(ctx context.Context, conn *pgx.Conn) error {
	const subject = "refresherd schema"
	var dbCreate, exists, schemaCreate, schemaUsage bool
	if err := conn.QueryRow(ctx, `SELECT has_database_privilege(current_database(), 'CREATE'),
			n.oid IS NOT NULL,
			coalesce(has_schema_privilege(n.oid, 'CREATE'), false),
			coalesce(has_schema_privilege(n.oid, 'USAGE'), false)
		FROM (SELECT to_regnamespace($1)::oid AS oid) AS n`, dbsql.SchemaName).Scan(&dbCreate, &exists, &schemaCreate, &schemaUsage); err != nil {
		return fmt.Errorf("check schema privileges: %w", err)
	}
	if !exists {
		if !dbCreate {
			c.problem(subject, "does not exist and role %q lacks CREATE on database %q to create it (GRANT CREATE ON DATABASE %s TO %s, or pre-create schema %s owned by the role)",
				c.role, c.db, pgx.Identifier{c.db}.Sanitize(), pgx.Identifier{c.role}.Sanitize(), dbsql.SchemaName)
			return nil
		}
		c.ok(subject, "does not exist yet: start-up will create it (role %q may CREATE in database %q)", c.role, c.db)
		return nil
	}
	if !schemaCreate || !schemaUsage {
		c.problem(subject, "role %q lacks USAGE or CREATE on schema %s: start-up re-runs CREATE TABLE IF NOT EXISTS there (GRANT USAGE, CREATE ON SCHEMA %s TO %s)",
			c.role, dbsql.SchemaName, dbsql.SchemaName, pgx.Identifier{c.role}.Sanitize())
		return nil // the object checks below would only repeat it
	}
	// Objects whose re-creation at start-up needs ownership.
	rows, err := conn.Query(ctx, `SELECT 'table ' || c.oid::regclass::text, pg_get_userbyid(c.relowner), pg_has_role(c.relowner, 'USAGE')
			FROM pg_catalog.pg_class c
			WHERE c.relnamespace = to_regnamespace($1) AND c.relname = 'refresh_log' AND c.relkind = 'r'
		UNION ALL
		SELECT 'function ' || p.oid::regprocedure::text, pg_get_userbyid(p.proowner), pg_has_role(p.proowner, 'USAGE')
			FROM pg_catalog.pg_proc p
			WHERE p.pronamespace = to_regnamespace($1) AND p.proname IN ($2, 'data_as_of')
		ORDER BY 1`, dbsql.SchemaName, dbsql.NotifyFunction)
	if err != nil {
		return fmt.Errorf("check schema objects: %w", err)
	}
	type object struct {
		what, owner string
		owned       bool
	}
	objs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (object, error) {
		var o object
		err := r.Scan(&o.what, &o.owner, &o.owned)
		return o, err
	})
	if err != nil {
		return fmt.Errorf("check schema objects: %w", err)
	}
	found := 0
	for _, o := range objs {
		if !o.owned {
			found++
			c.problem(subject, "%s is owned by role %q, not usable by role %q: start-up re-creates it (CREATE OR REPLACE / IF NOT EXISTS), which needs ownership",
				o.what, o.owner, c.role)
		}
	}
	// The refresh transaction writes these; ownership normally implies it,
	// but privileges can be revoked from an owner too.
	for _, p := range []struct{ table, priv string }{
		{"view_status", "SELECT"}, {"view_status", "INSERT"}, {"view_status", "UPDATE"},
		{"refresh_log", "SELECT"}, {"refresh_log", "INSERT"}, {"refresh_log", "DELETE"},
	} {
		name := pgx.Identifier{dbsql.SchemaName, p.table}.Sanitize()
		var has *bool
		if err := conn.QueryRow(ctx, `SELECT has_table_privilege(to_regclass($1), $2)`, name, p.priv).Scan(&has); err != nil {
			return fmt.Errorf("check privileges on %s: %w", name, err)
		}
		if has != nil && !*has {
			found++
			c.problem(subject, "role %q lacks %s on %s.%s: every refresh records its status there", c.role, p.priv, dbsql.SchemaName, p.table)
		}
	}
	if found == 0 {
		c.ok(subject, "exists and is usable by role %q", c.role)
	}
	return nil
}

// checkStrategy reports which strategy v runs and why, and for an
// incremental view what a round needs (a selective index on the source);
// it reports whether v runs incrementally (then checkView has nothing more
// to check: the daemon owns and builds the table).
func (c *checker) checkStrategy(ctx context.Context, conn *pgx.Conn, v *config.View) (bool, error) {
	subject := v.Name.String()
	if v.Strategy == config.StrategyFull {
		c.ok(subject, "strategy full: a materialized view refreshed whole")
		return false, nil
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("check strategy: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	plan, err := incremental.Analyze(ctx, tx, v, v.GroupKey)
	var nq *incremental.NotQualified
	switch {
	case errors.As(err, &nq) && v.Strategy == config.StrategyAuto:
		c.ok(subject, "strategy auto: full, because the query does not qualify for incremental: %s", nq.Reason)
		return false, nil
	case errors.As(err, &nq):
		c.problem(subject, "strategy incremental, but the query does not qualify: %s", nq.Reason)
		return true, nil
	case err != nil:
		c.problem(subject, "strategy %s: cannot analyse the query: %v", v.Strategy, err)
		return true, nil
	}
	keys := make([]string, len(plan.Keys))
	for i, k := range plan.Keys {
		keys[i] = k.Column
	}
	c.ok(subject, "strategy %s: incremental, group key (%s) over %s", v.Strategy, strings.Join(keys, ", "), plan.Source)
	advice, err := incremental.CheckIndex(ctx, tx, plan)
	if err != nil {
		return true, fmt.Errorf("check strategy: %w", err)
	}
	switch {
	case advice.SQL == "":
	case advice.Selective:
		c.warn(subject, "no index on %s holds every column the query reads: a round reads each touched group's rows from the table, "+
			"about one page per row, which at millions of rows costs ms per group; create one (rounds then read only the index): %s", plan.Source, advice.SQL)
	default:
		c.warn(subject, "no index on %s makes a round's group lookup selective: every round scans the table; create one: %s", plan.Source, advice.SQL)
	}
	return true, nil
}

// checkView checks one view and its sources. Problems are reported as
// found; the error is for a check that could not run.
func (c *checker) checkView(ctx context.Context, conn *pgx.Conn, v *config.View) error {
	subject := v.Name.String()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for _, src := range v.Sources {
		if err := c.checkSource(ctx, conn, v, src); err != nil {
			return err
		}
	}
	incremental, err := c.checkStrategy(ctx, conn, v)
	if err != nil || incremental {
		return err
	}
	var kind string
	var populated, owned bool
	var owner string
	err = conn.QueryRow(ctx, `SELECT c.relkind::text, c.relispopulated, pg_has_role(c.relowner, 'USAGE'), pg_get_userbyid(c.relowner)
		FROM pg_catalog.pg_class c WHERE c.oid = to_regclass($1)`, v.Name.Sanitized()).Scan(&kind, &populated, &owned, &owner)
	if errors.Is(err, pgx.ErrNoRows) {
		return c.checkMissingView(ctx, conn, v)
	}
	if err != nil {
		return fmt.Errorf("check view: look up %s: %w", v.Name, err)
	}
	if kind != "m" {
		c.problem(subject, "exists but is %s, not a materialized view: refresherd will not replace it (drop or rename it)", relkindName(kind))
		return nil
	}
	index, unusable, err := uniqueIndexes(ctx, conn, v)
	if err != nil {
		return err
	}
	maintain := false
	if !owned && c.version >= 170000 && index != "" {
		// PostgreSQL 17's MAINTAIN privilege allows REFRESH without
		// ownership; creating the index would still need ownership.
		if err := conn.QueryRow(ctx, `SELECT has_table_privilege(to_regclass($1), 'MAINTAIN')`, v.Name.Sanitized()).Scan(&maintain); err != nil {
			return fmt.Errorf("check view: privileges on %s: %w", v.Name, err)
		}
	}
	if !owned && !maintain {
		c.problem(subject, "is owned by role %q, not usable by role %q: REFRESH and CREATE INDEX need ownership (ALTER MATERIALIZED VIEW %s OWNER TO %s)",
			owner, c.role, v.Name.Sanitized(), pgx.Identifier{c.role}.Sanitize())
	}
	var notes []string
	if index != "" {
		notes = append(notes, fmt.Sprintf("unique index %s usable by REFRESH CONCURRENTLY", index))
	} else {
		missing, err := missingColumns(ctx, conn, v)
		if err != nil {
			return err
		}
		if len(missing) > 0 {
			c.problem(subject, "has no unique index usable by REFRESH CONCURRENTLY%s, and set-up cannot create one: unique_key column(s) %s not in the view",
				unusableNote(unusable), strings.Join(missing, ", "))
		} else {
			notes = append(notes, fmt.Sprintf("no unique index usable by REFRESH CONCURRENTLY%s yet: set-up will create one on (%s)",
				unusableNote(unusable), strings.Join(v.UniqueKey, ", ")))
		}
	}
	if !populated {
		c.problem(subject, "is not populated: reading it fails until its first refresh (refresherd populates it with a plain REFRESH, which blocks readers once)")
	}
	if owned || maintain {
		// REFRESH runs the stored definition as the owner: plan it as such.
		var def string
		if err := conn.QueryRow(ctx, `SELECT pg_get_viewdef(to_regclass($1))`, v.Name.Sanitized()).Scan(&def); err != nil {
			return fmt.Errorf("check view: definition of %s: %w", v.Name, err)
		}
		if _, err := planQuery(ctx, conn, v, strings.TrimRight(strings.TrimSpace(def), ";"), false); err != nil {
			c.problem(subject, "its definition does not plan for role %q, so REFRESH would fail: %v", c.role, err)
		} else {
			notes = append(notes, "definition plans")
		}
	}
	// The configured query may differ from the stored definition (the
	// config changed since the view was created); whatever re-creates the
	// view will run it, so it must plan too.
	if cols, err := planQuery(ctx, conn, v, v.Query, true); err != nil {
		c.problem(subject, "configured query does not plan: %v", err)
	} else if missing := missingFrom(v.UniqueKey, cols); len(missing) > 0 {
		c.problem(subject, "unique_key column(s) %s not among the configured query's columns (%s)", strings.Join(missing, ", "), strings.Join(cols, ", "))
	}
	if populated {
		notes = append(notes, "populated")
	}
	c.ok(subject, "materialized view exists: %s", strings.Join(notes, "; "))
	return nil
}

// checkMissingView checks that set-up can create the view: the schema
// exists and allows CREATE, the query plans, and it yields the unique key.
func (c *checker) checkMissingView(ctx context.Context, conn *pgx.Conn, v *config.View) error {
	subject := v.Name.String()
	var schemaExists, canCreate bool
	if err := conn.QueryRow(ctx, `SELECT n.oid IS NOT NULL, coalesce(has_schema_privilege(n.oid, 'CREATE'), false)
		FROM (SELECT to_regnamespace($1)::oid AS oid) AS n`, pgx.Identifier{v.Name.Schema}.Sanitize()).Scan(&schemaExists, &canCreate); err != nil {
		return fmt.Errorf("check view: schema of %s: %w", v.Name, err)
	}
	problems := c.problems
	switch {
	case !schemaExists:
		c.problem(subject, "does not exist, and its schema %s does not exist either: create the schema", pgx.Identifier{v.Name.Schema}.Sanitize())
	case !canCreate:
		c.problem(subject, "does not exist, and role %q lacks CREATE on schema %s to create it (GRANT CREATE ON SCHEMA %s TO %s)",
			c.role, v.Name.Schema, pgx.Identifier{v.Name.Schema}.Sanitize(), pgx.Identifier{c.role}.Sanitize())
	}
	cols, err := planQuery(ctx, conn, v, v.Query, true)
	if err != nil {
		c.problem(subject, "query does not plan: %v", err)
		return nil
	}
	if missing := missingFrom(v.UniqueKey, cols); len(missing) > 0 {
		c.problem(subject, "unique_key column(s) %s not among the query's columns (%s)", strings.Join(missing, ", "), strings.Join(cols, ", "))
	}
	if c.problems == problems {
		c.ok(subject, "does not exist yet: set-up will create it (query plans; unique key (%s) among its columns)", strings.Join(v.UniqueKey, ", "))
	}
	return nil
}

// missingFrom returns the keys not in cols.
func missingFrom(keys, cols []string) []string {
	var missing []string
	for _, k := range keys {
		if !slices.Contains(cols, k) {
			missing = append(missing, k)
		}
	}
	return missing
}

// checkSource checks one source table of v as EnsureView will use it.
func (c *checker) checkSource(ctx context.Context, conn *pgx.Conn, v *config.View, src config.QualifiedName) error {
	subject := v.Name.String()
	// notify and changelog both need a trigger on the table; the notify
	// one serves a changelog view too (both append to the change log).
	notify := v.ChangeDetection == config.DetectNotify || v.ChangeDetection == config.DetectChangelog
	triggerNames := []string{dbsql.TriggerName}
	if v.ChangeDetection == config.DetectChangelog {
		triggerNames = append(triggerNames, refresh.ChangelogTrigger)
	}
	var kind string
	var trigger, triggerPriv, owned bool
	err := conn.QueryRow(ctx, `SELECT c.relkind::text,
			EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = ANY($2)),
			has_table_privilege(c.oid, 'TRIGGER'), pg_has_role(c.relowner, 'USAGE')
		FROM pg_catalog.pg_class c WHERE c.oid = to_regclass($1)`, src.Sanitized(), triggerNames).Scan(&kind, &trigger, &triggerPriv, &owned)
	if errors.Is(err, pgx.ErrNoRows) {
		c.problem(subject, "source table %s does not exist", src)
		return nil
	}
	if err != nil {
		return fmt.Errorf("check source %s: %w", src, err)
	}
	isTable := kind == "r" || kind == "p"
	switch {
	case !isTable && notify:
		c.problem(subject, "source %s is %s, not a table: change_detection %s cannot watch it (list its tables as sources, or set change_detection: none)", src, relkindName(kind), v.ChangeDetection)
	case !isTable:
		c.ok(subject, "source %s exists (%s)", src, relkindName(kind))
	case notify && trigger:
		c.ok(subject, "source table %s has the change trigger", src)
	case notify && !triggerPriv:
		c.problem(subject, "role %q lacks the TRIGGER privilege on source table %s, needed to install the change trigger (GRANT TRIGGER ON %s TO %s)",
			c.role, src, src.Sanitized(), pgx.Identifier{c.role}.Sanitize())
	case notify:
		c.ok(subject, "source table %s: set-up will install the change trigger (TRIGGER privilege held)", src)
	case trigger && !owned:
		c.problem(subject, "source table %s still has the change trigger, which set-up drops for change_detection %s: that needs ownership of the table",
			src, v.ChangeDetection)
	default:
		c.ok(subject, "source table %s exists", src)
	}
	return nil
}

// planQuery plans query with EXPLAIN (which checks table privileges too)
// and, when describe is set, returns its result columns from the server's
// description of the statement. It runs in a read-only transaction that is
// rolled back, with short timeouts: a preflight must neither wait long
// behind a lock nor change anything.
func planQuery(ctx context.Context, conn *pgx.Conn, v *config.View, query string, describe bool) ([]string, error) {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true)`,
		checkStatementTimeout, fmt.Sprintf("%dms", max(v.LockTimeout.Milliseconds(), 1))); err != nil {
		return nil, fmt.Errorf("set timeouts: %w", err)
	}
	if err := tx.Conn().PgConn().ExecParams(ctx, "EXPLAIN "+query, nil, nil, nil, nil).Read().Err; err != nil {
		return nil, fmt.Errorf("EXPLAIN: %w", err)
	}
	if !describe {
		return nil, nil
	}
	sd, err := tx.Conn().PgConn().Prepare(ctx, "", query, nil)
	if err != nil {
		return nil, fmt.Errorf("describe: %w", err)
	}
	cols := make([]string, len(sd.Fields))
	for i, f := range sd.Fields {
		cols[i] = f.Name
	}
	return cols, nil
}

// uniqueIndexes returns a unique index of v usable by REFRESH CONCURRENTLY
// (valid, no predicate, no expressions: what EnsureView looks for), or ""
// and the unique indexes that are not usable, with why.
func uniqueIndexes(ctx context.Context, conn *pgx.Conn, v *config.View) (usable string, unusable []string, err error) {
	rows, err := conn.Query(ctx, `SELECT i.indexrelid::regclass::text, i.indisvalid, i.indpred IS NULL, i.indexprs IS NULL
		FROM pg_catalog.pg_index i WHERE i.indrelid = to_regclass($1) AND i.indisunique ORDER BY 1`, v.Name.Sanitized())
	if err != nil {
		return "", nil, fmt.Errorf("check view: indexes of %s: %w", v.Name, err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var valid, noPred, noExprs bool
		if err := rows.Scan(&name, &valid, &noPred, &noExprs); err != nil {
			return "", nil, fmt.Errorf("check view: indexes of %s: %w", v.Name, err)
		}
		switch {
		case valid && noPred && noExprs:
			if usable == "" {
				usable = name
			}
		case !valid:
			unusable = append(unusable, name+" is invalid (an interrupted CREATE INDEX CONCURRENTLY? drop it)")
		case !noPred:
			unusable = append(unusable, name+" is partial")
		default:
			unusable = append(unusable, name+" has expressions")
		}
	}
	if err := rows.Err(); err != nil {
		return "", nil, fmt.Errorf("check view: indexes of %s: %w", v.Name, err)
	}
	return usable, unusable, nil
}

func unusableNote(unusable []string) string {
	if len(unusable) == 0 {
		return ""
	}
	return " (" + strings.Join(unusable, "; ") + ")"
}

// missingColumns returns the unique_key columns the existing view lacks.
func missingColumns(ctx context.Context, conn *pgx.Conn, v *config.View) ([]string, error) {
	var missing []string
	err := conn.QueryRow(ctx, `SELECT coalesce(array_agg(k ORDER BY o), '{}') FROM unnest($2::text[]) WITH ORDINALITY AS u(k, o)
		WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
			WHERE a.attrelid = to_regclass($1) AND a.attname = u.k AND a.attnum > 0 AND NOT a.attisdropped)`,
		v.Name.Sanitized(), v.UniqueKey).Scan(&missing)
	if err != nil {
		return nil, fmt.Errorf("check view: columns of %s: %w", v.Name, err)
	}
	return missing, nil
}

func relkindName(kind string) string {
	switch kind {
	case "r":
		return "a table"
	case "p":
		return "a partitioned table"
	case "v":
		return "a view"
	case "m":
		return "a materialized view"
	case "f":
		return "a foreign table"
	case "S":
		return "a sequence"
	case "i", "I":
		return "an index"
	case "c":
		return "a composite type"
	case "t":
		return "a TOAST table"
	}
	return fmt.Sprintf("a relation of kind %q", kind)
}

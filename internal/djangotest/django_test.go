package djangotest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/internal/daemontest"
	"github.com/refresherd/refresherd/internal/demodata"
	"github.com/refresherd/refresherd/internal/pgcluster"
)

const view = "public.app_chargesummary"

// python is Debian's interpreter: Debian's python3-django installs for it, and
// a python3 earlier on PATH (pyenv, a virtualenv) would not see it.
const python = "/usr/bin/python3"

// debianPackages are what the tests need, each with a module that shows it is
// there: Django; psycopg2, its PostgreSQL driver (only "Suggested" by
// python3-django); pytest-django for the pytest recipe.
var debianPackages = []struct{ name, module string }{
	{"python3-django", "django"},
	{"python3-psycopg2", "psycopg2"},
	{"python3-pytest-django", "pytest_django"},
}

// djangoInstalled installs the packages that are missing, once per test
// process. Tests never skip for want of Django.
var djangoInstalled = sync.OnceValue(func() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for _, p := range debianPackages {
		present := func() bool { return exec.CommandContext(ctx, python, "-c", "import "+p.module).Run() == nil }
		if present() {
			continue
		}
		if err := pgcluster.AptInstall(ctx, p.name, present); err != nil {
			return fmt.Errorf("install %s: %w", p.name, err)
		}
		if !present() {
			return fmt.Errorf("apt-get installed %s but %s cannot import %s", p.name, python, p.module)
		}
	}
	return nil
})

// project is a copy of testdata/ (so that Python's caches and a test's own
// migrations stay out of the source tree) bound to one database.
type project struct {
	t     *testing.T
	dir   string
	dbURL string
	cfg   string // the refresherd config for refresh, check and the test hooks
}

// newProject copies the Django project for a test on the database at dbURL,
// with refresherd config cfg.
func newProject(t *testing.T, dbURL, cfg string) *project {
	t.Helper()
	if err := djangoInstalled(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS("testdata")); err != nil {
		t.Fatal(err)
	}
	return &project{t: t, dir: dir, dbURL: dbURL, cfg: cfg}
}

// useMigrations replaces the app's migrations with those in
// testdata/variants/<variant>, leaving out the files named in except.
func (p *project) useMigrations(variant string, except ...string) {
	p.t.Helper()
	old, _ := filepath.Glob(filepath.Join(p.dir, "app", "migrations", "0*.py"))
	for _, f := range old {
		if err := os.Remove(f); err != nil {
			p.t.Fatal(err)
		}
	}
	p.addMigrations(variant, except...)
}

// addMigrations copies testdata/variants/<variant>/*.py into the app's
// migrations, leaving out the files named in except.
func (p *project) addMigrations(variant string, except ...string) {
	p.t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "variants", variant, "*.py"))
	if err != nil || len(files) == 0 {
		p.t.Fatalf("no migrations in variant %s (%v)", variant, err)
	}
	for _, f := range files {
		if slices.Contains(except, filepath.Base(f)) {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			p.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p.dir, "app", "migrations", filepath.Base(f)), b, 0o644); err != nil {
			p.t.Fatal(err)
		}
	}
}

// edit replaces old with new in the project's file rel, which must contain
// old exactly once.
func (p *project) edit(rel, old, new string) {
	p.t.Helper()
	path := filepath.Join(p.dir, rel)
	b, err := os.ReadFile(path)
	if err != nil {
		p.t.Fatal(err)
	}
	if n := strings.Count(string(b), old); n != 1 {
		p.t.Fatalf("%s contains %q %d times, want once", rel, old, n)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(b), old, new, 1)), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// env is the environment of every command: the database for Django and
// refresherd, and the binary and config the test hooks run.
func (p *project) env() []string {
	var env []string
	for _, e := range os.Environ() {
		name, _, _ := strings.Cut(e, "=")
		if name != "DATABASE_URL" && name != "DATABASE_DIRECT_URL" && name != "DJANGO_SETTINGS_MODULE" {
			env = append(env, e)
		}
	}
	return append(env,
		"DATABASE_URL="+p.dbURL,
		"REFRESHERD="+daemontest.Binary(p.t),
		"REFRESHERD_CONFIG="+p.cfg,
		"PYTHONDONTWRITEBYTECODE=1",
	)
}

// result is a finished command.
type result struct {
	cmd            string
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return r.cmd + ": exit " + strconv.Itoa(r.code) + "\n--- stdout:\n" + r.stdout + "--- stderr:\n" + r.stderr
}

func (p *project) run(name string, args ...string) result {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, name, args...)
	c.Dir = p.dir
	c.Env = p.env()
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	r := result{cmd: filepath.Base(name) + " " + strings.Join(args, " "), stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		p.t.Fatalf("%s: %v\n%s", r.cmd, err, r)
	}
	return r
}

// manage runs `python3 manage.py ARGS`.
func (p *project) manage(args ...string) result {
	p.t.Helper()
	return p.run(python, append([]string{"manage.py"}, args...)...)
}

// mustManage runs `python3 manage.py ARGS` and fails the test unless it
// exits 0.
func (p *project) mustManage(args ...string) result {
	p.t.Helper()
	r := p.manage(args...)
	if r.code != 0 {
		p.t.Fatal(r)
	}
	return r
}

// refresherd runs the binary with the project's config and database.
func (p *project) refresherd(command string) result {
	p.t.Helper()
	return p.run(daemontest.Binary(p.t), command, "--config", p.cfg)
}

// mustRefresh runs `refresherd refresh` and fails the test unless the one
// view was refreshed.
func (p *project) mustRefresh() {
	p.t.Helper()
	r := p.refresherd("refresh")
	if r.code != 0 || r.stderr != "" || !strings.HasPrefix(r.stdout, view+" refreshed in ") {
		p.t.Fatal(r)
	}
}

// wantFailure fails the test unless r exited 1 with every one of msgs in its
// stderr.
func wantFailure(t *testing.T, r result, msgs ...string) {
	t.Helper()
	if r.code != 1 {
		t.Fatalf("want exit 1 with %q: %s", msgs, r)
	}
	for _, m := range msgs {
		if !strings.Contains(r.stderr, m) {
			t.Fatalf("want %q in stderr: %s", m, r)
		}
	}
}

// readSummary reads every row of ChargeSummary through Django, which fails
// while the relation does not exist.
const readSummary = "from app.models import ChargeSummary; print(len(list(ChargeSummary.objects.all())))"

// relkind is the summary's pg_class.relkind, "" when it does not exist.
func relkind(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var kind *string
	err := pool.QueryRow(context.Background(),
		`SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)`, view).Scan(&kind)
	if errors.Is(err, pgx.ErrNoRows) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return *kind
}

// newPool opens a pool on url, closed at cleanup.
func newPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// load fills the app's empty tables with n demo charges. demodata's schema
// is Django's (same constraint and index names), which Load relies on.
func load(t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := demodata.Load(ctx, pool, demodata.DefaultSize(n)); err != nil {
		t.Fatal(err)
	}
}

// djangoReads is the output of the project's summary_reads command: the
// rows of each query docs/django.md shows.
type djangoReads struct {
	DataAsOf *string `json:"data_as_of"`
	Month    [][]any `json:"month"`
	JobName  [][]any `json:"job_name"`
	User     [][]any `json:"user"`
	NoJob    [][]any `json:"no_job"`
}

// rowKey renders a row as "id|user_id|job_id|month|hardware|software" with
// "null" for a NULL job, from Django's JSON and from SQL alike.
func rowKey(row []any) string {
	parts := make([]string, len(row))
	for i, v := range row {
		switch v := v.(type) {
		case nil:
			parts[i] = "null"
		case json.Number:
			parts[i] = v.String()
		case string:
			parts[i] = v
		default:
			parts[i] = fmt.Sprint(v)
		}
	}
	return strings.Join(parts, "|")
}

// checkReads runs docs/django.md's queries through Django (filter by month,
// by job__name, by user ordered by -month, job__isnull) and fails the test
// unless each returns exactly the rows of the aggregate over the current
// data, computed in SQL, and none of them is empty; and unless Django's
// data_as_of() equals the status table's. The data must not change
// meanwhile. user is the user whose rows are read.
func checkReads(t *testing.T, p *project, pool *pgxpool.Pool, user int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var month time.Time
	if err := pool.QueryRow(ctx, `SELECT month FROM app_charge GROUP BY month ORDER BY count(*) DESC, month LIMIT 1`).Scan(&month); err != nil {
		t.Fatal(err)
	}
	const jobName = "Test Job"

	r := p.mustManage("summary_reads", "--month", month.Format(time.DateOnly), "--job-name", jobName,
		"--user", strconv.FormatInt(user, 10))
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.UseNumber()
	var got djangoReads
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("summary_reads output: %v\n%s", err, r)
	}

	truth := func(where string, args ...any) []string {
		rows, err := pool.Query(ctx, `SELECT s.id, s.user_id::text, coalesce(s.job_id::text, 'null'), s.month::text,
       s.hardware::text, s.software::text
FROM (`+demodata.SummaryQuery+`) s WHERE `+where+` ORDER BY s.id`, args...)
		if err != nil {
			t.Fatal(err)
		}
		keys, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (string, error) {
			var f [6]string
			err := row.Scan(&f[0], &f[1], &f[2], &f[3], &f[4], &f[5])
			return strings.Join(f[:], "|"), err
		})
		if err != nil {
			t.Fatal(err)
		}
		return keys
	}
	compare := func(name string, django [][]any, want []string) {
		t.Helper()
		if len(want) == 0 {
			t.Fatalf("%s: the aggregate has no rows: the check would be vacuous", name)
		}
		keys := make([]string, len(django))
		for i, row := range django {
			keys[i] = rowKey(row)
		}
		slices.Sort(keys)
		if !slices.Equal(keys, want) {
			t.Errorf("%s: Django read %d rows, the aggregate has %d; Django:\n%s\naggregate:\n%s",
				name, len(keys), len(want), strings.Join(keys, "\n"), strings.Join(want, "\n"))
		}
	}
	compare("filter(month=...)", got.Month, truth("s.month = $1", month))
	compare("filter(job__name=...)", got.JobName, truth("s.job_id IN (SELECT id FROM app_job WHERE name = $1)", jobName))
	compare("filter(user=...)", got.User, truth("s.user_id = $1", user))
	compare("filter(job__isnull=True)", got.NoJob, truth("s.job_id IS NULL"))
	for i := 1; i < len(got.User); i++ {
		if got.User[i][3].(string) > got.User[i-1][3].(string) {
			t.Errorf("filter(user=...).order_by(\"-month\"): row %d's month %v after %v", i, got.User[i][3], got.User[i-1][3])
		}
	}

	var asOf *time.Time
	if err := pool.QueryRow(ctx, `SELECT data_as_of FROM refresherd.view_status WHERE view_name = $1`, view).Scan(&asOf); err != nil {
		t.Fatal(err)
	}
	if asOf == nil || got.DataAsOf == nil {
		t.Fatalf("data_as_of: Django read %v, the status table has %v", got.DataAsOf, asOf)
	}
	djangoAsOf, err := time.Parse(time.RFC3339Nano, *got.DataAsOf)
	if err != nil {
		t.Fatal(err)
	}
	if !djangoAsOf.Equal(*asOf) {
		t.Errorf("data_as_of: Django read %v, the status table has %v", djangoAsOf, *asOf)
	}
}

// parseID parses the id a Django shell snippet printed.
func parseID(stdout string) (int64, error) {
	id, err := strconv.ParseInt(strings.TrimSpace(stdout), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("want an id on stdout: %w", err)
	}
	return id, nil
}

package djangotest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/refresherd/refresherd/internal/daemontest"
	"github.com/refresherd/refresherd/internal/demodata"
	"github.com/refresherd/refresherd/internal/pgtest"
)

// incrementalStrategy runs the deploy-order test also against a summary
// kept by `strategy: incremental` (a table, not a materialized view).
const incrementalStrategy = true

// strategies are the summary strategies TestDeployOrder runs.
func strategies() []string {
	if incrementalStrategy {
		return []string{"full", "incremental"}
	}
	return []string{"full"}
}

// configFor is the refresherd config of a strategy: the shipped one for
// full, the same view with `strategy: incremental` otherwise.
func configFor(t *testing.T, strategy string) string {
	if strategy == "full" {
		return daemontest.ShippedConfig()
	}
	return daemontest.WriteConfig(t, "database:\n  url: ${DATABASE_URL}\nlog:\n  format: json\nviews:\n"+
		daemontest.SummaryView(demodata.SummaryQuery)+"    strategy: "+strategy+"\n")
}

// addChargesWithDjango writes, through Django's ORM as the app would, a new
// user with charges on "Test Job" and without a job, and returns the user's
// id.
const addChargesWithDjango = `
from datetime import date
from decimal import Decimal
from app.models import Charge, Job, User
user = User.objects.create(name="Django user")
job = Job.objects.get(name="Test Job")
Charge.objects.create(type="hw", amount=Decimal("7.00"), month=date(2026, 11, 1), user=user, job=job)
Charge.objects.create(type="sw", amount=Decimal("3.50"), month=date(2026, 11, 1), user=user, job=job)
Charge.objects.create(type="sw", amount=Decimal("1.25"), month=date(2026, 10, 1), user=user)
print(user.pk)
`

// TestDeployOrder follows docs/django.md's deploy order on a fresh database,
// with the daemon running all along (deployed first): migrate, then
// `refresherd check` and `refresherd refresh`, then the app, which writes
// charges through Django that the daemon picks up. Django's queries then
// return exactly the aggregate over the loaded data and the app's charges,
// and data_as_of() the status table's. On the way: `refresherd refresh` before
// migrate fails (the summary's source table does not exist yet), and the
// daemon, which fails its set-up until migrate has run, recovers by itself.
func TestDeployOrder(t *testing.T) {
	t.Parallel()
	for _, strategy := range strategies() {
		t.Run(strategy, func(t *testing.T) {
			t.Parallel()
			url := pgtest.NewDB(t)
			pool := newPool(t, url)
			p := newProject(t, url, configFor(t, strategy)) // first: it may install Django
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()

			d := daemontest.StartT(t, daemontest.Options{Args: []string{"--config", p.cfg}, Env: []string{"DATABASE_URL=" + url}})
			if _, err := d.WaitLog(ctx, func(l map[string]any) bool { return l["msg"] == "view set-up failed; will retry" }); err != nil {
				t.Fatal(err)
			}
			wantFailure(t, p.refresherd("refresh"), `set up public.app_chargesummary: `,
				`relation "public.app_charge" does not exist (SQLSTATE 42P01)`)

			p.mustManage("migrate")
			load(t, pool, 3000) // the data a running app would have written
			checkAfterMigrate(ctx, t, p, d)
			p.mustRefresh()
			if _, err := d.WaitLog(ctx, func(l map[string]any) bool { return l["msg"] == "view set-up succeeded after failures" }); err != nil {
				t.Fatal(err)
			}
			if err := d.WaitIdle(ctx, view); err != nil {
				t.Fatal(err)
			}
			if err := daemontest.Settled(ctx, pool, view); err != nil {
				t.Fatal(err)
			}

			r := p.mustManage("shell", "-c", addChargesWithDjango)
			user, err := parseID(r.stdout)
			if err != nil {
				t.Fatal(err, r)
			}
			settle(ctx, t, d, pool)
			checkReads(t, p, pool, user)
		})
	}
}

// checkAfterMigrate runs `refresherd check` right after migrate, with the
// daemon retrying its set-up meanwhile. It must find no problem but one
// the daemon itself is clearing: when the daemon's retry came first, the
// check may see the view it has just created and not yet populated (seen
// on a loaded machine). That is accepted only if the daemon did create it
// empty and is populating it.
func checkAfterMigrate(ctx context.Context, t *testing.T, p *project, d *daemontest.Proc) {
	t.Helper()
	r := p.refresherd("check")
	if r.code == 0 && !strings.Contains(r.stdout, "PROBLEM") {
		return
	}
	for _, line := range strings.Split(r.stdout, "\n") {
		if strings.HasPrefix(line, "PROBLEM") && !strings.Contains(line, "is not populated") {
			t.Fatal(r)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := d.WaitLog(wctx, func(l map[string]any) bool { return l["msg"] == "created the view empty; populating it" }); err != nil {
		t.Fatalf("check found the view not populated, and the daemon is not populating it (%v): %v", err, r)
	}
	t.Logf("check ran while the daemon was populating the view it had just created: %s", r.stdout)
}

// settle waits until the summary equals the aggregate and the daemon is idle,
// so that no refresh changes data_as_of while checkReads looks.
func settle(ctx context.Context, t *testing.T, d *daemontest.Proc, pool *pgxpool.Pool) {
	t.Helper()
	if err := daemontest.Settled(ctx, pool, view); err != nil {
		t.Fatal(err)
	}
	if err := d.WaitIdle(ctx, view); err != nil {
		t.Fatal(err)
	}
}

// TestFakeInitial: with ChargeSummary unmanaged from its first migration (as
// docs/django.md has it), `migrate --fake-initial` needs no summary: Django
// skips unmanaged models when it decides whether an initial migration was
// applied. On a fresh database it applies 0001; on a database whose tables
// predate the migrations (where plain migrate fails) it fakes 0001; the
// summary does not exist in either, and refresherd creates it afterwards.
func TestFakeInitial(t *testing.T) {
	t.Parallel()
	t.Run("fresh", func(t *testing.T) {
		t.Parallel()
		url := pgtest.NewDB(t)
		pool := newPool(t, url)
		p := newProject(t, url, daemontest.ShippedConfig())
		r := p.mustManage("migrate", "--fake-initial")
		if !strings.Contains(r.stdout, "Applying app.0001_initial... OK") {
			t.Fatal(r)
		}
		if k := relkind(t, pool); k != "" {
			t.Fatalf("summary relkind %q after migrate, want none", k)
		}
		// The app, started before the summary exists:
		wantFailure(t, p.manage("shell", "-c", readSummary),
			`django.db.utils.ProgrammingError: relation "app_chargesummary" does not exist`)
		p.mustRefresh()
		if k := relkind(t, pool); k != "m" {
			t.Fatalf("summary relkind %q after refresh, want m", k)
		}
	})
	t.Run("adopted", func(t *testing.T) {
		t.Parallel()
		url := pgtest.NewDB(t)
		pool := newPool(t, url)
		if err := demodata.CreateSchema(context.Background(), pool); err != nil {
			t.Fatal(err)
		}
		load(t, pool, 2000)
		p := newProject(t, url, daemontest.ShippedConfig())
		wantFailure(t, p.manage("migrate"), `django.db.utils.ProgrammingError: relation "app_job" already exists`)
		r := p.mustManage("migrate", "--fake-initial")
		if !strings.Contains(r.stdout, "Applying app.0001_initial... FAKED") {
			t.Fatal(r)
		}
		if k := relkind(t, pool); k != "" {
			t.Fatalf("summary relkind %q after migrate, want none", k)
		}
		p.mustRefresh()
		checkReads(t, p, pool, 1)
	})
}

// TestFakeInitialManagedHistory: where `migrate --fake-initial` does fail.
// ChargeSummary was a managed model in the app's initial migration and a
// later one made it unmanaged (testdata/variants/managed-history, as
// makemigrations wrote them). --fake-initial then wants a table
// app_chargesummary, and Django does not count a materialized view as a
// table: it applies 0001 for real and fails, with or without the summary,
// so creating the summary first does not help; faking 0001 explicitly does.
// On a fresh database the same history creates a plain table
// app_chargesummary that refresherd refuses to replace, until a migration
// drops it (0003).
func TestFakeInitialManagedHistory(t *testing.T) {
	t.Parallel()
	t.Run("adopted", func(t *testing.T) {
		t.Parallel()
		url := pgtest.NewDB(t)
		pool := newPool(t, url)
		if err := demodata.CreateSchema(context.Background(), pool); err != nil {
			t.Fatal(err)
		}
		load(t, pool, 2000)
		p := newProject(t, url, daemontest.ShippedConfig())
		p.useMigrations("managed-history")

		const exists = `django.db.utils.ProgrammingError: relation "app_job" already exists`
		wantFailure(t, p.manage("migrate", "--fake-initial"), exists)
		p.mustRefresh() // the summary first: no help
		wantFailure(t, p.manage("migrate", "--fake-initial"), exists)

		r := p.mustManage("migrate", "--fake", "app", "0001_initial")
		if !strings.Contains(r.stdout, "Applying app.0001_initial... FAKED") {
			t.Fatal(r)
		}
		p.mustManage("migrate")
		if k := relkind(t, pool); k != "m" {
			t.Fatalf("summary relkind %q after migrate, want m (0003 must leave the view alone)", k)
		}
		p.mustRefresh()
	})
	t.Run("fresh", func(t *testing.T) {
		t.Parallel()
		url := pgtest.NewDB(t)
		pool := newPool(t, url)
		p := newProject(t, url, daemontest.ShippedConfig())
		p.useMigrations("managed-history", "0003_drop_chargesummary_table.py")
		p.mustManage("migrate")
		if k := relkind(t, pool); k != "r" {
			t.Fatalf("summary relkind %q after migrate, want r (Django's table)", k)
		}
		wantFailure(t, p.refresherd("refresh"),
			`public.app_chargesummary exists but is not a materialized view (relkind "r"): refresherd will not replace it`)

		p.addMigrations("managed-history")
		p.mustManage("migrate")
		p.mustRefresh()
		if k := relkind(t, pool); k != "m" {
			t.Fatalf("summary relkind %q after 0003 and refresh, want m", k)
		}
	})
}

// TestColumnTypeMigration: a migration that changes the type of a column the
// summary reads (app_charge.amount, max_digits 8 to 10) fails while the
// summary exists. Dropping the summary in that migration and running
// `refresherd refresh` after migrate, as docs/django.md says, works with the
// daemon running: its refreshes fail while the summary is gone, and it goes
// on refreshing the re-created one.
func TestColumnTypeMigration(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDB(t)
	pool := newPool(t, url)
	p := newProject(t, url, daemontest.ShippedConfig())
	p.mustManage("migrate")
	load(t, pool, 2000)
	p.mustRefresh()
	d := daemontest.StartT(t, daemontest.Options{Args: []string{"--config", p.cfg}, Env: []string{"DATABASE_URL=" + url}})

	p.edit("app/models.py", "amount = models.DecimalField(max_digits=8,", "amount = models.DecimalField(max_digits=10,")
	p.addMigrations("widen-amount") // as makemigrations writes it
	wantFailure(t, p.manage("migrate"),
		"django.db.utils.NotSupportedError: cannot alter type of a column used by a view or rule",
		`DETAIL:  rule _RETURN on materialized view app_chargesummary depends on column "amount"`)

	p.addMigrations("widen-amount-drop") // the same, dropping the summary first
	p.mustManage("migrate")
	if k := relkind(t, pool); k != "" {
		t.Fatalf("summary relkind %q after the migration, want none", k)
	}
	// Until `refresherd refresh`, the daemon's refreshes fail.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := pool.Exec(ctx, `INSERT INTO app_charge (type, amount, month, user_id) VALUES ('hw', 1, '2026-11-01', 1)`); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WaitLog(ctx, func(l map[string]any) bool {
		msg, _ := l["error"].(string)
		return l["msg"] == "refresh failed; the view keeps its previous data" &&
			msg == "refresh public.app_chargesummary: materialized view public.app_chargesummary does not exist"
	}); err != nil {
		t.Fatal(err)
	}
	p.mustRefresh()

	r := p.mustManage("shell", "-c", addChargesWithDjango)
	user, err := parseID(r.stdout)
	if err != nil {
		t.Fatal(err, r)
	}
	settle(ctx, t, d, pool)
	checkReads(t, p, pool, user)
}

package djangotest

import (
	"strings"
	"testing"

	"github.com/refresherd/refresherd/internal/daemontest"
	"github.com/refresherd/refresherd/internal/pgtest"
)

// TestDjangoTestRunner runs the project's tests (testdata/app/tests.py:
// reading the summary, a REFRESH in a TestCase's transaction, `refresherd
// refresh` in a TransactionTestCase) with Django's test runner. With the
// runner docs/django.md shows (testdata/project/testrunner.py), which runs
// the refresherd binary after migrate in each test database, they pass, also
// with --parallel, whose cloned databases must have the summary too; with
// Django's own runner they fail: the test database has no summary.
func TestDjangoTestRunner(t *testing.T) {
	t.Parallel()
	p := newProject(t, pgtest.NewDB(t), daemontest.ShippedConfig())

	r := p.manage("test", "--noinput", "--parallel", "2", "-v", "2")
	if r.code != 0 || !strings.Contains(r.stderr, "\nRan 3 tests in ") || !strings.Contains(r.stderr, "\nOK\n") {
		t.Fatal(r)
	}
	if strings.Count(r.stderr, "Cloning test database") != 2 {
		t.Fatalf("want the tests to run in 2 cloned databases: %s", r)
	}

	r = p.manage("test", "--noinput", "--testrunner", "django.test.runner.DiscoverRunner")
	wantFailure(t, r, `django.db.utils.ProgrammingError: relation "app_chargesummary" does not exist`, "FAILED (errors=3)")
}

// TestPytestDjango runs testdata/pytest_tests with pytest-django: with the
// conftest.py fixture docs/django.md shows, the summary exists in the test
// database and `refresherd refresh` fills it; without it (--noconftest) the
// test database has no summary.
func TestPytestDjango(t *testing.T) {
	t.Parallel()
	p := newProject(t, pgtest.NewDB(t), daemontest.ShippedConfig())

	r := p.run(python, "-m", "pytest", "-p", "no:cacheprovider", "-q")
	if r.code != 0 || !strings.Contains(r.stdout, "2 passed") {
		t.Fatal(r)
	}

	r = p.run(python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--noconftest", "-k", "test_summary_exists")
	if r.code != 1 || !strings.Contains(r.stdout, `relation "app_chargesummary" does not exist`) || !strings.Contains(r.stdout, "1 failed") {
		t.Fatal(r)
	}
}

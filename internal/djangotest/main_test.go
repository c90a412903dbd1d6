// Package djangotest checks docs/django.md with real Django (Debian's
// python3-django, installed with apt-get when missing) against real
// PostgreSQL: the Django project in testdata/ has the app's managed models
// (User, Job, Charge, tables created by its own migration) and the unmanaged
// ChargeSummary exactly as the doc shows it. The tests run the deploy order
// the doc gives, the orders it warns about (asserting the errors Django and
// PostgreSQL give), and the test-database recipes (Django's test runner and
// pytest-django) calling the refresherd binary built from this tree.
package djangotest

import (
	"testing"

	"github.com/refresherd/refresherd/internal/daemontest"
)

func TestMain(m *testing.M) { daemontest.Main(m) }

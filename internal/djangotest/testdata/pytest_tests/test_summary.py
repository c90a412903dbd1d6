from datetime import date

import pytest

from app.models import ChargeSummary
from app.tests import add_charges, expected, summary_of
from project.testrunner import refresh_summaries


@pytest.mark.django_db
def test_summary_exists():
    # Fails with "relation "app_chargesummary" does not exist" without the conftest fixture.
    assert list(ChargeSummary.objects.filter(month=date(1999, 1, 1))) == []


@pytest.mark.django_db(transaction=True)
def test_refresherd_refresh():
    user, job = add_charges()
    assert summary_of(user) == []
    refresh_summaries()
    assert summary_of(user) == expected(user, job)

from datetime import date
from decimal import Decimal

from django.db import connection
from django.test import TestCase, TransactionTestCase

from project.testrunner import refresh_summaries

from .models import Charge, ChargeSummary, Job, User

MARCH = date(2026, 3, 1)


def add_charges():
    """Three charges of a new user: two with a job, one without."""
    user = User.objects.create(name="Alice")
    job = Job.objects.create(name="Test Job")
    Charge.objects.create(type="hw", amount=Decimal("10.50"), month=MARCH, user=user, job=job)
    Charge.objects.create(type="sw", amount=Decimal("2.25"), month=MARCH, user=user, job=job)
    Charge.objects.create(type="hw", amount=Decimal("1.00"), month=MARCH, user=user)
    return user, job


def expected(user, job):
    return [
        ("%d:%d:2026-03-01" % (user.pk, job.pk), job.pk, Decimal("10.50"), Decimal("2.25")),
        ("%d:-:2026-03-01" % user.pk, None, Decimal("1.00"), Decimal("0.00")),
    ]


def summary_of(user):
    return [
        (r.id, r.job_id, r.hardware, r.software)
        for r in ChargeSummary.objects.filter(user=user, month=MARCH).order_by("job_id")
    ]


class SummaryInTestDatabase(TestCase):
    def test_summary_exists(self):
        # Fails with "relation "app_chargesummary" does not exist" without the runner.
        self.assertEqual(list(ChargeSummary.objects.filter(month=date(1999, 1, 1))), [])

    def test_refresh_in_the_test_transaction(self):
        # A TestCase never commits its rows, so refresherd (another connection) cannot see
        # them; a plain REFRESH on the test's own connection does.
        user, job = add_charges()
        self.assertEqual(summary_of(user), [])
        with connection.cursor() as cursor:
            cursor.execute("REFRESH MATERIALIZED VIEW public.app_chargesummary")
        self.assertEqual(summary_of(user), expected(user, job))


class SummaryAfterCommit(TransactionTestCase):
    def test_refresherd_refresh(self):
        user, job = add_charges()  # committed: TransactionTestCase
        self.assertEqual(summary_of(user), [])
        refresh_summaries()
        self.assertEqual(summary_of(user), expected(user, job))
        self.assertEqual(ChargeSummary.objects.filter(job__name="Test Job", user=user).count(), 1)
        self.assertEqual(ChargeSummary.objects.filter(job__isnull=True, user=user).count(), 1)

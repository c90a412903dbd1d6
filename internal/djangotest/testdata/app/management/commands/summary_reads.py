"""Runs docs/django.md's ChargeSummary queries and prints their rows as JSON.

internal/djangotest compares them with the aggregate computed in SQL.
"""
import json
from datetime import date

from django.core.management.base import BaseCommand

from app.freshness import data_as_of
from app.models import ChargeSummary, User


def rows(queryset):
    return [
        [r.id, r.user_id, r.job_id, r.month.isoformat(), str(r.hardware), str(r.software)]
        for r in queryset
    ]


class Command(BaseCommand):
    help = "Print the results of docs/django.md's ChargeSummary queries as JSON."

    def add_arguments(self, parser):
        parser.add_argument("--month", type=date.fromisoformat, required=True)
        parser.add_argument("--job-name", required=True)
        parser.add_argument("--user", type=int, required=True)

    def handle(self, *args, **options):
        as_of = data_as_of()  # first: see its docstring
        user = User.objects.get(pk=options["user"])
        result = {
            "data_as_of": as_of.isoformat() if as_of else None,
            "month": rows(ChargeSummary.objects.filter(month=options["month"])),
            "job_name": rows(ChargeSummary.objects.filter(job__name=options["job_name"])),
            "user": rows(ChargeSummary.objects.filter(user=user).select_related("job").order_by("-month")),
            "no_job": rows(ChargeSummary.objects.filter(job__isnull=True)),
        }
        self.stdout.write(json.dumps(result))

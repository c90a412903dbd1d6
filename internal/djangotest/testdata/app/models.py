from django.db import models


class User(models.Model):
    name = models.CharField(max_length=100)


class Job(models.Model):
    name = models.CharField(max_length=100)


class Charge(models.Model):
    TYPES = [("hw", "hardware"), ("sw", "software")]

    type = models.CharField(max_length=2, choices=TYPES)
    amount = models.DecimalField(max_digits=8, decimal_places=2)
    month = models.DateField()
    user = models.ForeignKey(User, on_delete=models.CASCADE)
    job = models.ForeignKey(Job, null=True, on_delete=models.CASCADE)

    class Meta:
        constraints = [
            models.CheckConstraint(check=models.Q(type__in=["hw", "sw"]), name="app_charge_type_valid"),
        ]


class ChargeSummary(models.Model):
    """Read-only: refresherd creates and refreshes public.app_chargesummary."""

    # A stable text key built from the group, "<user_id>:<job_id or ->:<month>", e.g.
    # "42:7:2026-03-01" or "42:-:2026-03-01". It survives refreshes, so an object keeps its
    # identity (row_number() would renumber rows on every refresh). The column is text;
    # max_length only matters to Django's validation (the longest key is ~50 characters).
    id = models.CharField(primary_key=True, max_length=64)
    # No database constraints on a materialized view: db_constraint=False. DO_NOTHING, because
    # Django must never try to cascade a delete into a view.
    user = models.ForeignKey("app.User", on_delete=models.DO_NOTHING, db_constraint=False)
    job = models.ForeignKey("app.Job", null=True, on_delete=models.DO_NOTHING, db_constraint=False)
    month = models.DateField()
    hardware = models.DecimalField(max_digits=19, decimal_places=2)
    software = models.DecimalField(max_digits=19, decimal_places=2)

    class Meta:
        managed = False  # no migrations: refresherd owns the view
        db_table = "app_chargesummary"

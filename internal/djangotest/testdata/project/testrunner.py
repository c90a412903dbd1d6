"""Test databases with refresherd's summaries.

Django's test runner creates test_<NAME> and runs the migrations in it, which create no
summary (an unmanaged model has no table): this runner runs `refresherd refresh` there right
after migrate. Settings: TEST_RUNNER = "project.testrunner.RefresherdTestRunner", and in the
environment REFRESHERD (the binary, default "refresherd" on PATH) and REFRESHERD_CONFIG (the
config file, default "config.yaml").
"""
import os
import subprocess
from urllib.parse import quote, urlencode

from django.apps import apps
from django.db import connections
from django.db.models.signals import post_migrate
from django.test.runner import DiscoverRunner


def database_url(alias="default"):
    """A postgres:// URL of the database that connection `alias` uses now."""
    s = connections[alias].settings_dict
    host, query = s["HOST"] or "localhost", ""
    if host.startswith("/"):  # a Unix socket directory
        host, query = "", "?" + urlencode({"host": host})
    return "postgres://%s:%s@%s:%s/%s%s" % (
        quote(s["USER"], safe=""),
        quote(s["PASSWORD"], safe=""),
        host,
        s["PORT"] or 5432,
        quote(s["NAME"], safe=""),
        query,
    )


def refresh_summaries(alias="default"):
    """Run `refresherd refresh` on that database: it creates refresherd's schema and every
    configured summary that is missing, then refreshes them from the committed data."""
    subprocess.run(
        [
            os.environ.get("REFRESHERD", "refresherd"),
            "refresh",
            "--config",
            os.environ.get("REFRESHERD_CONFIG", "config.yaml"),
        ],
        env={**os.environ, "DATABASE_URL": database_url(alias)},
        stdout=subprocess.DEVNULL,
        check=True,
    )


def _refresh_after_migrate(sender, using, **kwargs):
    refresh_summaries(using)


class RefresherdTestRunner(DiscoverRunner):
    def setup_databases(self, **kwargs):
        # Refresh right after migrate has run in a test database, before Django clones it
        # for --parallel: the clones get the summaries too. With --keepdb, migrate runs
        # again and so does the refresh.
        app = apps.get_app_config("app")  # the app whose models read the summaries
        post_migrate.connect(_refresh_after_migrate, sender=app, dispatch_uid="refresherd")
        try:
            return super().setup_databases(**kwargs)
        finally:
            post_migrate.disconnect(sender=app, dispatch_uid="refresherd")

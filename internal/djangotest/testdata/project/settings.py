"""A minimal Django project whose app reads refresherd's charge summary.

The database comes from DATABASE_URL, the variable refresherd reads too, e.g.
postgres://app@127.0.0.1:5432/app.
"""
import os
from urllib.parse import unquote, urlsplit

_url = urlsplit(os.environ["DATABASE_URL"])

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": _url.hostname or "",
        "PORT": str(_url.port or ""),
        "NAME": unquote(_url.path.lstrip("/")),
        "USER": unquote(_url.username or ""),
        "PASSWORD": unquote(_url.password or ""),
    }
}

INSTALLED_APPS = ["app"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
SECRET_KEY = "refresherd-django-test"  # a test project, never deployed
USE_TZ = True
ROOT_URLCONF = "project.urls"

# Test databases get refresherd's summaries (docs/django.md).
TEST_RUNNER = "project.testrunner.RefresherdTestRunner"

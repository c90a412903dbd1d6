import pytest

from project.testrunner import refresh_summaries


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test database, plus refresherd's summaries."""
    with django_db_blocker.unblock():
        refresh_summaries()

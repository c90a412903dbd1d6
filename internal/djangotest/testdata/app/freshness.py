from django.db import connection


def data_as_of(view="public.app_chargesummary"):
    """The time the view's data is as of (an aware datetime), or None if never refreshed.

    Call it *before* reading the rows (or in the same REPEATABLE READ transaction): a refresh
    can commit in between, and then the rows are newer than the time shown, never older.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT refresherd.data_as_of(%s)", [view])
        return cursor.fetchone()[0]

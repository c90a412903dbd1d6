from django.db import migrations

# 0001 created ChargeSummary as a managed model: on a database migrated from scratch
# (a new environment, every test database) it made a plain table app_chargesummary, which
# refresherd will not replace with its view. Drop that table; leave refresherd's view alone.
DROP_TABLE = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_class WHERE oid = to_regclass('public.app_chargesummary') AND relkind = 'r') THEN
        DROP TABLE public.app_chargesummary;
    END IF;
END
$$
"""


class Migration(migrations.Migration):

    dependencies = [
        ('app', '0002_alter_chargesummary_options'),
    ]

    operations = [
        migrations.RunSQL(DROP_TABLE, migrations.RunSQL.noop),
    ]

"""rest_framework.authtoken is gone: its table held every key in plain text, readable by
staff in the admin, so those keys are dropped with it rather than carried over (a digest of a
key already exposed would keep an exposed key working). Make new ones: `manage.py
create_api_key <user>` or POST /api/keys/."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("agents", "0005_apikey")]

    operations = [
        migrations.RunSQL(
            [
                "DROP TABLE IF EXISTS authtoken_token",
                # so that adding the app back would create its table again
                "DELETE FROM django_migrations WHERE app = 'authtoken'",
            ],
            reverse_sql=migrations.RunSQL.noop,
        ),
    ]

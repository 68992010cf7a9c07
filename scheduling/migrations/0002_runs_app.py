"""Schedules and fires point at threads and runs in their new app: the same tables (renamed by
agents.0009), so only Django's idea of them changes."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0001_initial"),
        ("scheduling", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="fire",
                    name="run",
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="fires", to="runs.run"),
                ),
                migrations.AlterField(
                    model_name="schedule",
                    name="thread",
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="schedules", to="runs.thread"),
                ),
            ],
        ),
    ]

"""Step records and workflow runs point at the run in its new app: the same table (renamed by
agents.0009), so only Django's idea of it changes."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0001_initial"),
        ("workflows", "0002_workflowrun"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="steprun",
                    name="run",
                    field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="steps", to="runs.run"),
                ),
                migrations.AlterField(
                    model_name="workflowrun",
                    name="run",
                    field=models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name="workflow_run", serialize=False, to="runs.run"),
                ),
            ],
        ),
    ]

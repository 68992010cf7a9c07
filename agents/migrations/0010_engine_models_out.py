"""The engine's models leave agents (runs.0001 has them); the links of 0008 point at them there."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0009_engine_columns_out"),
        ("runs", "0001_initial"),
        ("scheduling", "0002_runs_app"),
        ("workflows", "0003_runs_app"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="threadagent",
                    name="thread",
                    field=models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name="agent_link", serialize=False, to="runs.thread"),
                ),
                migrations.AlterField(
                    model_name="runagent",
                    name="run",
                    field=models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name="agent_link", serialize=False, to="runs.run"),
                ),
                migrations.DeleteModel(name="Message"),
                migrations.DeleteModel(name="Run"),
                migrations.DeleteModel(name="Thread"),
            ],
        ),
    ]

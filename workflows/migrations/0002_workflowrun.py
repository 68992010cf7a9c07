"""A workflow run's workflow, definition and inputs move from columns of the run to a row of
workflows' own (issue 12: the engine's tables point at no other app's)."""

import django.db.models.deletion
from django.db import migrations, models


def move_out(apps, schema_editor):
    Run, WorkflowRun = apps.get_model("agents", "Run"), apps.get_model("workflows", "WorkflowRun")
    started = Run.objects.exclude(definition=None).values_list("pk", "workflow", "definition", "inputs")
    for pk, workflow, definition, inputs in started.iterator():
        WorkflowRun.objects.create(
            run_id=pk, workflow_id=workflow, definition=definition, inputs=inputs or {}
        )


def move_back(apps, schema_editor):
    Run, WorkflowRun = apps.get_model("agents", "Run"), apps.get_model("workflows", "WorkflowRun")
    for started in WorkflowRun.objects.iterator():
        Run.objects.filter(pk=started.run_id).update(
            workflow_id=started.workflow_id, definition=started.definition, inputs=started.inputs
        )


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0008_engine_links"),
        ("workflows", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="WorkflowRun",
            fields=[
                ("run", models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name="workflow_run", serialize=False, to="agents.run")),
                ("definition", models.JSONField()),
                ("inputs", models.JSONField(blank=True, default=dict)),
                ("workflow", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="started_runs", to="workflows.workflow")),
            ],
        ),
        migrations.RunPython(move_out, move_back),
    ]

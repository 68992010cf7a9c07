"""The first step of the engine's move into the runs app (issue 12): runs get their `kind`, and the
agent of each thread and run moves from a column of theirs to a row of agents' own."""

import django.db.models.deletion
from django.db import migrations, models


def mark_workflow_runs(apps, schema_editor):
    Run = apps.get_model("agents", "Run")
    Run.objects.exclude(definition=None).update(kind="workflow")


def link_agents(apps, schema_editor):
    Thread, Run = apps.get_model("agents", "Thread"), apps.get_model("agents", "Run")
    ThreadAgent, RunAgent = apps.get_model("agents", "ThreadAgent"), apps.get_model("agents", "RunAgent")
    for pk, agent in Thread.objects.exclude(agent=None).values_list("pk", "agent").iterator():
        ThreadAgent.objects.create(thread_id=pk, agent_id=agent)
    for pk, agent in Run.objects.exclude(agent=None).values_list("pk", "agent").iterator():
        RunAgent.objects.create(run_id=pk, agent_id=agent)


def unlink_agents(apps, schema_editor):
    Thread, Run = apps.get_model("agents", "Thread"), apps.get_model("agents", "Run")
    ThreadAgent, RunAgent = apps.get_model("agents", "ThreadAgent"), apps.get_model("agents", "RunAgent")
    for pk, agent in ThreadAgent.objects.values_list("thread", "agent").iterator():
        Thread.objects.filter(pk=pk).update(agent_id=agent)
    for pk, agent in RunAgent.objects.values_list("run", "agent").iterator():
        Run.objects.filter(pk=pk).update(agent_id=agent)


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0007_run_requeued"),
        ("workflows", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="run",
            name="kind",
            field=models.CharField(default="agent", max_length=20),
            preserve_default=False,
        ),
        migrations.RunPython(mark_workflow_runs, migrations.RunPython.noop),
        migrations.CreateModel(
            name="ThreadAgent",
            fields=[
                ("thread", models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name="agent_link", serialize=False, to="agents.thread")),
                ("agent", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="thread_links", to="agents.agent")),
            ],
        ),
        migrations.CreateModel(
            name="RunAgent",
            fields=[
                ("run", models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name="agent_link", serialize=False, to="agents.run")),
                ("agent", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="run_links", to="agents.agent")),
            ],
        ),
        migrations.RunPython(link_agents, unlink_agents),
    ]

"""The ledger of the runs made before it existed: each run's runs and tokens on the UTC day it
started (when its attempts saved them is not known), under its agent."""

import datetime as dt
from collections import defaultdict

from django.db import migrations


def backfill(apps, schema_editor):
    Run = apps.get_model("runs", "Run")
    RunAgent = apps.get_model("agents", "RunAgent")
    Agent = apps.get_model("agents", "Agent")
    DailyUsage = apps.get_model("usage", "DailyUsage")
    agent_of = dict(RunAgent.objects.exclude(agent=None).values_list("run_id", "agent_id"))
    names = dict(Agent.objects.values_list("pk", "name"))
    counts = defaultdict(lambda: [0, 0, 0])
    runs = Run.objects.values_list("pk", "owner_id", "created", "input_tokens", "output_tokens")
    for pk, owner_id, created, input_tokens, output_tokens in runs.iterator(chunk_size=2000):
        entry = counts[owner_id, created.astimezone(dt.UTC).date(), agent_of.get(pk, 0)]
        entry[0] += 1
        entry[1] += input_tokens
        entry[2] += output_tokens
    DailyUsage.objects.bulk_create(
        [
            DailyUsage(
                owner_id=owner_id, day=day, agent_key=agent, agent_name=names.get(agent, ""),
                runs=runs, input_tokens=input_tokens, output_tokens=output_tokens,
            )
            for (owner_id, day, agent), (runs, input_tokens, output_tokens) in counts.items()
        ],
        batch_size=1000,
    )  # fmt: skip


class Migration(migrations.Migration):
    dependencies = [
        ("usage", "0001_initial"),
        ("runs", "0004_follow_ups"),
        ("agents", "0012_approve_tools"),
    ]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop, elidable=True)]

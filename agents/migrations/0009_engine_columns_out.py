"""The engine's tables lose the columns that pointed at agents and workflows (their values are in
agents' and workflows' own rows now, 0008 and workflows.0002), and take the runs app's names."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0008_engine_links"),
        ("workflows", "0002_workflowrun"),
    ]

    operations = [
        migrations.RemoveField(model_name="run", name="agent"),
        migrations.RemoveField(model_name="run", name="workflow"),
        migrations.RemoveField(model_name="run", name="definition"),
        migrations.RemoveField(model_name="run", name="inputs"),
        migrations.RemoveField(model_name="thread", name="agent"),
        migrations.AlterModelTable(name="thread", table="runs_thread"),
        migrations.AlterModelTable(name="message", table="runs_message"),
        migrations.AlterModelTable(name="run", table="runs_run"),
    ]

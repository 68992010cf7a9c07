"""The engine's models, now the runs app's: their tables are those agents made, renamed by
agents.0009, so this migration only tells Django where they are; and their content types (what
permissions and the admin's log point at) move with them."""

import uuid

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MODELS = ["thread", "message", "run"]


def move_content_types(apps, schema_editor, source="agents", target="runs"):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label=source, model__in=MODELS).update(app_label=target)


def move_content_types_back(apps, schema_editor):
    move_content_types(apps, schema_editor, source="runs", target="agents")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("contenttypes", "0002_remove_content_type_name"),
        ("agents", "0009_engine_columns_out"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='Thread',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('title', models.CharField(blank=True, max_length=200)),
                        ('created', models.DateTimeField(auto_now_add=True)),
                        ('updated', models.DateTimeField(auto_now=True)),
                        ('owner', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='threads', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'ordering': ['-updated', '-id'],
                    },
                ),
                migrations.CreateModel(
                    name='Run',
                    fields=[
                        ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ('kind', models.CharField(max_length=20)),
                        ('status', models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('completed', 'Completed'), ('failed', 'Failed'), ('stopped', 'Stopped')], default='queued', max_length=10)),
                        ('trigger', models.CharField(choices=[('manual', 'Manual'), ('api', 'Api'), ('schedule', 'Schedule'), ('workflow', 'Workflow')], default='api', max_length=10)),
                        ('error', models.TextField(blank=True)),
                        ('attempt', models.PositiveIntegerField(default=0)),
                        ('lease_owner', models.CharField(blank=True, max_length=200)),
                        ('lease_expires', models.DateTimeField(blank=True, null=True)),
                        ('stop_requested', models.DateTimeField(blank=True, null=True)),
                        ('requeued', models.DateTimeField(blank=True, null=True)),
                        ('input_tokens', models.PositiveIntegerField(default=0)),
                        ('output_tokens', models.PositiveIntegerField(default=0)),
                        ('created', models.DateTimeField(auto_now_add=True)),
                        ('started', models.DateTimeField(blank=True, null=True)),
                        ('finished', models.DateTimeField(blank=True, db_index=True, null=True)),
                        ('owner', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='runs', to=settings.AUTH_USER_MODEL)),
                        ('retry_of', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='retries', to='runs.run')),
                        ('thread', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='runs', to='runs.thread')),
                    ],
                    options={
                        'ordering': ['-created'],
                    },
                ),
                migrations.CreateModel(
                    name='Message',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('role', models.CharField(choices=[('system', 'System'), ('user', 'User'), ('assistant', 'Assistant'), ('tool', 'Tool')], max_length=10)),
                        ('content', models.TextField(blank=True)),
                        ('tool_calls', models.JSONField(blank=True, default=list)),
                        ('tool_call_id', models.CharField(blank=True, max_length=100)),
                        ('name', models.CharField(blank=True, max_length=100)),
                        ('is_error', models.BooleanField(default=False, help_text='a tool result that is an error')),
                        ('position', models.PositiveIntegerField()),
                        ('created', models.DateTimeField(auto_now_add=True)),
                        ('run', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='messages', to='runs.run')),
                        ('thread', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='messages', to='runs.thread')),
                    ],
                    options={
                        'ordering': ['thread', 'position'],
                    },
                ),
                migrations.AddIndex(
                    model_name='run',
                    index=models.Index(fields=['status', 'lease_expires'], name='run_status_lease'),
                ),
                migrations.AddIndex(
                    model_name='run',
                    index=models.Index(fields=['owner', 'status'], name='run_owner_status'),
                ),
                migrations.AddConstraint(
                    model_name='run',
                    constraint=models.UniqueConstraint(condition=models.Q(('status__in', ['queued', 'running'])), fields=('thread',), name='run_one_active_per_thread'),
                ),
                migrations.AddConstraint(
                    model_name='message',
                    constraint=models.UniqueConstraint(fields=('thread', 'position'), name='message_position_unique'),
                ),
    
            ],
        ),
        migrations.RunPython(move_content_types, move_content_types_back),
    ]

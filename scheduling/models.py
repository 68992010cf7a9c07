import json
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from workflows.definition import check_inputs

from . import cron

FIRE_TASK = "scheduling.tasks.fire_schedule_task"


class Schedule(models.Model):
    """Fires a workflow (with inputs) or an agent prompt on a 5-field cron in a time zone.
    Kept in sync with one django-celery-beat PeriodicTask, which beat reads."""

    class Target(models.TextChoices):
        WORKFLOW = "workflow"
        AGENT = "agent"

    class Overlap(models.TextChoices):
        SKIP = "skip", "skip while the previous run is active"
        ALLOW = "allow", "start anyway"
        STOP_PREVIOUS = "stop_previous", "stop the previous run, then start"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="schedules")
    name = models.CharField(max_length=100)
    target = models.CharField(max_length=10, choices=Target.choices)
    workflow = models.ForeignKey(
        "workflows.Workflow", models.SET_NULL, null=True, blank=True, related_name="schedules"
    )
    inputs = models.JSONField(default=dict, blank=True)
    agent = models.ForeignKey(
        "agents.Agent", models.SET_NULL, null=True, blank=True, related_name="schedules"
    )
    prompt = models.TextField(blank=True)
    # an agent prompt starts a new thread on each fire unless one is given
    thread = models.ForeignKey(
        "runs.Thread", models.SET_NULL, null=True, blank=True, related_name="schedules"
    )
    cron = models.CharField(max_length=100, help_text="minute hour day-of-month month day-of-week")
    timezone = models.CharField(max_length=64, default="UTC")
    enabled = models.BooleanField(default=True)
    overlap = models.CharField(max_length=15, choices=Overlap.choices, default=Overlap.SKIP)
    starts_at = models.DateTimeField(null=True, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.TextField(blank=True)
    periodic_task = models.OneToOneField(
        PeriodicTask, models.SET_NULL, null=True, blank=True, editable=False, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="schedule_name_unique")
        ]

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        with transaction.atomic():
            super().save(*args, **kwargs)
            self._sync_periodic_task()

    def clean(self):
        """What makes a schedule runnable; the admin form and the API both ask it."""
        errors = {}
        if self.cron and (cron_errors := cron.validate(self.cron)):
            errors["cron"] = cron_errors
        if tz_error := cron.validate_timezone(self.timezone):
            errors["timezone"] = [tz_error]
        if self.target == self.Target.WORKFLOW:
            if self.workflow_id is None:
                errors["workflow"] = ["A workflow schedule needs a workflow."]
            else:
                _, input_errors = check_inputs(self.workflow.definition, self.inputs)
                if input_errors:
                    errors["inputs"] = [f"{e['path']}: {e['message']}" for e in input_errors]
        elif self.target == self.Target.AGENT:
            if self.agent_id is None:
                errors["agent"] = ["An agent schedule needs an agent."]
            if not self.prompt.strip():
                errors["prompt"] = ["An agent schedule needs a prompt."]
        # each fire sends it as a run's message, so the same limit (surrogatepass: a lone
        # surrogate is measured, not a UnicodeEncodeError)
        size = len(self.prompt.encode(errors="surrogatepass"))
        if size > settings.RUN_MESSAGE_MAX_BYTES:
            errors["prompt"] = [
                f"Ensure this field has no more than {settings.RUN_MESSAGE_MAX_BYTES} bytes"
                f" (it has {size})."
            ]
        for field in ("workflow", "agent", "thread"):
            related = getattr(self, field)
            if related is not None and self.owner_id and related.owner_id != self.owner_id:
                errors[field] = [f"This {field} belongs to another user."]
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            errors["ends_at"] = ["The end must come after the start."]
        if errors:
            raise ValidationError(errors)

    def _sync_periodic_task(self):
        """One PeriodicTask and one CrontabSchedule per schedule, written in the same transaction
        as the schedule, so beat never sees one without the other."""
        task = self.periodic_task or PeriodicTask(name=f"relay-schedule-{self.pk}")
        crontab = task.crontab if task.crontab_id else CrontabSchedule()
        # beat's own entries (celery.backend_cleanup) find their crontab by value, so ours may
        # be theirs too: a shared one is left to them
        if crontab.pk and PeriodicTask.objects.filter(crontab=crontab).exclude(pk=task.pk).exists():
            crontab = CrontabSchedule()
        # spelled out the way Celery's crontab accepts (it refuses day-of-week 7 and "5/10")
        for field, value in cron.crontab_fields(self.cron).items():
            setattr(crontab, field, value)
        crontab.timezone = ZoneInfo(self.timezone)
        crontab.save()
        task.crontab = crontab
        task.task = FIRE_TASK
        task.args = json.dumps([self.pk])
        task.enabled = self.enabled
        task.start_time = self.starts_at
        task.description = f"Relay schedule “{self.name}” of {self.owner}"
        task.save()
        if self.periodic_task_id != task.pk:
            Schedule.objects.filter(pk=self.pk).update(periodic_task=task)
            self.periodic_task = task

    @property
    def target_missing(self):
        if self.target == self.Target.WORKFLOW:
            return self.workflow_id is None
        return self.agent_id is None


@receiver(post_delete, sender=Schedule)
def delete_periodic_task(sender, instance, **kwargs):
    # in the deleting transaction: the admin's bulk delete calls no model delete()
    if instance.periodic_task_id:
        task = PeriodicTask.objects.filter(pk=instance.periodic_task_id).first()
        if task:
            crontab_id = task.crontab_id
            task.delete()
            # not a crontab another task shares: the delete would cascade to that task
            CrontabSchedule.objects.filter(pk=crontab_id, periodictask=None).delete()


class Fire(models.Model):
    """One fire of a schedule: once per (schedule, slot), whatever sends it how often."""

    class Outcome(models.TextChoices):
        STARTED = "started"
        SKIPPED = "skipped"
        FAILED = "failed"

    schedule = models.ForeignKey(Schedule, models.CASCADE, related_name="fires")
    slot = models.DateTimeField(help_text="the cron time this fire stands for")
    manual = models.BooleanField(default=False)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    reason = models.TextField(blank=True)
    run = models.ForeignKey(
        "runs.Run", models.SET_NULL, null=True, blank=True, related_name="fires"
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-slot"]
        constraints = [
            models.UniqueConstraint(fields=["schedule", "slot"], name="fire_once_per_slot")
        ]

    def __str__(self):
        return f"{self.schedule} at {self.slot:%Y-%m-%d %H:%M} ({self.outcome})"

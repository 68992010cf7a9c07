from django.conf import settings
from django.db import models


class Workflow(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="workflows")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    definition = models.JSONField(default=dict)
    # grows with every change; a run keeps the definition (and version) it started with
    version = models.PositiveIntegerField(default=1)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="workflow_name_unique")
        ]

    def __str__(self):
        return self.name

    def save_new_version(self, **changes):
        """Save `changes` (and those already made) as the workflow's next version, the one way the
        API and the admin both save a change. The database adds the one: two saves that race
        make two versions, where `version += 1` on two copies read at once would make one."""
        for field, value in changes.items():
            setattr(self, field, value)
        self.version = models.F("version") + 1
        self.save(force_update=True)  # an error if the row is gone, not the workflow back again
        self.refresh_from_db(fields=["version"])

    @property
    def inputs(self):
        return self.definition.get("inputs", [])

    @property
    def steps(self):
        return self.definition.get("steps", [])


class WorkflowRun(models.Model):
    """What a workflow run needs beside its Run: the workflow, and its definition and inputs as
    they were when the run started (the workflow may change, or go, meanwhile)."""

    run = models.OneToOneField(
        "runs.Run", models.CASCADE, primary_key=True, related_name="workflow_run"
    )
    workflow = models.ForeignKey(
        Workflow, models.SET_NULL, null=True, blank=True, related_name="started_runs"
    )
    definition = models.JSONField()
    inputs = models.JSONField(default=dict, blank=True)

    def __str__(self):
        return f"{self.workflow or 'a deleted workflow'}: {self.run}"


class StepRun(models.Model):
    class Status(models.TextChoices):
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        SKIPPED = "skipped"
        STOPPED = "stopped"

    run = models.ForeignKey("runs.Run", models.CASCADE, related_name="steps")
    step = models.CharField(max_length=100)
    index = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    # on a retry, the output was taken from the failed run's completed step, not computed again
    reused = models.BooleanField(default=False)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="steprun_step_unique")]

    def __str__(self):
        return f"{self.step} ({self.status})"

    def as_event(self):
        return {
            "step": self.step,
            "index": self.index,
            "status": self.status,
            "output": self.output,
            "error": self.error,
            "reused": self.reused,
        }

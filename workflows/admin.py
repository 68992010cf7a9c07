from django import forms
from django.contrib import admin, messages

from runs.admin import ReadOnlyInline, RunAdmin
from runs.bulk import runs_retry
from runs.forms import StorableJSONField

from .definition import validate
from .models import StepRun, Workflow, WorkflowRun
from .services import WorkflowRuns


class WorkflowForm(forms.ModelForm):
    class Meta:
        model = Workflow
        fields = ["owner", "name", "description", "definition"]
        field_classes = {"definition": StorableJSONField}

    def clean(self):
        cleaned = super().clean()
        owner, definition = cleaned.get("owner"), cleaned.get("definition")
        if owner is not None and definition is not None:
            agent_ids = set(owner.agents.values_list("pk", flat=True))
            errors = validate(definition, agent_ids=agent_ids)
            if errors:
                self.add_error(
                    "definition", [f"{e['path'] or 'definition'}: {e['message']}" for e in errors]
                )
        return cleaned


@admin.register(Workflow)
class WorkflowAdmin(admin.ModelAdmin):
    form = WorkflowForm
    list_display = ["name", "owner", "version", "updated"]
    search_fields = ["name", "owner__username"]
    readonly_fields = ["version", "created", "updated"]

    def save_model(self, request, obj, form, change):
        if change:
            obj.save_new_version()  # as the API saves a change
        else:
            super().save_model(request, obj, form, change)


@admin.register(StepRun)
class StepRunAdmin(admin.ModelAdmin):
    list_display = ["step", "run", "index", "status", "reused", "finished"]
    list_filter = ["status", "reused"]
    raw_id_fields = ["run"]
    readonly_fields = [f.name for f in StepRun._meta.fields]


class WorkflowRunInline(ReadOnlyInline):
    """What a workflow run ran, on the run's admin page."""

    model = WorkflowRun
    fields = ["workflow", "definition", "inputs"]


class StepRunInline(ReadOnlyInline):
    model = StepRun
    fields = ["index", "step", "status", "output", "error", "reused", "finished"]


RunAdmin.inlines = [*RunAdmin.inlines, WorkflowRunInline, StepRunInline]


@admin.action(description="Retry selected failed workflow runs")
def retry_workflow_runs(modeladmin, request, queryset):
    """Each failed one that was not retried yet, as its owner's retry (runs.bulk.runs_retry);
    the others are left, and a refused retry is told, with its reason."""
    started, refused, more = runs_retry(runs=queryset.filter(kind=WorkflowRuns.name))
    modeladmin.message_user(request, f"Retried {len(started)} failed workflow run(s).")
    for run, exc in refused:
        modeladmin.message_user(request, f"Run {run.pk} not retried: {exc.message}", messages.ERROR)
    if more:
        modeladmin.message_user(
            request, "Only the oldest (RUN_BULK_MAX): run the action again for more.",
            messages.WARNING,
        )  # fmt: skip


RunAdmin.actions = [*RunAdmin.actions, retry_workflow_runs]

"""The workflow pages: the list, a workflow with a form built from its declared inputs, and a
run with its steps live."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render

from runs.errors import ServiceError
from runs.models import Run
from runs.parsers import UnstorableJSON, check_storable, loads

from .models import StepRun
from .services import WorkflowRuns, workflow_start


@login_required
def workflow_list(request):
    return render(request, "workflows/list.html", {"workflows": request.user.workflows.all()})


@login_required
def workflow_detail(request, pk):
    workflow = get_object_or_404(request.user.workflows, pk=pk)
    fields = [{**field, "value": field.get("default")} for field in workflow.inputs]
    errors = []
    if request.method == "POST":
        inputs, errors = form_inputs(workflow.inputs, request.POST)
        for field in fields:
            field["value"] = request.POST.get(field["name"], "")
        if not errors:
            try:
                run = workflow_start(
                    user=request.user, workflow=workflow, inputs=inputs, trigger=Run.Trigger.MANUAL
                )
            except ServiceError as exc:
                errors = exc.extra.get("inputs") or [{"path": "", "message": exc.message}]
            else:
                return redirect("workflow-run", run_id=run.pk)
    return render(
        request,
        "workflows/detail.html",
        {
            "workflow": workflow,
            "fields": fields,
            "errors": errors,
            "runs": Run.objects.filter(workflow_run__workflow=workflow)[:20],
        },
    )


def form_inputs(declared, data):
    """The form's text as the declared types; empty optional fields are left to defaults. What
    PostgreSQL could not store (NaN, a null character, nesting without end) is an error, as it
    is in the API."""
    inputs, errors = {}, []
    for field in declared:
        name, kind, path = field["name"], field["type"], f"inputs.{field['name']}"
        if kind == "boolean":
            inputs[name] = name in data
            continue
        raw = data.get(name, "").strip()
        if not raw:
            continue
        try:
            if kind == "json":
                value = loads(raw, path)
            else:
                value = _number(raw) if kind == "number" else raw
                check_storable(value, path)
        except UnstorableJSON as exc:
            errors.append({"path": exc.path, "message": exc.reason})
        except ValueError:
            errors.append({"path": path, "message": f"expected {kind}"})
        else:
            inputs[name] = value
    return inputs, errors


def _number(text):
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


@login_required
def workflow_run(request, run_id):
    runs = request.user.runs.select_related("workflow_run__workflow")
    run = get_object_or_404(runs.filter(kind=WorkflowRuns.name), pk=run_id)
    records = {record.step: record for record in run.steps.all()}
    steps = [
        {"id": step["id"], "type": step["type"], "index": index, "record": records.get(step["id"])}
        for index, step in enumerate(run.workflow_run.definition["steps"])
    ]
    return render(
        request,
        "workflows/run.html",
        {"run": run, "steps": steps, "statuses": StepRun.Status},
    )

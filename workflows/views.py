"""The workflow pages: the list, a workflow with a form built from its declared inputs, and a
run with its steps live."""

import json

from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render

from agents import services
from agents.models import Run

from .models import StepRun


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
                run = services.workflow_start(
                    user=request.user, workflow=workflow, inputs=inputs, trigger=Run.Trigger.MANUAL
                )
            except services.ServiceError as exc:
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
            "runs": workflow.runs.all()[:20],
        },
    )


def form_inputs(declared, data):
    """The form's text as the declared types; empty optional fields are left to defaults."""
    inputs, errors = {}, []
    for field in declared:
        name, kind = field["name"], field["type"]
        if kind == "boolean":
            inputs[name] = name in data
            continue
        raw = data.get(name, "").strip()
        if not raw:
            continue
        try:
            inputs[name] = {"number": _number, "json": json.loads}.get(kind, str)(raw)
        except ValueError:
            errors.append({"path": f"inputs.{name}", "message": f"expected {kind}"})
    return inputs, errors


def _number(text):
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


@login_required
def workflow_run(request, run_id):
    run = get_object_or_404(request.user.runs.exclude(definition=None), pk=run_id)
    records = {record.step: record for record in run.steps.all()}
    steps = [
        {"id": step["id"], "type": step["type"], "index": index, "record": records.get(step["id"])}
        for index, step in enumerate(run.definition["steps"])
    ]
    return render(
        request,
        "workflows/run.html",
        {"run": run, "steps": steps, "statuses": StepRun.Status},
    )

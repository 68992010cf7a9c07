"""Workflow runs end to end: started over HTTP, executed by a real worker, followed over SSE."""

import copy

import httpx
import pytest

from agents.models import Agent
from runs.models import Run
from workflows.models import StepRun, Workflow

from conftest import pace, wait_for_status
from examples import THREE_STEPS
from sse import follow, text_of

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def start(live, headers, workflow, inputs):
    r = httpx.post(
        f"{live.base_url}/api/workflows/{workflow.pk}/runs/",
        json={"inputs": inputs},
        headers=headers,
    )
    assert r.status_code == 202, r.text
    return r.json()["id"]


def steps_of(run_id):
    return {s.step: s for s in StepRun.objects.filter(run_id=run_id)}


def test_it_runs_a_tool_a_condition_and_an_agent_step(live, live_api, alice):
    workflow = Workflow.objects.create(owner=alice, name="W", definition=THREE_STEPS)
    run_id = start(live, live_api, workflow, {"a": 5})
    events = follow(live.base_url, run_id, live_api)
    sequence = [
        (e.type, e.json.get("step") or e.json.get("name") or e.json.get("status") or "")
        for e in events
        if e.type != "message.delta"
    ]
    print("workflow run events:", [(e.number, e.type) for e in events])
    assert sequence[:8] == [
        ("run.status", "queued"),
        ("run.status", "running"),
        ("step.started", "sum"),
        ("tool.started", "calculator"),
        ("tool.done", "calculator"),
        ("step.done", "sum"),
        ("step.started", "big"),
        ("step.done", "big"),
    ]
    assert ("step.done", "shout") in sequence
    assert sequence[-3:] == [("step.done", "explain"), ("usage", ""), ("run.status", "completed")]
    steps = steps_of(run_id)
    assert (steps["sum"].status, steps["sum"].output) == ("completed", "7")
    assert (steps["big"].status, steps["big"].output) == ("completed", False)
    assert steps["shout"].status == "skipped"
    assert steps["explain"].status == "completed"
    run = Run.objects.get(pk=run_id)
    prompt = run.messages.get(role="user").content
    assert prompt == "Explain 7 in terms of numbers"
    assert steps["explain"].output == text_of(events) == run.messages.get(role="assistant").content
    api_steps = httpx.get(f"{live.base_url}/api/runs/{run_id}/steps/", headers=live_api).json()
    assert [s["step"] for s in api_steps["results"]] == ["sum", "big", "shout", "explain"]


def test_it_stops_a_workflow_in_the_middle_of_a_step(live, live_api, alice):
    pace(alice, words=1000, delay_ms=20)
    workflow = Workflow.objects.create(owner=alice, name="W", definition=THREE_STEPS)
    run_id = start(live, live_api, workflow, {"a": 5})
    follow(live.base_url, run_id, live_api, until=lambda e: e.type == "message.delta")
    httpx.post(f"{live.base_url}/api/runs/{run_id}/stop/", headers=live_api)
    run = wait_for_status(run_id, Run.TERMINAL, timeout=5)
    assert run.status == Run.Status.STOPPED
    steps = steps_of(run_id)
    assert steps["sum"].status == "completed"
    assert steps["explain"].status == "stopped"


def test_it_retries_from_the_failed_step_without_running_the_others_again(live, live_api, alice):
    # nothing listens where the live processes' LLM_BASE_URL points: this agent's step fails
    broken = Agent.objects.create(owner=alice, name="Remote", model="gpt-remote")
    definition = copy.deepcopy(THREE_STEPS)
    definition["steps"][3]["agent"] = broken.pk
    workflow = Workflow.objects.create(owner=alice, name="W", definition=definition)
    failed_id = start(live, live_api, workflow, {"a": 5})
    first = follow(live.base_url, failed_id, live_api)
    failed = Run.objects.get(pk=failed_id)
    assert failed.status == Run.Status.FAILED
    assert failed.error.startswith("step 'explain' failed: cannot reach the model")
    broken.model = "demo"  # the person mends the agent, then retries
    broken.save()
    r = httpx.post(f"{live.base_url}/api/runs/{failed_id}/retry/", headers=live_api)
    assert r.status_code == 202, r.text
    retry_id = r.json()["id"]
    second = follow(live.base_url, retry_id, live_api)
    assert second[-1].json["status"] == "completed"
    tool_calls = [e for e in first + second if e.type == "tool.started"]
    assert len(tool_calls) == 1  # the calculator ran once, in the failed run
    steps = steps_of(retry_id)
    assert (steps["sum"].reused, steps["sum"].output) == (True, "7")
    assert steps["explain"].status == "completed"
    assert not steps["explain"].reused
    assert Run.objects.get(pk=retry_id).retry_of_id == failed.pk

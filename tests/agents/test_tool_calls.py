"""Tool calls inside runs, executed in this process (the test is the worker): a stop during a
slow tool ends the run at once, and the tool's late result is dropped."""

import dataclasses
import threading
import time

import pytest

from agents import runner, services, tools
from runs import lifecycle, loop
from runs.models import Run
from workflows.models import Workflow
from workflows.services import workflow_start

from conftest import logged, wait_for, wait_for_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_queue")]


@pytest.fixture
def slow_calculator(monkeypatch):
    """calculator takes 9 s (or until released), then answers 42, and says when it has."""
    release, returned = threading.Event(), threading.Event()

    def slow(expression):
        release.wait(9)
        returned.set()
        return 42

    tool = dataclasses.replace(tools.get("calculator"), func=slow, timeout=10)
    monkeypatch.setitem(tools._registry, "calculator", tool)
    yield release, returned
    release.set()
    returned.wait(5)


def stop_during_the_tool(run, thread):
    """Stop `run` (executing in `thread`) once its tool has started; seconds the stop took."""
    wait_for(lambda: any(e[1] == "tool.started" for e in logged(run)), timeout=10,
             message="the tool call")  # fmt: skip
    started = time.monotonic()
    lifecycle.run_stop(run=Run.objects.get(pk=run.pk))
    wait_for_status(run.pk, Run.Status.STOPPED, timeout=5)
    elapsed = time.monotonic() - started
    thread.join(5)
    assert not thread.is_alive()
    return elapsed


def test_a_stop_during_a_tool_call_ends_the_run_at_once_and_drops_the_result(
    alice, thread, slow_calculator
):
    release, returned = slow_calculator
    run = services.agent_start(user=alice, thread=thread, message="Please calculate 6*7")
    worker = threading.Thread(target=loop.execute, args=(run.pk,))
    worker.start()
    assert stop_during_the_tool(run, worker) < 1
    events = logged(run)
    release.set()  # the tool answers now, after the run has ended
    assert returned.wait(5)
    time.sleep(0.2)  # time enough for a late result to be written, were it written
    assert logged(run) == events
    assert [e[1] for e in events][-4:] == ["tool.started", "tool.done", "usage", "run.status"]
    assert events[-3][2]["error"] == "the run was stopped before the tool finished"
    assert events[-1][2]["status"] == "stopped"
    # the call stays unanswered, as history_messages expects of a stopped run's calls
    assert not thread.messages.filter(role="tool").exists()
    assert thread.messages.get(role="assistant").tool_calls[0]["name"] == "calculator"
    history = runner.history_messages(thread, alice.agents.get())
    assert [m["role"] for m in history] == ["system", "user"]


def test_a_stop_during_a_workflow_tool_step_ends_the_run_at_once(alice, slow_calculator):
    release, returned = slow_calculator
    definition = {
        "steps": [{"id": "sum", "type": "tool", "tool": "calculator",
                   "arguments": {"expression": "6*7"}}],
    }  # fmt: skip
    workflow = Workflow.objects.create(owner=alice, name="W", definition=definition)
    run = workflow_start(user=alice, workflow=workflow, inputs={})
    worker = threading.Thread(target=loop.execute, args=(run.pk,))
    worker.start()
    assert stop_during_the_tool(run, worker) < 1
    events = logged(run)
    release.set()
    assert returned.wait(5)
    time.sleep(0.2)
    assert logged(run) == events
    assert [e[1] for e in events][-4:] == ["tool.started", "tool.done", "step.done", "run.status"]
    assert events[-3][2]["error"] == "the run was stopped before the tool finished"
    assert events[-1][2]["status"] == "stopped"
    assert run.steps.get().status == "stopped"

"""Workflow runs executed in this process (the test is the worker)."""

import copy

import pytest

from agents.models import Agent
from runs import lifecycle, loop
from runs.models import Run
from workflows.models import Workflow
from workflows.services import workflow_start

import fakellm
from conftest import pace
from examples import THREE_STEPS

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_queue")]


def test_a_retry_keeps_skipping_what_a_reused_condition_skipped(alice, settings):
    settings.LLM_BASE_URL = "http://127.0.0.1:9/v1"  # nothing listens: the last step fails
    broken = Agent.objects.create(owner=alice, name="Remote", model="gpt-remote")
    definition = copy.deepcopy(THREE_STEPS)
    definition["steps"][3]["agent"] = broken.pk
    workflow = Workflow.objects.create(owner=alice, name="W", definition=definition)
    failed = workflow_start(user=alice, workflow=workflow, inputs={"a": 1})
    loop.execute(failed.pk)
    failed.refresh_from_db()
    assert failed.status == Run.Status.FAILED
    broken.model = "demo"
    broken.save()
    retry = lifecycle.run_retry(run=failed)
    loop.execute(retry.pk)
    steps = {s.step: (s.status, s.reused) for s in retry.steps.all()}
    assert steps == {
        "sum": ("completed", True),
        "big": ("completed", True),
        "shout": ("skipped", False),
        "explain": ("completed", False),
    }
    assert Run.objects.get(pk=retry.pk).status == Run.Status.COMPLETED


def test_a_condition_that_cannot_be_decided_fails_the_run_naming_the_step(alice):
    definition = {
        "inputs": [{"name": "x", "type": "string", "required": True}],
        "steps": [{"id": "check", "type": "condition", "when": {"gt": ["{{ inputs.x }}", 1]}}],
    }
    workflow = Workflow.objects.create(owner=alice, name="W", definition=definition)
    run = workflow_start(user=alice, workflow=workflow, inputs={"x": "ten"})
    loop.execute(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert run.error.startswith("step 'check' failed:")
    assert run.steps.get().status == "failed"


def test_a_step_whose_prompt_renders_past_the_message_limit_fails_naming_it(alice, settings):
    # The inputs pass the start's check; the first step's reply is known only at run time.
    settings.RUN_MESSAGE_MAX_BYTES = 1000
    pace(alice, words=300)
    definition = {
        "steps": [
            {"id": "draft", "type": "agent", "prompt": "Write"},
            {"id": "echo", "type": "agent", "prompt": "{{ steps.draft.output }}"},
        ]
    }
    workflow = Workflow.objects.create(owner=alice, name="W", definition=definition)
    run = workflow_start(user=alice, workflow=workflow, inputs={})
    loop.execute(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert run.error == (
        "step 'echo' failed: the rendered text would be more than 1000 bytes,"
        " the most a message may have"
    )
    assert [s.status for s in run.steps.all()] == ["completed", "failed"]
    assert [m.content for m in run.messages.filter(role="user")] == ["Write"]


def test_a_step_cut_off_at_the_time_limit_fails_with_the_run(alice, settings):
    settings.RUN_TIME_LIMIT = 1
    with fakellm.FakeLLM() as fake:
        settings.LLM_BASE_URL = fake.base_url
        fake.script(silent=True)  # takes the request, then says nothing
        agent = Agent.objects.create(owner=alice, name="Remote", model="gpt-remote")
        definition = {
            "inputs": [],
            "steps": [{"id": "ask", "type": "agent", "agent": agent.pk, "prompt": "Hi"}],
        }
        workflow = Workflow.objects.create(owner=alice, name="W", definition=definition)
        run = workflow_start(user=alice, workflow=workflow, inputs={})
        loop.execute(run.pk)
    run.refresh_from_db()
    over = "the run took longer than its time limit (1 s)"
    assert (run.status, run.error) == (Run.Status.FAILED, over)
    assert [(s.status, s.error) for s in run.steps.all()] == [("failed", over)]

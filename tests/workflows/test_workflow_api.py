"""The workflows API: definitions validated with the path and reason of each error, versions,
owners, and starting runs with checked inputs."""

import copy

import pytest

from runs.models import Run
from workflows.models import Workflow

from conftest import saved
from examples import THREE_STEPS

# what the API enqueues goes through the JSON round trip, not to a live worker of the session
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_queue")]


@pytest.fixture
def workflow(alice):
    return Workflow.objects.create(owner=alice, name="Sum and explain", definition=THREE_STEPS)


def test_it_creates_a_workflow_and_bumps_its_version_on_every_change(alice_api):
    r = alice_api.post("/api/workflows/", {"name": "W", "definition": THREE_STEPS}, format="json")
    assert r.status_code == 201, r.data
    assert r.data["version"] == 1
    url = f"/api/workflows/{r.data['id']}/"
    assert alice_api.patch(url, {"description": "d"}, format="json").data["version"] == 2
    assert alice_api.patch(url, {"name": "W2"}, format="json").data["version"] == 3


@pytest.mark.parametrize(
    ("change", "path", "reason"),
    [
        (lambda d: d["steps"][0].update(tool="rm_rf"), "steps[0].tool", "unknown tool"),
        (lambda d: d["steps"][2].update(id="sum"), "steps[2].id", "duplicate step id"),
        (
            lambda d: d["steps"][0]["arguments"].update(expression="{{ steps.explain.output }}"),
            "steps[0].arguments.expression",
            "later step",
        ),
        (
            lambda d: d["steps"][3].update(prompt="{{ steps.nope.output }}"),
            "steps[3].prompt",
            "unknown step",
        ),
        (
            lambda d: d["steps"][3].update(prompt="{{ inputs.a.__class__ }}"),
            "steps[3].prompt",
            "malformed template",
        ),
        (
            lambda d: d["steps"][3].update(prompt="{{ steps.sum.output.upper() }}"),
            "steps[3].prompt",
            "malformed template",
        ),
        (lambda d: d["inputs"][0].update(type="date"), "inputs[0].type", "expected one of"),
        (lambda d: d["steps"][3].update(agent=99999), "steps[3].agent", "unknown agent"),
    ],
)
def test_it_refuses_a_bad_definition_naming_the_path(alice_api, change, path, reason):
    definition = copy.deepcopy(THREE_STEPS)
    change(definition)
    r = alice_api.post("/api/workflows/", {"name": "W", "definition": definition}, format="json")
    assert r.status_code == 400
    errors = r.json()["definition"]
    assert any(e["path"] == path and reason in e["message"] for e in errors), errors
    assert not Workflow.objects.exists()


def test_it_refuses_a_definition_over_the_size_limit(alice_api, settings):
    settings.WORKFLOW_MAX_BYTES = 100
    r = alice_api.post("/api/workflows/", {"name": "W", "definition": THREE_STEPS}, format="json")
    assert r.status_code == 400
    assert "100" in r.json()["definition"][0]["message"]


def test_it_hides_other_users_workflows(bob_api, workflow):
    assert bob_api.get(f"/api/workflows/{workflow.pk}/").status_code == 404
    assert bob_api.post(f"/api/workflows/{workflow.pk}/runs/", {}, format="json").status_code == 404
    assert bob_api.get("/api/workflows/").data["count"] == 0


def test_it_starts_a_run_with_the_inputs_checked_and_defaults_filled(alice_api, workflow):
    r = alice_api.post(f"/api/workflows/{workflow.pk}/runs/", {"inputs": {"a": 5}}, format="json")
    assert r.status_code == 202, r.data
    run = Run.objects.get(pk=r.data["id"])
    assert (run.workflow_run.workflow, run.workflow_run.inputs) == (
        workflow,
        {"a": 5, "topic": "numbers"},
    )
    assert run.workflow_run.definition == THREE_STEPS
    assert run.thread.owner == workflow.owner
    # a change to the workflow leaves the run's definition alone
    workflow.definition = {"steps": [{"id": "x", "type": "agent", "prompt": "hi"}]}
    workflow.save()
    run.refresh_from_db()
    assert run.workflow_run.definition == THREE_STEPS
    listed = alice_api.get(f"/api/workflows/{workflow.pk}/runs/").data["results"]
    assert [str(r["id"]) for r in listed] == [str(run.pk)]


@pytest.mark.parametrize(
    ("inputs", "path", "reason"),
    [
        ({}, "inputs.a", "required"),
        ({"a": "five"}, "inputs.a", "expected a number"),
        ({"a": True}, "inputs.a", "expected a number"),
        ({"a": 1, "b": 2}, "inputs.b", ""),
    ],
)
def test_it_refuses_inputs_that_do_not_match(alice_api, workflow, inputs, path, reason):
    r = alice_api.post(f"/api/workflows/{workflow.pk}/runs/", {"inputs": inputs}, format="json")
    assert r.status_code == 400
    errors = r.json()["inputs"]
    assert any(e["path"] == path and reason in e["message"] for e in errors), errors
    assert not Run.objects.exists()


def test_it_retries_only_a_failed_workflow_run(alice, alice_api, workflow):
    run_id = alice_api.post(
        f"/api/workflows/{workflow.pk}/runs/", {"inputs": {"a": 1}}, format="json"
    ).data["id"]
    r = alice_api.post(f"/api/runs/{run_id}/retry/")
    assert r.status_code == 409
    assert "Only a failed run can be retried" in r.json()["detail"]


def test_it_refuses_a_start_whose_inputs_would_render_past_the_message_limit(alice, alice_api):
    # Issue 11's attack, at a tenth of its size: one input referenced 2,000 times.
    definition = {
        "inputs": [{"name": "s", "type": "string", "required": True}],
        "steps": [{"id": "echo", "type": "agent", "prompt": "{{inputs.s}}" * 2000}],
    }
    workflow = Workflow.objects.create(owner=alice, name="Echo", definition=definition)
    before = saved()
    r = alice_api.post(
        f"/api/workflows/{workflow.pk}/runs/", {"inputs": {"s": "x" * 10_000}}, format="json"
    )
    assert r.status_code == 400
    assert r.json()["inputs"] == [
        {"path": "steps[0].prompt", "message": "with these inputs, the rendered text would be more"
         " than 32768 bytes, the most a message may have"}
    ]  # fmt: skip
    assert saved() == before


def test_it_refuses_an_input_larger_than_a_message(alice_api, workflow):
    before = saved()
    inputs = {"a": 1, "topic": "x" * 100_000}
    r = alice_api.post(f"/api/workflows/{workflow.pk}/runs/", {"inputs": inputs}, format="json")
    assert r.status_code == 400
    assert r.json()["inputs"] == [
        {"path": "inputs.topic", "message": "this input is 100000 bytes, more than the limit"
         " of 32768"}
    ]  # fmt: skip
    assert saved() == before


def test_a_start_refused_over_the_active_run_cap_saves_nothing(alice_api, workflow, settings):
    settings.RUN_MAX_ACTIVE_PER_USER = 0
    before = saved()
    r = alice_api.post(f"/api/workflows/{workflow.pk}/runs/", {"inputs": {"a": 1}}, format="json")
    assert r.status_code == 429
    assert saved() == before


def test_a_start_refused_on_a_busy_thread_saves_nothing(alice_api, workflow):
    url = f"/api/workflows/{workflow.pk}/runs/"
    first = alice_api.post(url, {"inputs": {"a": 1}}, format="json").data
    before = saved()
    r = alice_api.post(url, {"inputs": {"a": 1}, "thread": first["thread"]}, format="json")
    assert r.status_code == 409
    assert saved() == before


def test_a_start_refused_for_its_inputs_saves_nothing(alice_api, workflow):
    before = saved()
    r = alice_api.post(f"/api/workflows/{workflow.pk}/runs/", {"inputs": {}}, format="json")
    assert r.status_code == 400
    assert saved() == before

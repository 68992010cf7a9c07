"""Bulk actions: POST /api/runs/stop/ and /api/runs/retry/ with filters act on the caller's runs
only, through the lifecycle; and the admin's actions do the same."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from agents.models import Agent, create_thread
from agents.services import agent_start
from runs import bulk, lifecycle
from runs.models import Run
from workflows.models import Workflow
from workflows.services import workflow_start

from examples import THREE_STEPS

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_queue")]  # runs stay queued


@pytest.fixture
def workflow(alice):
    return Workflow.objects.create(owner=alice, name="Sum", definition=THREE_STEPS)


def agent_run(user, agent=None, message="Hi"):
    """A queued agent run of the user's, on a new thread."""
    agent = agent or user.agents.order_by("pk").first()
    return agent_start(user=user, thread=create_thread(owner=user, agent=agent), message=message)


def failed(run, error="boom"):
    lifecycle.run_finish(run=run, status=Run.Status.FAILED, error=error)
    run.refresh_from_db()
    return run


def statuses(*runs):
    return [Run.objects.get(pk=run.pk).status for run in runs]


def test_it_stops_the_callers_active_runs_matching_a_status(alice, alice_api, bob, workflow):
    queued = agent_run(alice)
    running = agent_run(alice)
    Run.objects.filter(pk=running.pk).update(status=Run.Status.RUNNING)
    done = failed(agent_run(alice))
    bobs = agent_run(bob)
    r = alice_api.post("/api/runs/stop/", {"status": "queued"})
    assert r.status_code == 202, r.content
    assert r.json() == {"stopped": 1, "runs": [str(queued.pk)], "more": False}
    assert statuses(queued, running, done, bobs) == ["stopped", "running", "failed", "queued"]
    r = alice_api.post("/api/runs/stop/", {"status": "running"})
    assert r.json()["runs"] == [str(running.pk)]
    assert Run.objects.get(pk=running.pk).stop_requested is not None  # its worker ends it
    assert alice_api.post("/api/runs/stop/", {"status": "failed"}).json()["stopped"] == 0


def test_it_stops_by_thread_agent_workflow_and_creation_time(alice, alice_api, bob, workflow):
    other_agent = Agent.objects.create(owner=alice, name="Other")
    first = agent_run(alice)
    by_other = agent_run(alice, agent=other_agent)
    flow = workflow_start(user=alice, workflow=workflow, inputs={"a": 1})
    last = agent_run(alice)
    bobs = agent_run(bob)
    Run.objects.filter(pk=first.pk).update(created=timezone.now() - timedelta(hours=2))
    cases = [
        ({"thread": last.thread_id}, [last]),
        ({"agent": other_agent.pk}, [by_other]),
        ({"workflow": workflow.pk}, [flow]),
        ({"created_before": (timezone.now() - timedelta(hours=1)).isoformat()}, [first]),
        ({"ids": [str(bobs.pk), str(by_other.pk)]}, [by_other]),  # bob's is not hers: left
        # every filter must match
        ({"thread": last.thread_id, "agent": other_agent.pk}, []),
    ]
    for body, expected in cases:
        Run.objects.exclude(owner=bob).update(status=Run.Status.QUEUED, finished=None)
        r = alice_api.post("/api/runs/stop/", body)
        assert r.status_code == 202, (body, r.content)
        assert r.json()["stopped"] == len(expected), body
        assert set(r.json()["runs"]) == {str(run.pk) for run in expected}, body
        stopped = set(Run.objects.filter(status="stopped").values_list("pk", flat=True))
        assert stopped == {run.pk for run in expected}, body
    assert Run.objects.get(pk=bobs.pk).status == "queued"


def test_it_never_touches_or_tells_of_another_users_runs(alice, bob_api):
    alices = agent_run(alice)
    for body in ({"thread": alices.thread_id}, {"ids": [str(alices.pk)]}, {"status": "queued"},
                 {"agent": alice.agents.get().pk}):  # fmt: skip
        r = bob_api.post("/api/runs/stop/", body)
        assert r.json() == {"stopped": 0, "runs": [], "more": False}
        assert bob_api.post("/api/runs/retry/", body).json()["retried"] == 0
    assert Run.objects.get(pk=alices.pk).status == "queued"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "non_field_errors"),
        ({"kind": "agent"}, "non_field_errors"),  # not a filter: none given
        ({"ids": []}, "ids"),
        ({"ids": ["not-a-uuid"]}, "ids"),
        ({"ids": "1"}, "ids"),
        ({"thread": 2**64}, "thread"),
        ({"thread": "x"}, "thread"),
        ({"agent": 0}, "agent"),
        ({"workflow": 1.5}, "workflow"),
        ({"status": "asleep"}, "status"),
        ({"created_before": "yesterday"}, "created_before"),
    ],
)
def test_a_bulk_call_without_a_good_filter_is_a_400_naming_it(alice, alice_api, body, field):
    run = agent_run(alice)
    for url in ("/api/runs/stop/", "/api/runs/retry/"):
        r = alice_api.post(url, body)
        assert r.status_code == 400, (url, body, r.content)
        assert field in r.json(), r.json()
    assert Run.objects.get(pk=run.pk).status == "queued"


def test_it_bounds_the_runs_one_call_touches(alice, alice_api, settings):
    settings.RUN_BULK_MAX = 2
    runs = [agent_run(alice) for _ in range(3)]
    r = alice_api.post("/api/runs/stop/", {"status": "queued"})
    assert r.json() == {"stopped": 2, "runs": [str(run.pk) for run in runs[:2]], "more": True}
    assert statuses(*runs) == ["stopped", "stopped", "queued"]
    r = alice_api.post("/api/runs/stop/", {"ids": [str(run.pk) for run in runs]})
    assert (r.status_code, "ids" in r.json()) == (400, True)
    assert alice_api.post("/api/runs/stop/", {"status": "queued"}).json()["more"] is False


def test_it_retries_the_failed_workflow_runs_that_match(alice, alice_api, bob, workflow):
    first = failed(workflow_start(user=alice, workflow=workflow, inputs={"a": 1}))
    second = failed(workflow_start(user=alice, workflow=workflow, inputs={"a": 2}))
    agent_failed = failed(agent_run(alice))  # an agent run cannot be retried: left
    completed = workflow_start(user=alice, workflow=workflow, inputs={"a": 3})
    lifecycle.run_finish(run=completed, status=Run.Status.COMPLETED)
    bobs_flow = Workflow.objects.create(owner=bob, name="Sum", definition=THREE_STEPS)
    bobs = failed(workflow_start(user=bob, workflow=bobs_flow, inputs={"a": 1}))
    r = alice_api.post("/api/runs/retry/", {"workflow": workflow.pk})
    assert r.status_code == 202, r.content
    body = r.json()
    assert (body["retried"], body["refused"], body["more"]) == (2, [], False)
    assert [run["retry_of"] for run in body["runs"]] == [str(first.pk), str(second.pk)]
    assert {run["status"] for run in body["runs"]} == {"queued"}
    assert all(run["workflow"] == workflow.pk for run in body["runs"])
    assert not agent_failed.retries.exists() and not bobs.retries.exists()
    # a run retried already is not retried again: its retry is the one to retry, once failed
    Run.objects.filter(retry_of__isnull=False).update(status=Run.Status.FAILED)
    r = alice_api.post("/api/runs/retry/", {"status": "failed"})
    assert [run["retry_of"] for run in r.json()["runs"]] == [
        body["runs"][0]["id"], body["runs"][1]["id"],
    ]  # fmt: skip
    assert first.retries.count() == second.retries.count() == 1


def test_a_refused_retry_is_reported_not_a_500(alice, alice_api, workflow, settings):
    busy = failed(workflow_start(user=alice, workflow=workflow, inputs={"a": 1}))
    agent_start(user=alice, thread=busy.thread, message="Meanwhile")  # its thread is busy now
    capped = [failed(workflow_start(user=alice, workflow=workflow, inputs={"a": i}))
              for i in (2, 3)]  # fmt: skip
    settings.RUN_MAX_ACTIVE_PER_USER = 2  # the one active, and room for one retry
    r = alice_api.post("/api/runs/retry/", {"status": "failed"})
    assert r.status_code == 202, r.content
    body = r.json()
    assert body["retried"] == 1 and body["runs"][0]["retry_of"] == str(capped[0].pk)
    assert [(x["run"], x["error"]) for x in body["refused"]] == [
        (str(busy.pk), "thread_busy"), (str(capped[1].pk), "too_many_runs"),
    ]  # fmt: skip
    assert all(x["detail"] for x in body["refused"])
    assert not busy.retries.exists() and not capped[1].retries.exists()


def test_the_schema_has_the_bulk_actions(client):
    paths = client.get("/api/schema/?format=json").json()["paths"]
    for path, answer in (("/api/runs/stop/", "stopped"), ("/api/runs/retry/", "retried")):
        operation = paths[path]["post"]
        assert {"202", "400"} <= set(operation["responses"]), path
        body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert body.endswith("/RunSelectionRequest")
        reply = operation["responses"]["202"]["content"]["application/json"]["schema"]["$ref"]
        assert reply.rsplit("/", 1)[1].startswith("Bulk"), answer
    selection = client.get("/api/schema/?format=json").json()["components"]["schemas"]
    assert set(selection["RunSelectionRequest"]["properties"]) == {
        "status", "thread", "agent", "workflow", "created_before", "ids",
    }  # fmt: skip


def test_the_admin_stops_the_selected_runs(alice, bob, admin_client):
    mine, theirs, left = agent_run(alice), agent_run(bob), agent_run(alice)
    done = failed(agent_run(alice))
    r = admin_client.post(
        "/admin/runs/run/",
        {"action": "stop_runs", "_selected_action": [mine.pk, theirs.pk, done.pk]},
        follow=True,
    )
    assert r.status_code == 200
    assert "Asked 2 active run(s) to stop." in r.content.decode()
    assert statuses(mine, theirs, left, done) == ["stopped", "stopped", "queued", "failed"]


def test_the_admin_retries_the_selected_failed_workflow_runs(alice, admin_client, workflow):
    flow = failed(workflow_start(user=alice, workflow=workflow, inputs={"a": 1}))
    busy = failed(workflow_start(user=alice, workflow=workflow, inputs={"a": 2}))
    agent_start(user=alice, thread=busy.thread, message="Meanwhile")
    agent_failed = failed(agent_run(alice))
    r = admin_client.post(
        "/admin/runs/run/",
        {"action": "retry_workflow_runs", "_selected_action": [flow.pk, busy.pk, agent_failed.pk]},
        follow=True,
    )
    page = r.content.decode()
    assert "Retried 1 failed workflow run(s)." in page
    assert f"Run {busy.pk} not retried:" in page
    assert flow.retries.count() == 1
    assert not busy.retries.exists() and not agent_failed.retries.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent writers: PostgreSQL")
@pytest.mark.timeout(60)
def test_bulk_retries_racing_retry_a_run_once(alice, workflow):
    runs = [failed(workflow_start(user=alice, workflow=workflow, inputs={"a": i})) for i in (1, 2)]
    count = 4
    barrier, results = threading.Barrier(count), [None] * count

    def retry(i):
        try:
            barrier.wait(10)
            results[i] = bulk.runs_retry(runs=Run.objects.filter(owner=alice))
        finally:
            connection.close()

    threads = [threading.Thread(target=retry, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(len(started) for started, _, _ in results) == 2
    assert [run.retries.count() for run in runs] == [1, 1]

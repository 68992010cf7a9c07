"""The JSON API: what each endpoint answers, and the 400s, 404s, 409s and 429s users hit."""

import json

import pytest
from rest_framework.test import APIClient

from agents import services
from agents.models import Agent, ApiKey, create_thread
from runs import stream, tasks
from runs.models import Run, Thread
from workflows.models import Workflow

from examples import THREE_STEPS

# what the API enqueues goes through the JSON round trip, not to a live worker of the session
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_queue")]


def start(api, thread, **body):
    return api.post(f"/api/threads/{thread.pk}/runs/", {"message": "Hello", **body}, format="json")


def test_it_gives_every_new_user_a_demo_agent(alice):
    agent = alice.agents.get()
    assert agent.model == "demo"
    assert agent.tools == ["calculator", "current_time"]


def test_it_creates_lists_changes_and_deletes_agents(alice_api):
    r = alice_api.post(
        "/api/agents/",
        {
            "name": "Helper",
            "model": "demo",
            "tools": ["calculator"],
            "config": {"demo": {"words": 5}},
        },
        format="json",
    )
    assert r.status_code == 201, r.data
    agent_id = r.data["id"]
    assert [a["name"] for a in alice_api.get("/api/agents/").data["results"]] == ["Demo", "Helper"]
    r = alice_api.patch(f"/api/agents/{agent_id}/", {"instructions": "Be brief."}, format="json")
    assert r.data["instructions"] == "Be brief."
    assert alice_api.delete(f"/api/agents/{agent_id}/").status_code == 204
    assert not Agent.objects.filter(pk=agent_id).exists()


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"name": "X", "tools": ["rm_rf"]}, "tools", "Unknown tools: rm_rf"),
        ({"name": "X", "config": {"demo": {"words": 0}}}, "config", "greater than or equal to 1"),
        ({"name": "Demo"}, "name", "already have an agent with this name"),
        ({}, "name", "This field is required"),
        ({"name": "X", "config": {"note": "\u0000"}}, "config", "Null characters"),
        ({"name": "X", "config": "fast"}, "config", "Expected a dictionary"),
        ({"name": "X", "tools": "calculator"}, "tools", "Expected a list"),
    ],
)
def test_it_refuses_a_bad_agent(alice_api, body, field, reason):
    r = alice_api.post("/api/agents/", body, format="json")
    assert r.status_code == 400
    assert reason in str(r.data[field])


def test_it_hides_other_users_objects(alice, alice_api, bob_api, thread):
    run = services.agent_start(user=alice, thread=thread, message="mine")
    agent = alice.agents.get()
    for url in [
        f"/api/agents/{agent.pk}/",
        f"/api/threads/{thread.pk}/",
        f"/api/threads/{thread.pk}/messages/",
        f"/api/runs/{run.pk}/",
    ]:
        assert bob_api.get(url).status_code == 404, url
    assert bob_api.post(f"/api/runs/{run.pk}/stop/").status_code == 404
    assert start(bob_api, thread).status_code == 404
    assert bob_api.get("/api/runs/").data["count"] == 0
    assert Run.objects.get(pk=run.pk).status == Run.Status.QUEUED


def test_it_refuses_another_users_agent_as_unknown(alice_api, bob, thread):
    r = start(alice_api, thread, agent=bob.agents.get().pk)
    assert r.status_code == 400
    assert "does not exist" in str(r.data["agent"])


def test_it_creates_renames_lists_and_deletes_threads(alice_api, alice):
    r = alice_api.post("/api/threads/", {}, format="json")
    assert r.status_code == 201
    assert r.data["agent"] == alice.agents.get().pk
    thread_id = r.data["id"]
    alice_api.patch(f"/api/threads/{thread_id}/", {"title": "Plans"}, format="json")
    listed = alice_api.get("/api/threads/").data["results"]
    assert [(t["id"], t["title"], t["active_run"]) for t in listed] == [(thread_id, "Plans", None)]
    assert alice_api.delete(f"/api/threads/{thread_id}/").status_code == 204


def test_it_answers_a_new_thread_with_active_run_as_get_does(alice_api):
    r = alice_api.post("/api/threads/", {}, format="json")
    assert r.status_code == 201
    assert r.data == alice_api.get(f"/api/threads/{r.data['id']}/").data
    assert r.data["active_run"] is None


def test_it_refuses_to_delete_a_thread_with_an_active_run(alice_api, thread):
    run_id = start(alice_api, thread).data["id"]
    assert alice_api.get(f"/api/threads/{thread.pk}/").data["active_run"] == run_id
    r = alice_api.delete(f"/api/threads/{thread.pk}/")
    assert r.status_code == 409
    assert Thread.objects.filter(pk=thread.pk).exists()


def test_it_starts_a_run(alice_api, thread, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):  # the start's commit
        r = start(alice_api, thread, message="What now?")
    assert r.status_code == 202
    assert r.data["status"] == "queued"
    assert r.data["events_url"] == f"/api/runs/{r.data['id']}/events/"
    messages = alice_api.get(f"/api/threads/{thread.pk}/messages/").data["results"]
    assert [(m["role"], m["content"], str(m["run"])) for m in messages] == [
        ("user", "What now?", r.data["id"]),
    ]
    assert alice_api.get(f"/api/threads/{thread.pk}/").data["title"] == "What now?"
    events = stream.StreamStorage().get_events(f"run-{r.data['id']}", 0)
    assert [(e.id, e.type) for e in events] == [(1, "run.status")]


def test_it_accepts_bearer_and_token_keys_and_refuses_bad_ones(alice, thread):
    _, key = ApiKey.issue(owner=alice)
    client = APIClient()
    for header in [f"Bearer {key}", f"Token {key}"]:
        assert client.get("/api/threads/", HTTP_AUTHORIZATION=header).status_code == 200
    assert client.get("/api/threads/", HTTP_AUTHORIZATION="Bearer nope").status_code == 401
    assert client.get("/api/threads/").status_code in (401, 403)


def test_it_accepts_a_session(alice, thread):
    client = APIClient()
    client.force_login(alice)
    assert client.get(f"/api/threads/{thread.pk}/").status_code == 200


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({}, "message", "This field is required."),
        ({"message": ""}, "message", "This field may not be blank."),
        ({"message": "   "}, "message", "This field may not be blank."),
        ({"message": None}, "message", "This field may not be null."),
        ({"message": "x" * 32769}, "message", "no more than 32768 bytes (it has 32769)"),
        ({"message": "é" * 16385}, "message", "no more than 32768 bytes (it has 32770)"),
        ({"message": "hi", "agent": 999999}, "agent", "does not exist"),
        ({"message": "hi", "agent": "abc"}, "agent", "Incorrect type"),
        ({"message": "hi", "if_busy": "wait"}, "if_busy", '"wait" is not a valid choice.'),
    ],
)
def test_it_refuses_bad_run_input(alice_api, thread, body, field, reason):
    r = alice_api.post(f"/api/threads/{thread.pk}/runs/", body, format="json")
    assert r.status_code == 400
    assert reason in str(r.data[field])
    assert not Run.objects.exists()


def test_it_applies_the_configured_message_limit(alice_api, thread, settings):
    settings.RUN_MESSAGE_MAX_BYTES = 10
    assert start(alice_api, thread, message="x" * 10).status_code == 202
    r = alice_api.post(f"/api/threads/{thread.pk}/runs/", {"message": "x" * 11}, format="json")
    assert "no more than 10 bytes" in str(r.data["message"])


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('{"message": "hi"', "JSON parse error"),
        ("[1, 2]", "Expected a dictionary"),
        ("null", "No data provided"),
    ],
)
def test_it_refuses_malformed_json(alice_api, thread, raw, reason):
    r = alice_api.generic(
        "POST", f"/api/threads/{thread.pk}/runs/", raw, content_type="application/json"
    )
    assert r.status_code == 400
    assert reason in str(r.data)


def test_it_answers_409_on_a_busy_thread(alice_api, thread):
    first = start(alice_api, thread).data["id"]
    r = start(alice_api, thread)
    assert r.status_code == 409
    assert r.data["code"] == "thread_busy"
    assert r.data["run"] == first
    assert Run.objects.count() == 1


def test_it_interrupts_a_queued_run_when_asked(alice_api, thread):
    first = start(alice_api, thread).data["id"]
    r = start(alice_api, thread, message="Instead, this", if_busy="interrupt")
    assert r.status_code == 202
    assert Run.objects.get(pk=first).status == Run.Status.STOPPED
    assert Run.objects.get(pk=r.data["id"]).status == Run.Status.QUEUED


def test_it_queues_a_message_on_a_busy_thread_when_asked(
    alice_api, thread, django_capture_on_commit_callbacks
):
    first = start(alice_api, thread).data["id"]
    answers = [start(alice_api, thread, message=m, if_busy="enqueue") for m in ["two", "three"]]
    assert [r.status_code for r in answers] == [202, 202]
    assert [(r.data["position"], r.data["status"], r.data["run"]) for r in answers] == [
        (1, "pending", None),
        (2, "pending", None),
    ]
    assert answers[0].data["message"] == "two"
    listed = alice_api.get(f"/api/threads/{thread.pk}/follow-ups/").data["results"]
    assert [f["follow_up"] for f in listed] == [r.data["follow_up"] for r in answers]
    assert Run.objects.count() == 1
    with django_capture_on_commit_callbacks(execute=True):  # the stop's end starts the next
        assert alice_api.post(f"/api/runs/{first}/stop/").status_code == 202
    [pending] = alice_api.get(f"/api/threads/{thread.pk}/follow-ups/").data["results"]
    assert (pending["follow_up"], pending["position"]) == (answers[1].data["follow_up"], 1)
    active = alice_api.get(f"/api/threads/{thread.pk}/").data["active_run"]
    assert Run.objects.get(pk=active).follow_up.pk == answers[0].data["follow_up"]
    messages = alice_api.get(f"/api/threads/{thread.pk}/messages/").data["results"]
    assert [(m["content"], str(m["run"])) for m in messages] == [
        ("Hello", first),
        ("two", active),
    ]


def test_it_starts_at_once_when_asked_to_queue_on_an_idle_thread(alice_api, thread):
    r = start(alice_api, thread, if_busy="enqueue")
    assert r.status_code == 202
    assert r.data["status"] == "queued"
    assert r.data["events_url"] == f"/api/runs/{r.data['id']}/events/"


def test_it_caps_the_messages_queued_on_a_thread(alice_api, thread, settings):
    settings.RUN_FOLLOW_UPS_MAX = 2
    start(alice_api, thread)
    codes = [start(alice_api, thread, if_busy="enqueue").status_code for _ in range(3)]
    assert codes == [202, 202, 429]
    r = start(alice_api, thread, if_busy="enqueue")
    assert r.data["code"] == "too_many_follow_ups"
    assert "RUN_FOLLOW_UPS_MAX" in r.data["detail"]


def test_it_refuses_to_queue_on_another_users_thread(alice_api, bob_api, thread):
    start(alice_api, thread)
    assert start(bob_api, thread, if_busy="enqueue").status_code == 404
    assert bob_api.get(f"/api/threads/{thread.pk}/follow-ups/").status_code == 404
    assert not thread.follow_ups.exists()


def test_it_refuses_an_unknown_busy_policy(alice_api, thread):
    r = start(alice_api, thread, if_busy="queue")
    assert r.status_code == 400
    assert "if_busy" in r.data


def test_it_caps_active_runs_per_user(alice, alice_api, settings):
    settings.RUN_MAX_ACTIVE_PER_USER = 2
    threads = [create_thread(owner=alice, agent=alice.agents.get()) for _ in range(3)]
    assert [start(alice_api, t).status_code for t in threads] == [202, 202, 429]
    r = start(alice_api, threads[2])
    assert r.data["code"] == "too_many_runs"
    alice_api.post(f"/api/runs/{Run.objects.first().pk}/stop/")
    assert start(alice_api, threads[2]).status_code == 202


def test_it_stops_a_queued_run_at_once_and_twice_harmlessly(
    alice_api, thread, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):  # the start's commit
        run_id = start(alice_api, thread).data["id"]
    for _ in range(2):
        r = alice_api.post(f"/api/runs/{run_id}/stop/")
        assert r.status_code == 202
        assert r.data["status"] == "stopped"
    events = stream.StreamStorage().get_events(f"run-{run_id}", 0)
    assert [(e.type, json.loads(e.data)["status"]) for e in events] == [
        ("run.status", "queued"),
        ("run.status", "stopped"),
    ]


def test_it_lists_runs_by_status_thread_and_kind(alice, alice_api, thread):
    other = create_thread(owner=alice, agent=alice.agents.get())
    stopped = start(alice_api, thread).data["id"]
    alice_api.post(f"/api/runs/{stopped}/stop/")
    queued = start(alice_api, other).data["id"]

    def ids(query):
        return [r["id"] for r in alice_api.get(f"/api/runs/{query}").data["results"]]

    assert ids("?status=stopped") == [stopped]
    assert ids("?status=queued") == [queued]
    assert ids(f"?thread={thread.pk}") == [stopped]
    assert ids("") == [queued, stopped]
    assert ids("?kind=agent") == [queued, stopped]
    assert ids("?kind=workflow") == []
    assert alice_api.get(f"/api/runs/{queued}/").data["kind"] == "agent"
    r = alice_api.get("/api/runs/?status=lost")
    assert r.status_code == 400
    assert "not a valid choice" in str(r.data["status"])


def test_it_paginates(alice, alice_api):
    for i in range(3):
        Thread.objects.create(owner=alice, title=f"t{i}")
    page = alice_api.get("/api/threads/?page_size=2").data
    assert (page["count"], len(page["results"]), page["next"] is not None) == (3, 2, True)


def test_it_answers_404_for_malformed_ids(alice_api):
    assert alice_api.get("/api/runs/not-a-uuid/").status_code == 404
    assert alice_api.get("/api/threads/abc/").status_code == 404


@pytest.mark.django_db(transaction=True)  # the enqueue happens at the start's commit
def test_a_start_the_queue_refuses_answers_503_and_saves_nothing(
    alice, alice_api, thread, monkeypatch
):
    def broker_down(run_id):
        raise OSError("Connection refused")

    monkeypatch.setattr(tasks.execute_run_task, "delay", broker_down)
    r = start(alice_api, thread)
    assert (r.status_code, r.data["code"]) == (503, "queue_unavailable")
    assert not Run.objects.exists()
    assert not thread.messages.exists()
    workflow = Workflow.objects.create(owner=alice, name="W", definition=THREE_STEPS)
    r = alice_api.post(f"/api/workflows/{workflow.pk}/runs/", {"inputs": {"a": 1}}, format="json")
    assert r.status_code == 503
    assert list(Thread.objects.all()) == [thread]  # the workflow's new thread went with its run

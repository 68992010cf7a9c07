"""Idempotent starts: an Idempotency-Key on a thread's, a workflow's or a schedule's start answers
a repeat with the first answer (200) and starts nothing; another body is a 422; a failed start
frees its key; keys expire after 24 h; requests racing with one key start one run."""

import threading
import time
from datetime import timedelta

import httpx
import pytest
from django.db import connection
from django.utils import timezone

from agents.models import create_thread
from config.celery import app as celery_app
from runs import idempotency, signals
from runs.models import IdempotencyKey, Run
from scheduling.models import Fire, Schedule
from workflows.models import Workflow

from conftest import client_for
from examples import THREE_STEPS

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_queue")]  # runs stay queued


@pytest.fixture
def workflow(alice):
    return Workflow.objects.create(owner=alice, name="Sum", definition=THREE_STEPS)


@pytest.fixture
def schedule(alice):
    return Schedule.objects.create(
        owner=alice, name="Hourly", target="agent", agent=alice.agents.get(), prompt="Hi",
        cron="0 * * * *",
    )  # fmt: skip


def endpoints(alice, thread, workflow, schedule):
    """(url, a body, another body) for each start that takes a key."""
    return [
        (f"/api/threads/{thread.pk}/runs/", {"message": "Hi"}, {"message": "Hello"}),
        (f"/api/workflows/{workflow.pk}/runs/", {"inputs": {"a": 1}}, {"inputs": {"a": 2}}),
        (f"/api/schedules/{schedule.pk}/trigger/", {}, {"now": True}),
    ]


def post(api, url, body, key):
    return api.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY=key)


def started():
    return Run.objects.count(), Fire.objects.count()


def test_the_same_key_and_body_answer_the_first_answer_and_start_nothing(
    alice, alice_api, thread, workflow, schedule
):
    for url, body, _ in endpoints(alice, thread, workflow, schedule):
        first = post(alice_api, url, body, "key-1")
        assert first.status_code == 202, first.content
        before = started()
        again = post(alice_api, url, body, "key-1")
        assert again.status_code == 200, again.content
        assert again.content == first.content
        assert started() == before, url
    assert Run.objects.count() == 3  # one per endpoint: the key is per endpoint
    assert IdempotencyKey.objects.filter(owner=alice).count() == 3


def test_the_same_body_is_the_same_whatever_its_spacing_or_key_order(alice_api, workflow):
    url = f"/api/workflows/{workflow.pk}/runs/"
    first = post(alice_api, url, {"inputs": {"a": 1, "topic": "t"}}, "k")
    spaced = '{ "inputs" : { "topic": "t",  "a": 1 } }'
    again = alice_api.generic(
        "POST", url, spaced, content_type="application/json", HTTP_IDEMPOTENCY_KEY="k"
    )
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == first.json()
    assert Run.objects.count() == 1


def test_the_same_key_with_another_body_is_a_422_naming_the_header(
    alice, alice_api, thread, workflow, schedule
):
    for url, body, other in endpoints(alice, thread, workflow, schedule):
        assert post(alice_api, url, body, "key-2").status_code == 202
        before = started()
        r = post(alice_api, url, other, "key-2")
        assert r.status_code == 422, r.content
        assert r.json()["code"] == "idempotency_key_reused"
        assert r.json()["field"] == "Idempotency-Key"
        assert started() == before


def test_another_users_same_key_is_theirs(alice, alice_api, bob, bob_api, workflow):
    bobs = Workflow.objects.create(owner=bob, name="Sum", definition=THREE_STEPS)
    mine = post(alice_api, f"/api/workflows/{workflow.pk}/runs/", {"inputs": {"a": 1}}, "shared")
    theirs = post(bob_api, f"/api/workflows/{bobs.pk}/runs/", {"inputs": {"a": 1}}, "shared")
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["id"] != theirs.json()["id"]
    # and bob's key does not reach alice's workflow: that is still a 404
    r = post(bob_api, f"/api/workflows/{workflow.pk}/runs/", {"inputs": {"a": 1}}, "shared")
    assert r.status_code == 404
    assert Run.objects.filter(owner=alice).count() == Run.objects.filter(owner=bob).count() == 1


def test_a_key_older_than_a_day_starts_a_new_run_and_is_purged(alice_api, workflow):
    url = f"/api/workflows/{workflow.pk}/runs/"
    first = post(alice_api, url, {"inputs": {"a": 1}}, "old")
    Run.objects.update(status=Run.Status.COMPLETED)  # its thread is free: not the point here
    IdempotencyKey.objects.update(created=timezone.now() - timedelta(hours=24, seconds=1))
    again = post(alice_api, url, {"inputs": {"a": 2}}, "old")  # a new request: any body
    assert again.status_code == 202, again.content
    assert again.json()["id"] != first.json()["id"]
    assert Run.objects.count() == 2
    IdempotencyKey.objects.update(created=timezone.now() - timedelta(hours=25))
    post(alice_api, url, {"inputs": {"a": 3}}, "fresh")
    assert idempotency.keys_purge() == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["fresh"]


def test_a_beat_entry_purges_the_expired_keys(alice, settings):
    entry = settings.CELERY_BEAT_SCHEDULE["purge-idempotency-keys"]
    old = timezone.now() - timedelta(hours=24, minutes=1)
    for key, created in (("old", old), ("new", timezone.now())):
        IdempotencyKey.objects.create(
            owner=alice, scope="POST /api/x/", key=key, fingerprint="f", created=created
        )
    assert celery_app.tasks[entry["task"]]() == 1
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["new"]


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\xe9", "tab\there", "nl\x7f"])
def test_a_bad_key_is_a_400_naming_the_header(alice_api, thread, key):
    r = post(alice_api, f"/api/threads/{thread.pk}/runs/", {"message": "Hi"}, key)
    assert r.status_code == 400, r.content
    assert r.json()["field"] == "Idempotency-Key"
    assert "printable ASCII" in r.json()["detail"]
    assert not Run.objects.exists() and not IdempotencyKey.objects.exists()


def test_the_longest_key_is_taken(alice_api, thread):
    key = "~ " * 127 + "!"
    r = post(alice_api, f"/api/threads/{thread.pk}/runs/", {"message": "Hi"}, key)
    assert r.status_code == 202, r.content
    assert IdempotencyKey.objects.get().key == key


def test_a_failed_start_frees_its_key(alice, alice_api, thread):
    url = f"/api/threads/{thread.pk}/runs/"
    busy = post(alice_api, url, {"message": "First"}, "a")
    assert busy.status_code == 202
    refused = post(alice_api, url, {"message": "Second"}, "b")
    assert (refused.status_code, refused.json()["code"]) == (409, "thread_busy")
    bad = post(alice_api, url, {"message": ""}, "c")
    assert bad.status_code == 400
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["a"]
    Run.objects.update(status=Run.Status.COMPLETED)
    # the same keys again, the thread free: they start, with any body
    assert post(alice_api, url, {"message": "Second"}, "b").status_code == 202
    assert post(alice_api, url, {"message": "Third"}, "c").status_code == 409  # busy again


def test_a_queued_follow_up_is_replayed_as_such(alice_api, thread):
    url = f"/api/threads/{thread.pk}/runs/"
    post(alice_api, url, {"message": "First"}, "a")
    body = {"message": "Then this", "if_busy": "enqueue"}
    first = post(alice_api, url, body, "b")
    again = post(alice_api, url, body, "b")
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == first.json() and first.json()["status"] == "pending"
    assert thread.follow_ups.count() == 1


def test_a_request_while_the_first_is_in_progress_waits_then_answers_409(
    alice, alice_api, thread, settings
):
    settings.IDEMPOTENCY_KEY_WAIT = 0.2
    scope = f"POST /api/threads/{thread.pk}/runs/"
    IdempotencyKey.objects.create(
        owner=alice, scope=scope, key="k", created=timezone.now(),
        fingerprint=idempotency.fingerprint({"message": "Hi"}),
    )  # fmt: skip
    started_at = time.monotonic()
    r = post(alice_api, f"/api/threads/{thread.pk}/runs/", {"message": "Hi"}, "k")
    assert (r.status_code, r.json()["code"]) == (409, "idempotency_key_in_progress")
    assert time.monotonic() - started_at >= 0.2
    assert not Run.objects.exists()


def test_a_claim_left_by_a_dead_process_is_taken_over(alice, alice_api, thread):
    scope = f"POST /api/threads/{thread.pk}/runs/"
    IdempotencyKey.objects.create(
        owner=alice, scope=scope, key="k", created=timezone.now() - timedelta(minutes=6),
        fingerprint=idempotency.fingerprint({"message": "Hi"}),
    )  # fmt: skip
    r = post(alice_api, f"/api/threads/{thread.pk}/runs/", {"message": "Hi"}, "k")
    assert r.status_code == 202, r.content
    assert str(IdempotencyKey.objects.get().run_id) == r.json()["id"]


def test_the_schema_documents_the_header_and_its_answers(client):
    paths = client.get("/api/schema/?format=json").json()["paths"]
    for path in ("/api/threads/{id}/runs/", "/api/workflows/{id}/runs/",
                 "/api/schedules/{id}/trigger/"):  # fmt: skip
        operation = paths[path]["post"]
        headers = [p["name"] for p in operation["parameters"] if p["in"] == "header"]
        assert headers == ["Idempotency-Key"], path
        assert {"200", "202", "409", "422"} <= set(operation["responses"]), path
        assert "idempotency_key_reused" in operation["responses"]["422"]["description"]


# The race, against PostgreSQL's unique index and row locks: real threads, each its own
# connection, one key.


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent writers: PostgreSQL")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("slow", [False, True], ids=["at-once", "slow-start"])
def test_requests_racing_with_one_key_start_one_run(alice, workflow, slow):
    """With `slow`, the winner's start takes 0.5 s, so the others find its claim unanswered and
    wait for the answer."""
    count = 6
    url = f"/api/workflows/{workflow.pk}/runs/"
    clients = [client_for(alice) for _ in range(count)]
    barrier, answers = threading.Barrier(count), [None] * count

    def slow_start(sender, **kwargs):
        time.sleep(0.5)

    def send(i):
        try:
            barrier.wait(10)
            answers[i] = post(clients[i], url, {"inputs": {"a": 7}}, "race")
        finally:
            connection.close()

    if slow:
        signals.run_starting.connect(slow_start)
    try:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        signals.run_starting.disconnect(slow_start)
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * (count - 1) + [202], [a.content for a in answers]
    assert len({a.content for a in answers}) == 1
    assert Run.objects.count() == 1
    assert IdempotencyKey.objects.get().run_id == Run.objects.get().pk


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_http_requests_racing_with_one_key_to_the_live_server_start_one_run(live, live_api, alice):
    """The same race over HTTP, against the uvicorn process the deployment runs (ASGI: each
    request's view in a thread of its own)."""
    thread = create_thread(owner=alice, agent=alice.agents.get())
    count = 4
    url = f"{live.base_url}/api/threads/{thread.pk}/runs/"
    headers = {**live_api, "Idempotency-Key": f"live-{thread.pk}"}
    barrier, answers = threading.Barrier(count), [None] * count

    def send(i):
        barrier.wait(10)
        answers[i] = httpx.post(url, json={"message": "Hi"}, headers=headers, timeout=30)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(a.status_code for a in answers) == [200] * (count - 1) + [202], [
        a.text for a in answers
    ]
    assert len({a.json()["id"] for a in answers}) == 1
    assert Run.objects.filter(thread=thread).count() == 1

"""A thread's stream (/api/threads/<id>/events/): the runs that start on the thread, told to its
pages at once, against the live web and worker processes."""

import asyncio
import contextlib
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from django.db import connection
from django_eventstream import views
from rest_framework.test import APIClient

from runs import eventstream, stream
from runs.models import Run

from conftest import bearer, new_thread, start, wait_for, wait_for_status
from sse import parse

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WAIT = 10  # seconds any one read may take


def url(live, thread_id):
    return f"{live.base_url}/api/threads/{thread_id}/events/"


@contextlib.contextmanager
def opened(live, thread_id, headers):
    """The thread's stream, opened: (the response, an iterator of its events). A read that
    waits longer than WAIT fails: the live process' keep-alives come every 15 s."""
    with (
        httpx.Client(timeout=WAIT) as client,
        client.stream("GET", url(live, thread_id), headers=headers) as response,
    ):
        yield response, parse(response.iter_lines())


def stop(live, run_id, headers):
    httpx.post(f"{live.base_url}/api/runs/{run_id}/stop/", headers=headers)


def test_it_announces_a_run_started_through_the_api(live, live_api, alice):
    thread = new_thread(alice, words=2000, delay_ms=50)
    with opened(live, thread.pk, live_api) as (response, events):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert next(events).type == "stream-open"  # listening from now on
        run_id = start(live, live_api, thread)
        try:
            event = next(events)
        finally:
            stop(live, run_id, live_api)
    assert (event.type, event.json, event.id) == (
        "run.started",
        {"run": run_id, "thread": thread.pk},
        None,
    )


def test_a_stream_opened_after_the_start_tells_the_active_run_first(live, live_api, alice):
    """No gap between a page's render and its stream: the run already active is the first
    event, at every connection."""
    thread = new_thread(alice, words=2000, delay_ms=50)
    run_id = start(live, live_api, thread)
    try:
        for _ in range(2):  # and again on a reconnection
            with opened(live, thread.pk, live_api) as (_, events):
                assert next(events).type == "stream-open"
                event = next(events)
                assert (event.type, event.json) == (
                    "run.started",
                    {"run": run_id, "thread": thread.pk},
                )
    finally:
        stop(live, run_id, live_api)


def test_each_run_is_told_to_its_threads_streams_only(live, live_api, alice):
    first, other = new_thread(alice, words=3), new_thread(alice, words=3)  # one agent: paced once
    with (
        opened(live, first.pk, live_api) as (_, events),
        opened(live, other.pk, live_api) as (_, others),
    ):
        assert next(events).type == next(others).type == "stream-open"
        runs = []
        for _ in range(2):
            runs.append(start(live, live_api, first))
            event = next(events)
            assert (event.type, event.json["run"]) == ("run.started", runs[-1])
            wait_for_status(runs[-1], Run.TERMINAL)
        elsewhere = start(live, live_api, other)
        assert next(others).json["run"] == elsewhere  # not one of the first thread's
        wait_for_status(elsewhere, Run.TERMINAL)


def test_another_users_thread_is_not_found(live, live_api, alice, bob):
    thread = new_thread(alice)
    r = httpx.get(url(live, thread.pk), headers=bearer(bob), timeout=WAIT)
    assert (r.status_code, r.json()) == (404, {"detail": "Not found."})
    r = httpx.get(url(live, 10**30), headers=live_api, timeout=WAIT)
    assert r.status_code == 404
    r = httpx.get(url(live, thread.pk), timeout=WAIT)  # no credentials
    assert r.status_code == 401


def test_thread_streams_count_against_the_users_stream_cap(live, live_api, alice, settings):
    cap = settings.SSE_MAX_STREAMS_PER_USER  # the live web process has the default too
    thread = new_thread(alice, words=2000, delay_ms=50)
    run_id = start(live, live_api, thread)
    slots, r = f"relay:streams:{alice.pk}", stream.client()
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(opened_run(live, run_id, live_api))  # a run's stream counts too
            for _ in range(cap - 1):
                response, _ = held.enter_context(opened(live, thread.pk, live_api))
                assert response.status_code == 200
            assert r.zcard(slots) == cap
            refused = httpx.get(url(live, thread.pk), headers=live_api, timeout=WAIT)
            assert refused.status_code == 429
            assert refused.json()["code"] == "too_many_streams"
            refused = httpx.get(
                f"{live.base_url}/api/runs/{run_id}/events/", headers=live_api, timeout=WAIT
            )
            assert refused.status_code == 429
        finally:
            stop(live, run_id, live_api)
    # every stream that ended gave its slot back, the thread's as the run's
    wait_for(lambda: not r.zcard(slots), timeout=5, message="the slots to be freed")
    with opened(live, thread.pk, live_api) as (response, _):
        assert response.status_code == 200


@contextlib.contextmanager
def opened_run(live, run_id, headers):
    with (
        httpx.Client(timeout=WAIT) as client,
        client.stream(
            "GET", f"{live.base_url}/api/runs/{run_id}/events/", headers=headers
        ) as response,
    ):
        assert response.status_code == 200
        yield response


def test_forty_open_thread_streams_hold_no_database_connection_or_thread(live, live_api, alice):
    thread = new_thread(alice, words=3)

    def connections():
        with connection.cursor() as cursor:
            cursor.execute(
                "select count(*) from pg_stat_activity where datname = current_database()"
                " and pid <> pg_backend_pid()"
            )
            return cursor.fetchone()[0]

    postgresql = connection.vendor == "postgresql"
    before = connections() if postgresql else 0
    with contextlib.ExitStack() as held:
        streams = [held.enter_context(opened(live, thread.pk, live_api))[1] for _ in range(40)]
        for events in streams:
            assert next(events).type == "stream-open"
        if postgresql:
            # a few more for the web process' executor at most, not one per stream (what other
            # tests' processes and threads hold already is not this test's)
            assert connections() - before < 10, f"{before} connections before the streams"
        # the executors' few threads, none per stream (config/asgi.py routes them so)
        assert psutil.Process(live.processes["web"].pid).num_threads() < 20
        run_id = start(live, live_api, thread)
        told = [next(events).json["run"] for events in streams]
    assert told == [run_id] * 40
    wait_for_status(run_id, Run.TERMINAL)


def test_the_schema_describes_the_thread_stream():
    operation = (
        APIClient()
        .get("/api/schema/?format=json")
        .json()["paths"]["/api/threads/{thread_id}/events/"]["get"]
    )
    assert operation["operationId"] == "threads_events"
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert {"401", "404", "429"} <= set(operation["responses"])
    assert "| `run.started` | `run`, `thread` |" in operation["description"]


def test_a_process_first_stream_listens_before_it_reads_the_database(
    own_redis, settings, monkeypatch
):
    """A process' pub/sub listener connects once its first subscription has started it: the
    thread stream waits for it (Subscription.listening) before it reads the active run, or a
    run announced in between would reach no one."""
    settings.EVENTSTREAM_REDIS = {**settings.EVENTSTREAM_REDIS, "port": own_redis.port, "db": 0}
    monkeypatch.setattr(views, "listener_manager", views.ListenerManager())  # a fresh process'
    eventstream.install_resilient_listener()
    channel = stream.thread_channel(7)

    async def scenario():
        with eventstream.subscribe(channel, user_id=7) as live:
            await live.listening(WAIT)
            stream.client().publish(eventstream.PUBSUB_CHANNEL, announcement(channel))
            assert await live.wait(WAIT), "the announcement did not come"
            return live.take()

    with ThreadPoolExecutor(1) as executor:  # Playwright may hold an event loop in this thread
        queued, missed = executor.submit(asyncio.run, scenario()).result(timeout=60)
    assert [(e.channel, e.type) for e in queued] == [(channel, "run.started")]
    assert not missed


def announcement(channel):
    fields = (channel, "run.started", '{"run": "x", "thread": 7}', None)
    return json.dumps(dict(zip(eventstream.MESSAGE_FIELDS, fields, strict=True)))

"""End to end: runs started over HTTP, executed by a real Celery worker process, followed over
SSE from a real ASGI server."""

import signal
import threading

import httpx
import psutil
import pytest
from django.db import connection
from django.test import override_settings

from agents import services
from agents.models import ApiKey, create_thread
from runs import stream
from runs.models import Run

from conftest import new_thread, pace, start, wait_for, wait_for_status
from sse import assert_consecutive, follow, parse, text_of

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_it_streams_a_run_from_start_to_completed(live, live_api, alice):
    thread = new_thread(alice, words=50)
    run_id = start(live, live_api, thread)
    events = follow(live.base_url, run_id, live_api)
    assert_consecutive(events)
    statuses = [e.json["status"] for e in events if e.type == "run.status"]
    assert statuses == ["queued", "running", "completed"]
    assert events[-1].type == "run.status"
    saved = thread.messages.get(role="assistant")
    assert text_of(events) == saved.content
    assert len(saved.content.split()) == 50
    assert Run.objects.get(pk=run_id).status == Run.Status.COMPLETED


def test_it_streams_a_tool_calling_run(live, live_api, alice):
    thread = new_thread(alice)
    run_id = start(live, live_api, thread, "calculate (2 + 3) * 4")
    events = follow(live.base_url, run_id, live_api)
    done = next(e.json for e in events if e.type == "tool.done")
    assert (done["name"], done["output"]) == ("calculator", "20")
    assert text_of(events) == "The answer is 20."
    assert events[-1].json["status"] == "completed"


def test_it_resumes_mid_run_without_gap_or_duplicate(live, live_api, alice):
    thread = new_thread(alice, words=120, delay_ms=10)
    run_id = start(live, live_api, thread)
    received = []
    # drop the connection three times while the worker is still writing
    for _ in range(3):
        last = received[-1].id if received else None
        seen = len(received)
        received += follow(
            live.base_url,
            run_id,
            live_api,
            last_event_id=last,
            until=lambda e, seen=seen: e.type == "message.delta" and e.number > seen + 3,
        )
    received += follow(live.base_url, run_id, live_api, last_event_id=received[-1].id)
    assert_consecutive(received)
    assert received[-1].json["status"] == "completed"
    assert text_of(received) == thread.messages.get(role="assistant").content


def test_it_resumes_with_the_query_parameter_too(live, live_api, alice):
    thread = new_thread(alice, words=30, delay_ms=5)
    run_id = start(live, live_api, thread)
    first = follow(live.base_url, run_id, live_api, until=lambda e: e.number == 4)
    url = f"{live.base_url}/api/runs/{run_id}/events/?lastEventId={first[-1].id}"
    with httpx.stream("GET", url, headers=live_api, timeout=30) as response:
        rest = [e for e in parse(response.iter_lines()) if e.id]
    assert_consecutive(first + rest)


def test_it_replays_a_finished_run_from_zero_and_then_has_nothing_more(live, live_api, alice):
    thread = new_thread(alice, words=20)
    run_id = start(live, live_api, thread)
    live_events = follow(live.base_url, run_id, live_api)
    replay = follow(live.base_url, run_id, live_api, last_event_id=f"run-{run_id}:0")
    assert [(e.id, e.type, e.data) for e in replay] == [(e.id, e.type, e.data) for e in live_events]
    # a client that has the terminal event is told there is nothing more (an EventSource stops)
    r = httpx.get(
        f"{live.base_url}/api/runs/{run_id}/events/",
        headers={**live_api, "Last-Event-ID": live_events[-1].id},
    )
    assert r.status_code == 204


def test_it_sends_stream_reset_for_an_id_older_than_the_log(live, live_api, alice):
    thread = new_thread(alice, words=300)
    run_id = start(live, live_api, thread)
    events = follow(live.base_url, run_id, live_api)
    # what MAXLEN does to a long run's log: only the newest entries are kept
    stream.client().xtrim(stream.log_key(f"run-{run_id}"), maxlen=2, approximate=False)
    reset = follow(live.base_url, run_id, live_api, last_event_id=f"run-{run_id}:1")
    assert reset[0].type == "stream-reset"
    assert reset[0].id == events[-1].id


def test_it_hides_a_run_and_its_stream_from_other_users(live, live_api, alice, bob):
    run_id = start(live, live_api, new_thread(alice))
    bob_headers = {"Authorization": f"Token {ApiKey.issue(owner=bob)[1]}"}
    base = f"{live.base_url}/api/runs/{run_id}"
    assert httpx.get(f"{base}/events/", headers=bob_headers).status_code == 404
    assert httpx.get(f"{base}/", headers=bob_headers).status_code == 404
    assert httpx.get(f"{base}/events/").status_code == 401
    assert httpx.get(f"{base}/events/", headers={"Authorization": "Bearer nope"}).status_code == 401
    r = httpx.get(f"{base}/events/", headers={**live_api, "Last-Event-ID": "run-other:3"})
    assert r.status_code == 400
    assert "Last-Event-ID must be" in r.json()["detail"]
    wait_for_status(run_id, Run.TERMINAL)


def test_it_stops_a_running_run_within_a_second(live, live_api, alice):
    thread = new_thread(alice, words=1000, delay_ms=20)
    run_id = start(live, live_api, thread)
    events = follow(live.base_url, run_id, live_api, until=lambda e: e.type == "message.delta")
    stopped = threading.Event()
    rest = []

    def listen():
        rest.extend(follow(live.base_url, run_id, live_api, last_event_id=events[-1].id))
        stopped.set()

    listener = threading.Thread(target=listen)
    listener.start()
    r = httpx.post(f"{live.base_url}/api/runs/{run_id}/stop/", headers=live_api)
    assert r.status_code == 202
    assert stopped.wait(1.0), "no terminal event within a second of the stop"
    listener.join()
    second = httpx.post(f"{live.base_url}/api/runs/{run_id}/stop/", headers=live_api)
    assert second.json()["status"] == "stopped"
    received = events + rest
    assert_consecutive(received)
    assert received[-1].json["status"] == "stopped"
    partial = thread.messages.get(role="assistant").content
    assert text_of(received) == partial
    assert 0 < len(partial.split()) < 1000


def test_it_answers_409_on_a_busy_thread_and_interrupts_when_asked(live, live_api, alice):
    thread = new_thread(alice, words=1000, delay_ms=20)
    first = start(live, live_api, thread, "first")
    follow(live.base_url, first, live_api, until=lambda e: e.type == "message.delta")
    busy = httpx.post(
        f"{live.base_url}/api/threads/{thread.pk}/runs/", json={"message": "x"}, headers=live_api
    )
    assert busy.status_code == 409
    # The first reply is long so that it is still streaming when the interrupt comes (1,000
    # words at 20 ms: 20 s); the second one's length proves nothing, so it is short. The first
    # run's model already has its length: a worker reads the agent once per run.
    pace(alice, words=5)
    second = start(live, live_api, thread, "second", if_busy="interrupt")
    assert Run.objects.get(pk=first).status == Run.Status.STOPPED
    wait_for_status(second, Run.Status.COMPLETED, timeout=60)
    # the interrupted reply lands before the new question
    roles = [(m.role, m.run_id) for m in thread.messages.all()]
    assert [r for r, _ in roles] == ["user", "assistant", "user", "assistant"]
    assert [str(run) for _, run in roles] == [first, first, second, second]


def test_a_run_whose_worker_was_killed_resumes_on_another_and_completes(live, live_api, alice):
    thread = new_thread(alice, words=200, delay_ms=20)
    run_id = start(live, live_api, thread)
    events = follow(live.base_url, run_id, live_api, until=lambda e: e.type == "message.delta")
    rest = []
    listener = threading.Thread(
        target=lambda: rest.extend(
            follow(live.base_url, run_id, live_api, last_event_id=events[-1].id, timeout=60)
        )
    )
    listener.start()
    live.stop("worker", signal.SIGKILL)
    live.start_worker()  # what a supervisor does; the new worker runs the reaper
    live.start_beat()
    try:
        run = wait_for_status(run_id, Run.TERMINAL, timeout=60)
        listener.join(10)
    finally:
        live.stop("beat")
    assert (run.status, run.error, run.resumes) == (Run.Status.COMPLETED, "", 1)
    assert not listener.is_alive()
    everything = events + rest
    assert_consecutive(everything)
    statuses = [(e.json["status"], e.json["error"], e.json["attempt"]) for e in everything
                if e.type == "run.status"]  # fmt: skip
    assert statuses == [
        ("queued", "", 0), ("running", "", 1), ("queued", "worker lost", 1), ("running", "", 2),
        ("completed", "", 2),
    ]  # fmt: skip
    # the lost attempt's reply kept as it was, marked; the new attempt's whole
    cut, whole = thread.messages.filter(role="assistant").order_by("position")
    assert cut.interrupted and 0 < len(cut.content.split()) < 200
    assert not whole.interrupted and len(whole.content.split()) == 200
    assert text_of(everything, whole.pk) == whole.content


@override_settings(RUN_MAX_ACTIVE_PER_USER=100)
def test_one_worker_holds_fifty_slow_runs_at_once(live, live_api, alice):
    agent = pace(alice, words=30, delay_ms=100)  # about 3 s each
    threads = [create_thread(owner=alice, agent=agent) for _ in range(50)]
    # started here, where the cap is raised, rather than through the web process
    runs = [services.agent_start(user=alice, thread=t, message="Go slowly").pk for t in threads]
    running = Run.objects.filter(pk__in=runs, status=Run.Status.RUNNING)
    wait_for(lambda: running.count() == 50, timeout=20, message="50 runs running at once")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "select count(*) from pg_stat_activity where datname = current_database()"
                " and pid <> pg_backend_pid()"
            )
            held = cursor.fetchone()[0]
        assert held < 25, f"{held} database connections for 50 runs"
    wait_for(
        lambda: Run.objects.filter(pk__in=runs, status=Run.Status.COMPLETED).count() == 50,
        timeout=60,
        message="50 runs completed",
    )


def database_connections():
    """Connections to the test database, of every process but this one's own."""
    if connection.vendor != "postgresql":
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def test_forty_open_streams_get_every_event_and_hold_no_database_connection_or_thread(
    live, live_api, alice
):
    thread = new_thread(alice, words=1000, delay_ms=20)
    run_id = start(live, live_api, thread)
    follow(live.base_url, run_id, live_api, until=lambda e: e.type == "message.delta")
    before = database_connections()
    connected = threading.Semaphore(0)
    transcripts = [[] for _ in range(40)]

    def listen(received):
        url = f"{live.base_url}/api/runs/{run_id}/events/"
        with httpx.stream("GET", url, headers=live_api, timeout=60) as response:
            for event in parse(response.iter_lines()):
                if event.type == "stream-open":
                    connected.release()
                elif event.id:
                    received.append(event)

    clients = [threading.Thread(target=listen, args=(t,)) for t in transcripts]
    for client in clients:
        client.start()
    for _ in clients:
        assert connected.acquire(timeout=20)
    if connection.vendor == "postgresql":
        # what the streams added: a few of the web process's pool at most, not one per stream
        # (counted as a difference: the session's other processes and threads hold their own)
        assert database_connections() - before < 10
    # the executors' few threads, none per stream (Django's handler would keep 40 more)
    assert psutil.Process(live.processes["web"].pid).num_threads() < 20
    httpx.post(f"{live.base_url}/api/runs/{run_id}/stop/", headers=live_api)
    for client in clients:
        client.join(20)
    for received in transcripts:
        assert_consecutive(received)
        assert received[-1].json["status"] == "stopped"

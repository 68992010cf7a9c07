"""Fault: Redis (broker, event logs, live fan-out, stop flags) is killed mid-run and restarted
empty on the same port. These tests start a redis-server of their own, and web and worker
processes on it, so the Redis everyone else uses is left alone."""

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from runs.models import Run

from conftest import at_scale, bearer, new_thread, start, start_live, wait_for, wait_for_status
from sse import assert_no_silent_gap, assert_transcript, follow_resuming

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

RUNS = at_scale(3, 20)  # runs in flight when Redis goes away


@pytest.fixture
def redis_live(own_redis, tmp_path):
    processes = start_live(tmp_path, REDIS_URL=own_redis.url, RUN_MAX_ACTIVE_PER_USER=str(RUNS))
    yield processes
    processes.stop_all()


def restart(server, outage=1.0):
    server.kill()
    time.sleep(outage)
    server.start()


def exits(process, timeout):
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def assert_a_new_run_streams(live, headers, user):
    """A run started now completes and streams live (its reply takes about a second)."""
    run_id = start(live, headers, new_thread(user, words=20, delay_ms=50))
    events = follow_resuming(live.base_url, run_id, headers, deadline=time.monotonic() + 20)
    assert events[-1].json["status"] == "completed"
    assert_transcript(events, run_id)


# Celery 5.7.0 closes the broken broker connection in on_connection_error_after_connected with
# ignore_errors(), which lets through the AttributeError kombu's Redis channel raises while
# restoring unacknowledged messages, so a worker with runs in flight (acks_late) logs
# "Unrecoverable error" and exits; pyproject.toml pins celery and kombu below 5.7 for that.
WORKER_EXITS = "the worker exited when it lost Redis with runs in flight (Celery 5.7.0 does)"


def test_the_worker_and_web_recover_when_redis_restarts(own_redis, redis_live, alice):
    headers = bearer(alice)
    restart(own_redis)
    assert_a_new_run_streams(redis_live, headers, alice)
    # and again with runs in flight
    threads = [new_thread(alice, words=80, delay_ms=40) for _ in range(RUNS)]  # about 3 s
    runs = [start(redis_live, headers, t) for t in threads]
    running = Run.objects.filter(pk__in=runs, status=Run.Status.RUNNING)
    wait_for(lambda: running.count() == RUNS, message="the runs to start")
    restart(own_redis)
    active = Run.objects.filter(pk__in=runs, status__in=Run.ACTIVE)
    wait_for(lambda: not active.exists(), timeout=30, message="the runs in flight to end")
    assert not exits(redis_live.processes["worker"], timeout=5), WORKER_EXITS
    assert_a_new_run_streams(redis_live, headers, alice)


def test_a_queued_run_whose_message_redis_lost_still_ends(own_redis, redis_live, alice):
    redis_live.stop("worker")  # the run waits in Redis' queue...
    run_id = start(redis_live, bearer(alice), new_thread(alice))
    restart(own_redis)  # ...which the restart empties
    redis_live.start_worker()
    redis_live.start_beat()  # the reaper enqueues it again once it has waited 3 s
    try:
        assert wait_for_status(run_id, Run.TERMINAL, timeout=20).status == Run.Status.COMPLETED
    finally:
        redis_live.stop("beat")


@pytest.mark.parametrize("own_redis", [False, True], ids=["empty", "from-disk"], indirect=True)
def test_a_client_following_a_run_through_a_redis_restart_misses_nothing(
    own_redis, redis_live, alice
):
    headers = bearer(alice)
    run_id = start(redis_live, headers, new_thread(alice, words=80, delay_ms=40))
    with ThreadPoolExecutor(1) as pool:
        deadline = time.monotonic() + 20
        client = pool.submit(follow_resuming, redis_live.base_url, run_id, headers, deadline)
        wait_for_status(run_id, Run.Status.RUNNING)
        restart(own_redis)
        events = client.result()
    # The log is gone, or restored without its last second: either way its ids go on from
    # beyond the old ones, so the client gets stream-reset (reloads the run from the database)
    # and follows on from the reset's id; it never takes a new event for the one after its last.
    assert_no_silent_gap(events, run_id)
    assert any(e.type == "stream-reset" for e in events)

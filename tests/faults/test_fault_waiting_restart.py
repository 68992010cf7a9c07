"""Fault: runs wait for an approval while every process (web, worker, beat) stops and Redis
restarts empty (no persistence): the wait is in the database, so once the processes are back
an approval through the API resumes each run, and its clients miss nothing they are not told
of."""

import math
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model

from runs.models import InputRequest, Message, Run

from conftest import at_scale, bearer, new_thread, start, start_live, wait_for
from sse import assert_no_silent_gap, follow, follow_resuming

pytestmark = [
    pytest.mark.faults,
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(at_scale(180, 600)),  # the large counts take minutes, not hours
]

RUNS = at_scale(3, 50)
CALC = '/tool calculator {"expression": "6*7"}'


def is_waiting(event):
    return event.type == "run.status" and event.json["status"] == "waiting"


def approve(live, headers, run_id):
    pending = httpx.get(f"{live.base_url}/api/runs/{run_id}/", headers=headers).json()["pending"]
    [request] = pending
    r = httpx.post(f"{live.base_url}/api/runs/{run_id}/respond/", headers=headers,
                   json={"request": request["id"], "approve": True})  # fmt: skip
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"


def test_waiting_runs_resume_after_every_process_and_redis_restart(own_redis, tmp_path):
    # users of at most RUN_MAX_ACTIVE_PER_USER waiting runs each, whose open streams stay well
    # under SSE_MAX_STREAMS_PER_USER
    per_user = settings.RUN_MAX_ACTIVE_PER_USER
    users = [
        get_user_model().objects.create_user(f"user{n}") for n in range(math.ceil(RUNS / per_user))
    ]
    headers = {user.pk: bearer(user) for user in users}
    # one client for all: an httpx client made per connection costs milliseconds of CPU (its
    # SSL context), which followers reconnecting while the web process is away would take from
    # the processes starting again
    http = httpx.Client(limits=httpx.Limits(max_connections=None, max_keepalive_connections=0))
    began = time.monotonic()
    processes = start_live(tmp_path, REDIS_URL=own_redis.url)
    processes.start_beat()
    try:
        owners = {}
        for n in range(RUNS):
            user = users[n // per_user]
            thread = new_thread(user, tools=["calculator"], approve_tools=["calculator"])
            owners[start(processes, headers[user.pk], thread, CALC)] = user.pk
        waiting = Run.objects.filter(pk__in=owners, status=Run.Status.WAITING)
        wait_for(lambda: waiting.count() == RUNS, timeout=30, message="every run to wait")
        took = {"waiting": time.monotonic() - began}
        # Each run's client has its stream up to the wait. Half of them keep following it
        # through the restarts (reconnecting while the web process is away); the others went
        # away at the wait and come back after the approval with the last id they had.
        deadline = time.monotonic() + at_scale(60, 120)
        had = {
            run: follow(processes.base_url, run, headers[user], until=is_waiting, client=http)
            for run, user in owners.items()
        }

        def resume(run):
            return follow_resuming(processes.base_url, run, headers[owners[run]], deadline,
                                   client=http, received=had[run])  # fmt: skip

        with ThreadPoolExecutor(len(owners)) as pool:
            following = {run: pool.submit(resume, run) for run in list(owners)[::2]}
            took["followed"] = time.monotonic() - began
            processes.stop_all()
            took["stopped"] = time.monotonic() - began
            own_redis.kill()
            own_redis.start()  # empty: it keeps nothing on disk
            assert redis.Redis(port=own_redis.port).dbsize() == 0
            processes.start_web()  # first: it must be listening within 20 s
            processes.start_worker()
            processes.start_beat()
            took["restarted"] = time.monotonic() - began
            for run, user in owners.items():
                approve(processes, headers[user], run)
            streams = {run: future.result() for run, future in following.items()}
            took["approved, followed"] = time.monotonic() - began
            for run in owners.keys() - following.keys():
                streams[run] = resume(run)
        took["came back"] = time.monotonic() - began
    finally:
        processes.stop_all()
        http.close()

    continued = 0
    for run_id, events in streams.items():
        run = Run.objects.get(pk=run_id)
        assert (run.status, run.error, run.attempt) == (Run.Status.COMPLETED, "", 2), run_id
        assert run.requests.get().status == InputRequest.Status.APPROVED
        reply = run.messages.filter(role=Message.Role.ASSISTANT).last()
        assert reply.content == "The answer is 42.", run_id
        assert_no_silent_gap(events, run_id)
        # Redis lost the log, so every client is told (and reloads the run from the database):
        # then it follows the rest live, or the run had ended and the reset is its last event
        after = events[len(had[run_id]) :]
        assert "stream-reset" in [e.type for e in after], (run_id, [e.type for e in after])
        continued += after[-1].type != "stream-reset"
    print(
        f"{RUNS} waiting runs through a restart of web, worker, beat and Redis: all completed;"
        f" every client got a stream-reset, {continued} then the rest live, none a silent gap;"
        f" seconds from the start: {', '.join(f'{k} {v:.1f}' for k, v in took.items())}"
    )

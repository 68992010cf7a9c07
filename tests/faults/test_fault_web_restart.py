"""Fault: the web process is killed (SIGKILL) mid-stream and started again on the same port; its
SSE clients resume with Last-Event-ID."""

import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from agents import services
from runs.models import Run

from conftest import at_scale, new_thread, wait_for
from sse import assert_transcript, follow_resuming

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

RUNS = at_scale(3, 50)
PER_RESTART = at_scale(1, 5)  # runs streaming when the web process is killed


def test_clients_resume_without_gap_or_duplicate_after_the_web_restarts(live, live_api, alice):
    with ThreadPoolExecutor(PER_RESTART) as pool:
        for _ in range(RUNS // PER_RESTART):
            restart_mid_stream(live, live_api, alice, pool)


def restart_mid_stream(live, headers, user, pool):
    threads = [new_thread(user, words=60, delay_ms=30) for _ in range(PER_RESTART)]
    runs = [services.agent_start(user=user, thread=t, message="Go on").pk for t in threads]
    deadline = time.monotonic() + 30
    clients = {
        run: pool.submit(follow_resuming, live.base_url, run, headers, deadline) for run in runs
    }
    running = Run.objects.filter(pk__in=runs, status=Run.Status.RUNNING)
    wait_for(lambda: running.count() == len(runs), message="the runs to start")
    time.sleep(random.uniform(0, 1.0))  # the replies take about 1.8 s
    live.stop("web", signal.SIGKILL)
    live.start_web()
    for run, client in clients.items():
        assert_transcript(client.result(), run)

"""Fault: a worker is killed (SIGKILL) in the middle of a run, at the default lease, heartbeat
and reaper settings (not the short ones of conftest's start_live): the run must go on on the
other worker (its next attempt's `running` on its stream) within 30 s of the kill, and
complete."""

import random
import signal
import time

import pytest

from runs.models import Run

from conftest import bearer, logged, new_thread, start, wait_for, wait_for_status
from live import Live

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

RECOVERY_SECONDS = 30  # the promise: a killed worker's run goes on within this long
DEFAULTS_OF = ("RUN_LEASE_SECONDS", "RUN_HEARTBEAT_SECONDS", "RUN_REAPER_SECONDS")


def resumed(run):
    """The `running` status of the run's second attempt, once it is in the run's log."""
    for _, kind, data in logged(run):
        if kind == "run.status" and data["status"] == "running" and data["attempt"] == 2:
            return data
    return None


def test_a_killed_workers_run_goes_on_within_30_s_at_the_default_settings(
    alice, own_redis, tmp_path
):
    # a Redis of their own: the session's `live` worker must not take the run
    processes = Live(tmp_path, REDIS_URL=own_redis.url)
    for name in DEFAULTS_OF:  # whatever this shell says, the processes get the code's defaults
        processes.env.pop(name, None)
    try:
        # two workers, as a deployment has: the survivor executes the reaper beat sends
        processes.start_worker("worker-a")
        processes.start_worker("worker-b")
        processes.start_beat()
        processes.start_web()
        thread = new_thread(alice, words=300, delay_ms=50)  # 15 s a reply
        run = Run.objects.get(pk=start(processes, bearer(alice), thread, "Go on"))
        running = wait_for_status(run.pk, Run.Status.RUNNING, timeout=60)
        wait_for(lambda: len(logged(run)) > 5, message="the run's reply to be streaming")
        # anywhere in the (default, 5 s) heartbeat period: just after a renewal is the slowest
        time.sleep(random.uniform(0, 5))
        pid = int(running.lease_owner.rsplit(":", 1)[1])
        [victim] = [name for name, p in processes.processes.items() if p.pid == pid]
        killed = time.monotonic()
        processes.stop(victim, signal.SIGKILL)
        wait_for(
            lambda: resumed(run), timeout=RECOVERY_SECONDS + 30, interval=0.05,
            message="the killed worker's run to go on",
        )  # fmt: skip
        took = time.monotonic() - killed
        ended = wait_for_status(run.pk, Run.TERMINAL, timeout=60)
    finally:
        processes.stop_all()
    print(f"SIGKILL to the run going on on the other worker: {took:.1f} s (default settings)")
    assert (ended.status, ended.resumes) == (Run.Status.COMPLETED, 1)
    assert took <= RECOVERY_SECONDS, f"{took:.1f} s from SIGKILL to the run going on"

"""Fault: a deploy stops a worker with SIGTERM while it executes runs. The worker hands them back
and exits at once, instead of waiting for them to end; the other worker resumes each, and it
completes, its stream continuing."""

import signal
import time

import pytest

from runs.models import Run

from conftest import at_scale, bearer, logged, new_thread, start, wait_for, wait_for_status
from live import Live

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

RUNS = at_scale(3, 20)


def test_a_worker_stopped_with_sigterm_hands_its_runs_to_another(alice, own_redis, tmp_path,
                                                                 settings):  # fmt: skip
    settings.RUN_MAX_ACTIVE_PER_USER = RUNS
    # a Redis of their own: the session's `live` worker must not take the runs
    processes = Live(tmp_path, REDIS_URL=own_redis.url, RUN_MAX_ACTIVE_PER_USER=str(RUNS))
    try:
        processes.start_worker("worker-a")
        processes.start_web()
        headers = bearer(alice)
        threads = [new_thread(alice, words=300, delay_ms=20) for _ in range(RUNS)]  # 6 s each
        runs = [start(processes, headers, thread, "Go on") for thread in threads]
        wait_for(lambda: all(len(logged(Run(pk=pk))) > 3 for pk in runs), timeout=30,
                 message="every run to be streaming on worker-a")  # fmt: skip
        processes.start_worker("worker-b")
        time.sleep(2)  # worker-b is up
        asked = time.monotonic()
        processes.processes["worker-a"].send_signal(signal.SIGTERM)
        processes.processes["worker-a"].wait(30)
        exited = time.monotonic() - asked
        ended = [wait_for_status(pk, Run.TERMINAL, timeout=60) for pk in runs]
    finally:
        processes.stop_all()
    print(f"SIGTERM to worker-a's exit: {exited:.1f} s, {RUNS} runs handed back")
    assert exited < 5, f"the worker took {exited:.1f} s to exit: it waited for its runs"
    for run in ended:
        assert run.status == Run.Status.COMPLETED, (run.pk, run.error)
        events = logged(run)
        assert [n for n, _, _ in events] == list(range(1, len(events) + 1))
        handed = [d for _, k, d in events if k == "run.status" and d["error"]]
        assert [d["error"] for d in handed] == ["its worker shut down"]
        cut, whole = run.messages.filter(role="assistant").order_by("position")
        assert cut.interrupted and len(whole.content.split()) == 300

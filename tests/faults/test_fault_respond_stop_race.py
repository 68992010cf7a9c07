"""Fault: an approval and a stop of a waiting run arrive at the same moment, each from its own
thread (its own database connection), in this process (the test is the worker): the two are
serialized on the run's row, so each run has one outcome."""

import threading
from collections import Counter

import pytest
from django.db import connection

from runs import lifecycle
from runs.errors import ServiceConflict
from runs.models import InputRequest, Message, Run

from conftest import at_scale, logged, waiting_run

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

RACES = at_scale(20, 200)


def race(run, request):
    """Answer and stop the run at once; whether the answer was taken."""
    start = threading.Barrier(2, timeout=10)
    taken = []

    def answer():
        try:
            start.wait()
            lifecycle.run_respond(run=run, request=request.pk, approve=True)
            taken.append(True)
        except ServiceConflict:
            taken.append(False)
        finally:
            connection.close()

    def stop():
        try:
            start.wait()
            lifecycle.run_stop(run=Run.objects.get(pk=run.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=answer), threading.Thread(target=stop)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive(), f"run {run.pk}: the race still runs after 10 s"
    assert len(taken) == 1, f"run {run.pk}: the answer raised something else"
    return taken[0]


def test_an_approval_racing_a_stop_leaves_each_run_one_outcome(alice, no_queue):
    outcomes = Counter()
    for _ in range(RACES):
        run = waiting_run(alice, no_queue)
        request = run.requests.get()
        answered = race(run, request)
        no_queue.run()  # the task an answer sent: a worker finds the run stopped
        run.refresh_from_db()
        request.refresh_from_db()
        events = logged(run)
        assert run.status == Run.Status.STOPPED, (run.pk, run.status, run.error)
        terminal = [e for e in events if e[1] == "run.status" and e[2]["status"] in Run.TERMINAL]
        assert [e[2]["status"] for e in terminal] == ["stopped"], run.pk
        assert events[-1] == terminal[0], f"run {run.pk}: events after its terminal one"
        expected = InputRequest.Status.APPROVED if answered else InputRequest.Status.CANCELLED
        assert request.status == expected, run.pk
        resolved = [e[2]["request"]["status"] for e in events if e[1] == "input.resolved"]
        assert resolved == [expected], run.pk
        # the stop came before any worker took the run again: the call was never made
        assert not [e for e in events if e[1] == "tool.started"], run.pk
        assert not run.messages.filter(role=Message.Role.TOOL).exists(), run.pk
        outcomes["approved, then stopped" if answered else "stopped, answer refused"] += 1
    print(f"{RACES} approval/stop races: {dict(outcomes)}")

"""Fault: a stop racing the run's own completion, in this process (the test is the worker)."""

import random
import threading
import time
from collections import Counter

import pytest

from agents import services
from runs import lifecycle, loop
from runs.models import Run

from conftest import at_scale, logged, new_thread

pytestmark = [
    pytest.mark.faults,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("no_queue"),
]

RACES = at_scale(40, 200)


def test_a_stop_racing_completion_ends_each_run_exactly_once(alice):
    thread = new_thread(alice, words=3)
    started = time.monotonic()
    loop.execute(services.agent_start(user=alice, thread=thread, message="Quick").pk)
    lasts = time.monotonic() - started  # how long a run takes here
    outcomes = Counter()
    for _ in range(RACES):
        run = services.agent_start(user=alice, thread=thread, message="Quick")
        worker = threading.Thread(target=loop.execute, args=(run.pk,))
        worker.start()
        time.sleep(random.uniform(0, lasts))  # before the claim, mid-reply or after the end
        lifecycle.run_stop(run=Run.objects.get(pk=run.pk))
        worker.join(5)
        assert not worker.is_alive(), f"run {run.pk} still executing 5 s after its stop"
        run.refresh_from_db()
        events = logged(run)
        terminal = [e for e in events if e[1] == "run.status" and e[2]["status"] in Run.TERMINAL]
        assert [e[2]["status"] for e in terminal] == [run.status], run.pk
        assert events[-1] == terminal[-1]
        outcomes[run.status] += 1
    print(f"{RACES} stop races: {dict(outcomes)}")

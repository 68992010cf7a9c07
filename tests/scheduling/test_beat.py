"""A real beat process fires a per-minute schedule into a real run, executed by a real worker."""

import time

import pytest

from agents.models import Run
from scheduling.models import Fire, Schedule

from conftest import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_real_beat_fires_a_per_minute_schedule_into_a_run(live, alice):
    agent = alice.agents.get()
    agent.config = {"demo": {"words": 5, "delay_ms": 0}}
    agent.save()
    schedule = Schedule.objects.create(
        owner=alice, name="Every minute", target="agent", agent=agent, prompt="Tick",
        cron="* * * * *", timezone="America/New_York",
    )  # fmt: skip
    started = time.monotonic()
    live.start_beat()
    try:
        # the next minute boundary comes within 60 s; beat and the worker add a little
        fire = wait_for(
            lambda: Fire.objects.filter(schedule=schedule, run__isnull=False).first(),
            timeout=90,
            interval=0.5,
            message="a fire from beat",
        )
    finally:
        live.stop("beat")
    assert (fire.outcome, fire.manual, fire.slot.second) == ("started", False, 0)
    run = wait_for(
        lambda: Run.objects.filter(pk=fire.run_id, status=Run.Status.COMPLETED).first(),
        timeout=20,
        message="the scheduled run to complete",
    )
    assert run.trigger == Run.Trigger.SCHEDULE
    assert run.thread.messages.first().content == "Tick"
    print(f"beat fired the schedule {time.monotonic() - started:.1f} s after it started")

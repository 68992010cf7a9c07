"""A real beat process fires schedules into real runs, executed by a real worker, and survives
schedules created and deleted while it reloads them."""

import time
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from agents.models import create_thread
from runs.models import Run
from scheduling.models import Fire, Schedule

from conftest import pace, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_real_beat_fires_a_per_minute_schedule_into_a_run(live, alice):
    agent = pace(alice, words=5)
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


def test_beat_survives_schedules_deleted_while_it_reloads_them(live, live_api, alice):
    """Issue 11, item 1: beat read the periodic tasks, then their crontabs in a second query; a
    schedule deleted in between left a task without its crontab, and beat exited."""
    agent = pace(alice, words=5)
    ticking = Schedule.objects.create(
        owner=alice, name="Every minute", target="agent", agent=agent, prompt="Tick",
        cron="* * * * *",
    )  # fmt: skip
    beat = live.start_beat()
    api = httpx.Client(base_url=f"{live.base_url}/api/schedules/", headers=live_api, timeout=10)
    # Beat looks for changes on every tick (each second here: the reaper's period), so rounds
    # of creates and deletes land across many of its reloads. The fire that shows beat still
    # fires after them can only come at a minute boundary, so the churn fills the time until
    # then: it ends 2 s before the first boundary at least 12 s away. That is 10 to 70 s of
    # reloads under churn (it was 20 s, then up to a minute of waiting for the fire).
    now = timezone.now()
    due = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    if due - now < timedelta(seconds=12):
        due += timedelta(minutes=1)
    churn_until = time.monotonic() + (due - now).total_seconds() - 2
    churned, longest = 0, 0.0
    try:
        # a round that would end past the boundary is not begun, so the fire comes after it
        while time.monotonic() + longest < churn_until and beat.poll() is None:
            round_started = time.monotonic()
            ids = []
            for i in range(99):  # with the ticking one, the default cap of 100 per user
                body = {"name": f"s{churned}-{i}", "target": "agent", "agent": agent.pk,
                        "prompt": "x", "cron": "0 * 1 1 *"}  # fmt: skip
                r = api.post("", json=body)
                assert r.status_code == 201, r.text
                ids.append(r.json()["id"])
            for pk in ids:
                assert api.delete(f"{pk}/").status_code == 204
            churned += 1
            longest = max(longest, time.monotonic() - round_started)
        churn_end = timezone.now()
        log = (live.logs / "beat.log").read_text()[-3000:]
        assert beat.poll() is None, f"beat exited after {churned} rounds:\n{log}"

        # it still reaps: a run whose worker is gone ends failed within a few reaper periods
        thread = create_thread(owner=alice, agent=agent)
        lost = Run.objects.create(
            owner=alice, thread=thread, kind="agent", status=Run.Status.RUNNING, attempt=1,
            lease_owner="gone:1", lease_expires=timezone.now() - timedelta(seconds=1),
        )  # fmt: skip
        wait_for(
            lambda: Run.objects.filter(pk=lost.pk, status=Run.Status.FAILED).exists(),
            timeout=15,
            message="beat's reaper to end the lost run",
        )
        # and it still fires: the schedule that stayed fires at the minute after the churn
        wait_for(
            lambda: Fire.objects.filter(schedule=ticking, slot__gt=churn_end).exists(),
            timeout=75,
            interval=0.5,
            message="a fire after the churn",
        )
        assert beat.poll() is None
        assert not Schedule.objects.exclude(pk=ticking.pk).exists()
    finally:
        api.close()
        live.stop("beat")
    print(f"beat survived {churned} rounds of 99 creates and deletes")

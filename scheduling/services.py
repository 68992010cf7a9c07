"""Firing schedules: each (schedule, slot) is recorded once, under a unique constraint, before
anything starts, so a second beat process, a beat restart or a redelivered message cannot start
the same slot twice."""

import logging
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.services import agent_start
from runs import metrics
from runs.errors import ServiceError
from runs.lifecycle import run_stop, user_lock
from runs.models import Run
from workflows.services import workflow_start

from . import cron
from .models import Fire, Schedule

log = logging.getLogger(__name__)

FIRES = metrics.counter(
    "relay_schedule_fires_total",
    "Schedule fires (a slot, or a manual fire) by outcome: started, skipped (the previous run"
    " was still active) or failed (the run could not start)",
    labels=("outcome",),
)


class TooManySchedules(ServiceError):
    status = 429
    code = "too_many_schedules"


def schedule_create(*, owner, **fields):
    """Create a schedule within the owner's cap (SCHEDULES_MAX_PER_USER)."""
    with transaction.atomic():
        # one create at a time per user, so two requests cannot both pass the cap
        user_lock(owner)
        if Schedule.objects.filter(owner=owner).count() >= settings.SCHEDULES_MAX_PER_USER:
            raise TooManySchedules(
                f"You have {settings.SCHEDULES_MAX_PER_USER} schedules, the most allowed;"
                " delete one first."
            )
        return Schedule.objects.create(owner=owner, **fields)


def schedule_fire(*, schedule_id, now=None, manual=False):
    """Fire the schedule for the slot `now` stands for (a manual fire is its own slot).
    Returns the Fire, or None when there is nothing to do (paused, outside its window, or the
    slot has fired already)."""
    now = now or timezone.now()
    schedule = (
        Schedule.objects.select_related("owner", "workflow", "agent", "thread")
        .filter(pk=schedule_id)
        .first()
    )
    if schedule is None:
        return None
    if not manual and not (schedule.enabled and in_window(schedule, now)):
        return None
    slot = now if manual else cron.current_slot(schedule.cron, schedule.timezone, now)
    try:
        with transaction.atomic():
            # provisional: what stays if this process dies before the run has started
            fire = Fire.objects.create(
                schedule=schedule,
                slot=slot,
                manual=manual,
                outcome=Fire.Outcome.FAILED,
                reason="interrupted before the run started",
            )
    except IntegrityError:
        log.info("schedule %s: slot %s has fired already", schedule.pk, slot)
        return None
    fire.outcome, fire.reason, fire.run = _start(schedule, slot)
    fire.save(update_fields=["outcome", "reason", "run"])
    FIRES.inc(outcome=fire.outcome)
    metrics.flush()
    return fire


def in_window(schedule, now):
    return (schedule.starts_at is None or schedule.starts_at <= now) and (
        schedule.ends_at is None or now <= schedule.ends_at
    )


def _start(schedule, slot):
    if schedule.target_missing:
        reason = f"its {schedule.target} was deleted"
        schedule_pause(schedule=schedule, reason=reason)
        return Fire.Outcome.FAILED, f"The schedule was disabled: {reason}.", None
    previous = Run.objects.active().filter(fires__schedule=schedule).first()
    if previous and schedule.overlap == Schedule.Overlap.SKIP:
        return Fire.Outcome.SKIPPED, f"run {previous.pk} is still {previous.status}", None
    if previous and schedule.overlap == Schedule.Overlap.STOP_PREVIOUS:
        run_stop(run=previous)
    try:
        return Fire.Outcome.STARTED, "", _start_run(schedule, slot)
    except ServiceError as exc:
        details = "; ".join(f"{e['path']}: {e['message']}" for e in exc.extra.get("inputs", []))
        return Fire.Outcome.FAILED, f"{exc.message} {details}".strip(), None


def _start_run(schedule, slot):
    trigger = Run.Trigger.SCHEDULE
    # with stop_previous, a fixed thread's active run is interrupted rather than refused
    if_busy = "interrupt" if schedule.overlap == Schedule.Overlap.STOP_PREVIOUS else "reject"
    if schedule.target == Schedule.Target.WORKFLOW:
        return workflow_start(
            user=schedule.owner,
            workflow=schedule.workflow,
            inputs=schedule.inputs,
            thread=schedule.thread,
            if_busy=if_busy,
            trigger=trigger,
        )
    local = slot.astimezone(ZoneInfo(schedule.timezone))
    return agent_start(
        user=schedule.owner,
        thread=schedule.thread,  # none: a new one per fire, made only if the run starts
        title=f"{schedule.name} · {local:%Y-%m-%d %H:%M}",
        message=schedule.prompt,
        agent=schedule.agent,
        if_busy=if_busy,
        trigger=trigger,
    )


def schedule_pause(*, schedule, reason=""):
    schedule.enabled = False
    schedule.disabled_reason = reason
    schedule.save()


def schedule_resume(*, schedule):
    schedule.enabled = True
    schedule.disabled_reason = ""
    schedule.save()

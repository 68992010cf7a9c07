"""What the reaper (a beat task every RUN_REAPER_SECONDS) sets right after a process died at a
bad moment: a running run whose worker was lost (its partial reply salvaged from the event log,
the run resumed by another worker, up to RUN_MAX_ATTEMPTS), a queued run whose task message was
lost, an end that was never announced, a wait nobody answered, and a follow-up left pending on
an idle thread (its start refused for a while, or its process died before starting it)."""

import logging
import time
from datetime import timedelta

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from . import metrics, stream
from .lifecycle import end_parked, follow_ups_start, run_finish, send_run_task
from .models import FollowUp, InputRequest, Message, Run

log = logging.getLogger(__name__)

REAPED = metrics.counter(
    "relay_runs_reaped_total",
    "Runs the reaper ended because their worker was lost: failed (worker lost, out of attempts),"
    " or stopped (a stop had been asked for)",
    labels=("status",),
)
RESUMED = metrics.counter(
    "relay_runs_resumed_total",
    "Runs whose worker was lost, enqueued again by the reaper to go on on another worker",
)
REAPER_LAST_RUN = metrics.gauge(
    "relay_reaper_last_run_timestamp_seconds", "When the reaper last finished a pass (Unix time)"
)


def runs_reap():
    """Resume (or, past RUN_MAX_ATTEMPTS, fail) the runs whose worker stopped renewing their
    lease, enqueue again the runs whose task was lost, announce the ends that went unannounced
    and expire unanswered waits. Returns how many runs it failed."""
    now = timezone.now()
    _announce_ends(now)
    _requeue_unclaimed(now)
    _expire_waits(now)
    _start_follow_ups()
    reaped = 0
    for run in Run.objects.lapsed(now):
        # Take the lapsed lease first: reapers queued up while no worker was alive run at once,
        # and only the one that took it may salvage the reply and end the run.
        lease = now + timedelta(seconds=settings.RUN_LEASE_SECONDS)
        stale = Run.objects.lapsed(now).filter(pk=run.pk, attempt=run.attempt)
        if not stale.update(lease_owner="reaper", lease_expires=lease):
            continue
        _salvage_reply(run)
        resumable = run.stop_requested is None and run.resumes + 1 < settings.RUN_MAX_ATTEMPTS
        if resumable and _resume(run, now):
            log.warning("run %s: its worker %s was lost; resumed", run.pk, run.lease_owner)
            RESUMED.inc()
            continue
        lost = Q(attempt=run.attempt)
        status, error = Run.Status.FAILED, "worker lost"
        if run.stop_requested is not None:
            status, error = Run.Status.STOPPED, ""  # what was asked, whoever ends it
        if run_finish(run=run, status=status, error=error, where=lost):
            log.warning("run %s: reaped, its worker %s was lost", run.pk, run.lease_owner)
            REAPED.inc(status=status)
            reaped += status == Run.Status.FAILED
    REAPER_LAST_RUN.set(time.time())
    metrics.flush()
    return reaped


def _resume(run, now):
    """Enqueue the lost attempt's run again (the reaper holds its lease): the next worker goes
    on from what the database holds (agents.runner: the open turn's calls, results kept)."""
    resumed = Run.objects.filter(
        pk=run.pk, status=Run.Status.RUNNING, attempt=run.attempt, lease_owner="reaper",
        stop_requested=None,
    ).update(
        status=Run.Status.QUEUED, lease_owner="", lease_expires=None, requeued=now,
        resumes=F("resumes") + 1,
    )  # fmt: skip
    if not resumed:
        return False
    # `error` says why it is queued again; the claim's `running` carries the new attempt
    stream.emit(run.pk, "run.status", status=Run.Status.QUEUED, error="worker lost",
                attempt=run.attempt)  # fmt: skip
    try:
        transaction.on_commit(lambda: send_run_task(run.pk))
    except Exception as exc:  # the broker is down: the unclaimed pass sends it later
        log.warning("run %s: could not enqueue it again: %s", run.pk, exc)
    return True


def _start_follow_ups():
    """Start the next follow-up of each thread that has one pending and no active run: its
    start was refused (the user had as many active runs as allowed, the queue was down), or
    the process that ended the run before it died before starting it."""
    idle = FollowUp.objects.pending().exclude(thread__runs__status__in=Run.ACTIVE)
    for thread_id in idle.order_by().values_list("thread_id", flat=True).distinct()[:500]:
        follow_ups_start(thread_id=thread_id)


WAITING = Q(status=Run.Status.WAITING)


def _expire_waits(now):
    """Fail the waiting runs with a request unanswered for RUN_WAIT_TIMEOUT seconds."""
    limit = settings.RUN_WAIT_TIMEOUT
    asked_before = now - timedelta(seconds=limit)
    overdue = Run.objects.filter(
        status=Run.Status.WAITING,
        requests__status=InputRequest.Status.PENDING,
        requests__created__lt=asked_before,
    )
    for run in overdue.distinct()[:500]:
        error = f"nobody answered what the run asked within {limit} s (RUN_WAIT_TIMEOUT)"
        expired = InputRequest.Status.EXPIRED
        if end_parked(run, Run.Status.FAILED, requests=expired, error=error, where=WAITING):
            log.warning("run %s: its wait expired", run.pk)


def _requeue_unclaimed(now):
    """Enqueue again the runs that have waited RUN_REQUEUE_SECONDS unclaimed: their message may
    be lost (Redis restarted without persistence, or a killed worker held it unacknowledged).
    The claim is conditional, so a second message for a run is a no-op; marking the run
    `requeued` with a conditional UPDATE (only the reaper whose row count is 1 sends) keeps it
    to one more message per run and period, however many reapers run and however long the queue
    merely is."""
    waited = now - timedelta(seconds=settings.RUN_REQUEUE_SECONDS)
    for run_id in Run.objects.unclaimed_since(waited).values_list("pk", flat=True)[:500]:
        if not Run.objects.unclaimed_since(waited).filter(pk=run_id).update(requeued=now):
            continue  # claimed, ended, or sent by another reaper meanwhile
        log.warning("run %s: still unclaimed, enqueued again", run_id)
        try:
            transaction.on_commit(lambda run_id=run_id: send_run_task(run_id))
        except Exception as exc:  # the broker is down: a pass one period later tries again
            log.warning("run %s: could not enqueue it again: %s", run_id, exc)
            return


def _announce_ends(now):
    """Emit the terminal event of the runs whose process ended them in the database and died
    before saying so in their log (a client would wait for it forever). A live process says
    so within milliseconds; a run is looked at for two minutes after that grace."""
    grace = timedelta(seconds=5)
    ended = Run.objects.ended_between(now - grace - timedelta(minutes=2), now - grace)
    runs = {run.pk: run for run in ended.only("pk", "owner_id", "status", "error", "attempt")}
    try:
        unannounced = stream.unannounced(list(runs))
    except redis.RedisError as exc:
        log.warning("cannot check that ended runs were announced: %s", exc)
        return
    for pk in unannounced:
        log.warning("run %s: ended %s without its terminal event; emitting it", pk, runs[pk].status)
        # should the process that ended it be slow rather than dead, the log keeps one of the two
        run = runs[pk]
        stream.emit(pk, "run.status", status=run.status, error=run.error, attempt=run.attempt)
        stream.retain(pk, run.owner_id)


def _salvage_reply(run):
    """The reply a lost worker was writing exists only in the run's event log: save it into its
    message and announce it, or drop the message when the log no longer holds its start."""
    unfinished = run.messages.filter(role=Message.Role.ASSISTANT, content="", tool_calls=[])
    if not unfinished:
        return
    texts = stream.logged_texts(run.pk)
    for message in unfinished:
        if texts.get(message.pk):
            # kept as it was, and marked: the model's history leaves it out on resume
            message.content, message.interrupted = texts[message.pk], True
            message.save(update_fields=["content", "interrupted"])
            stream.emit(run.pk, "message.done", message=message.as_event())
        else:
            message.delete()

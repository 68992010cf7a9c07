"""The run lifecycle: start, claim, wait, respond, stop, finish and retry.

Every transition is a conditional UPDATE whose row count says whether this caller made it, so a
run reaches one terminal status once, whoever races for it (a worker finishing, a stop request,
the reaper). Row counts are how the engine does a thing once; the event log's "ended" key is the
one other guard, for the reason given in run_finish."""

import json
import logging
import time
from datetime import timedelta

import redis
from celery import current_app
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import kinds, signals, stream, traces
from .errors import (
    QueueUnavailable,
    ServiceConflict,
    ServiceError,
    ThreadBusy,
    TooManyFollowUps,
    TooManyRuns,
)
from .models import FollowUp, InputRequest, Run, Thread

log = logging.getLogger(__name__)

EXECUTE_RUN_TASK = "runs.tasks.execute_run_task"


def run_start(
    *,
    user,
    kind,
    thread=None,
    title="",
    message="",
    if_busy="reject",
    trigger=Run.Trigger.API,
    retry_of=None,
    follow_up=None,
    options=None,
    **details,
):
    """Save the user's message (if any) and a queued run of `kind` (a name in runs.kinds), and
    enqueue it once that is committed. The kind checks `details` first and saves them beside the
    run. `if_busy="interrupt"` stops the thread's active run first (and cancels the messages
    queued behind it); `"enqueue"` queues the message on a busy thread and returns the
    FollowUp, which starts its run when the thread's runs before it have ended; otherwise a busy
    thread raises ThreadBusy. A thread is busy while it has an active run or pending follow-ups
    (they go first). With no `thread`, a new one (called `title`) is made in the same
    transaction, so a refused start leaves none. A queue that refuses the run raises
    QueueUnavailable (from the commit of the outermost transaction) and leaves nothing saved.
    `follow_up` is the pending FollowUp this start is (follow_ups_start). `options` are the
    integrations' (runs.signals), given to run_starting and run_started."""
    kind = kinds.get(kind)
    options = options or {}
    details = kind.check(user=user, thread=thread, **details)
    signals.run_starting.send(Run, user=user, kind=kind.name, thread=thread, options=options)
    if thread and if_busy == "interrupt":
        _interrupt(thread)
    try:
        with transaction.atomic():
            # One start at a time per user, so two requests cannot both pass the cap.
            user_lock(user)
            made_thread = thread is None
            if made_thread:
                thread = Thread.objects.create(owner=user, title=title[:200])
            active = Run.objects.active_on(thread).first()
            waiting = FollowUp.objects.pending().filter(thread=thread)
            if follow_up is None and (active or waiting.exists()):
                if if_busy == "enqueue":
                    return _follow_up(user, kind, thread, message, trigger, details, waiting)
                if active:
                    raise ThreadBusy(
                        f"Run {active.id} is still {active.status} on this thread.",
                        run=str(active.id),
                    )
                raise ThreadBusy("Messages queued on this thread start first.")
            if active:
                raise ThreadBusy(
                    f"Run {active.id} is still {active.status} on this thread.", run=str(active.id)
                )
            if Run.objects.active().filter(owner=user).count() >= settings.RUN_MAX_ACTIVE_PER_USER:
                raise TooManyRuns(
                    f"You have {settings.RUN_MAX_ACTIVE_PER_USER} active runs, the most allowed;"
                    " wait for one to end or stop one."
                )
            run = Run.objects.create(
                owner=user, thread=thread, kind=kind.name, trigger=trigger, retry_of=retry_of,
                traceparent=traces.traceparent(),
            )  # fmt: skip
            # the follow-up's one start: a second caller (the reaper, another end) finds it taken
            if follow_up is not None and not FollowUp.objects.pending().filter(
                pk=follow_up.pk, run=None
            ).update(status=FollowUp.Status.STARTED, run=run, error=""):
                raise FollowUpTaken
            kind.attach(run, made_thread=made_thread, **details)
            signals.run_started.send(Run, run=run, options=options)
            if message:
                thread.append_message(role="user", content=message, run=run)
            if not thread.title:
                thread.title = (message.strip().splitlines() or [title])[0][:80]
            thread.save(update_fields=["title", "updated"])
            # A worker must find the run it is sent, and a start rolled back sends nothing.
            queued = follow_up and follow_up.pk
            transaction.on_commit(lambda: _enqueue(run, made_thread=made_thread, follow_up=queued))
    except IntegrityError:
        # the partial unique index caught a start racing ours on the same thread
        raise ThreadBusy("Another run started on this thread.") from None
    return run


def user_lock(user):
    """Hold the user's row until the transaction ends: one caller at a time per user, for a
    check against a cap and the write it allows. FOR NO KEY UPDATE, not FOR UPDATE: the rows
    other transactions insert that refer to the user (a run's webhook deliveries, its day's
    usage) check their foreign key with a KEY SHARE lock, which FOR UPDATE would make wait, and
    a worker ending a run while holding that day's usage row would then deadlock with a start
    waiting for the same row."""
    get_user_model().objects.select_for_update(no_key=True).filter(pk=user.pk).first()


class FollowUpTaken(Exception):
    """Another caller started the follow-up (or it was cancelled) first."""


def _follow_up(user, kind, thread, message, trigger, details, waiting):
    """Queue the message behind the thread's active run (run_start holds the user's row)."""
    if waiting.count() >= settings.RUN_FOLLOW_UPS_MAX:
        raise TooManyFollowUps(
            f"This thread has {settings.RUN_FOLLOW_UPS_MAX} messages queued, the most allowed"
            " (RUN_FOLLOW_UPS_MAX); wait for one to start."
        )
    follow_up = FollowUp.objects.create(
        thread=thread, owner=user, kind=kind.name, trigger=trigger, message=message,
        details=kind.keep(details),
    )  # fmt: skip
    # the active run may have ended before this commit, its end finding no follow-up yet
    transaction.on_commit(lambda: follow_ups_start(thread_id=thread.pk))
    return follow_up


def follow_ups_start(*, thread_id):
    """Start the thread's next pending follow-up, if no run is active on it. Called when a run
    ends (run_finish, on commit), after a follow-up is queued, and by the reaper's pass, so a
    follow-up whose start was refused for a while (the user's cap, the queue down) is tried
    again; one refused for good (its agent is gone) ends failed, its error saying why, and the
    next one is tried. Returns the run started, or None."""
    while True:
        follow_up = FollowUp.objects.pending().filter(thread_id=thread_id).first()
        if follow_up is None or Run.objects.active_on(thread_id).exists():
            return None
        kind = kinds.get(follow_up.kind)
        try:
            return run_start(
                user=follow_up.owner, kind=follow_up.kind, thread=follow_up.thread,
                message=follow_up.message, trigger=follow_up.trigger, follow_up=follow_up,
                **kind.restore(follow_up.details),
            )  # fmt: skip
        except (FollowUpTaken, ThreadBusy):
            return None  # another start came first: this one waits for that run's end
        except (TooManyRuns, QueueUnavailable) as exc:
            # a refused run is taken back, and its follow-up's `run` with it: pending again
            FollowUp.objects.filter(pk=follow_up.pk, run=None).update(
                status=FollowUp.Status.PENDING, error=exc.message
            )
            log.warning("follow-up %s: not started yet: %s", follow_up.pk, exc.message)
            return None
        except ServiceError as exc:
            FollowUp.objects.pending().filter(pk=follow_up.pk).update(
                status=FollowUp.Status.FAILED, error=exc.message
            )
            log.warning("follow-up %s: failed: %s", follow_up.pk, exc.message)


def _interrupt(thread):
    """Stop the thread's active run and wait until it has ended, so its partial reply lands in
    the thread before the new message does. The messages queued behind it are cancelled first:
    the interrupting one is the thread's next, so none of them starts on the stop."""
    FollowUp.objects.pending().filter(thread=thread).update(
        status=FollowUp.Status.CANCELLED, error="an interrupting message took the thread"
    )
    active = Run.objects.active_on(thread).first()
    if not active:
        return
    run_stop(run=active)
    deadline = time.monotonic() + settings.RUN_INTERRUPT_WAIT
    while Run.objects.active().filter(pk=active.pk).exists():
        if time.monotonic() > deadline:
            raise ThreadBusy(
                f"Run {active.id} did not stop within {settings.RUN_INTERRUPT_WAIT:g} s.",
                run=str(active.id),
            )
        time.sleep(0.05)


def _enqueue(run, *, made_thread, follow_up=None):
    """Announce the committed run (on its own stream and on its thread's) and send its task.
    When the broker is down the start is refused and saves nothing: the run's log gets its end,
    for a client already following it, and what the start committed is deleted again."""
    stream.emit(run.id, "run.status", status=run.status, error="", attempt=run.attempt)
    stream.announce_run_started(run, follow_up=follow_up)
    try:
        send_run_task(run.id)
    except Exception as exc:
        log.exception("run %s: could not enqueue", run.id)
        error = f"could not queue the run: {exc}"
        if run_finish(run=run, status=Run.Status.FAILED, error=error, start_next=False):
            with transaction.atomic():
                run.messages.all().delete()
                run.delete()
                if made_thread:
                    run.thread.delete()
        raise QueueUnavailable("The run queue is unavailable; try again shortly.") from exc


def send_run_task(run_id):
    """Send the task that executes the run. Call it on commit: the worker reads the run.

    The task is found by its name, in Celery's registry (runs/tasks.py registers it when the app
    is ready): it executes runs through the loop, which ends them through this module."""
    current_app.tasks[EXECUTE_RUN_TASK].delay(str(run_id))


def run_claim(*, run_id, worker):
    """Take a queued run for `worker`. Returns the run, or None when another worker has it, it
    has ended, or a stop arrived before the claim (the run then ends stopped, unexecuted)."""
    now = timezone.now()
    claimed = Run.objects.filter(pk=run_id, status=Run.Status.QUEUED, stop_requested=None).update(
        status=Run.Status.RUNNING,
        attempt=F("attempt") + 1,
        lease_owner=worker,
        lease_expires=now + timedelta(seconds=settings.RUN_LEASE_SECONDS),
        started=now,
    )
    run = Run.objects.select_related("thread").filter(pk=run_id).first()
    if run is None:
        return None
    if not claimed:
        if run.status == Run.Status.QUEUED:  # stop requested but not yet applied
            run_finish(run=run, status=Run.Status.STOPPED)
        return None
    stream.emit(run.id, "run.status", status=run.status, error="", attempt=run.attempt)
    return run


def run_stop(*, run):
    """Ask a run to stop. A queued or waiting run ends stopped at once (a waiting one's requests
    are cancelled); a running one gets the durable flag (column and Redis key) and a nudge, and
    its worker ends it within a second. Stopping an ended run does nothing."""
    now = timezone.now()
    # a run may move between the two updates (running to waiting, waiting to queued): look again
    for _ in range(3):
        if end_parked(run, Run.Status.STOPPED, requests=InputRequest.Status.CANCELLED):
            return
        # keeps the first request's time; the row count says whether the run is running
        running = Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(
            stop_requested=Coalesce("stop_requested", Value(now))
        )
        if running:
            try:
                stream.request_stop(run.pk)
            except redis.RedisError as exc:  # the worker finds the column at its next heartbeat
                log.warning("run %s: could not raise the stop flag: %s", run.pk, exc)
            return
        if not Run.objects.active().filter(pk=run.pk).exists():
            return


PARKED = (Run.Status.QUEUED, Run.Status.WAITING)  # active, and no worker holds them


def run_wait(*, run, usage=None):
    """Park a running run (this attempt's) until a person answers its pending requests: no
    worker, no lease. Returns False when it may not wait (a stop came first, or the run is no
    longer this attempt's)."""
    changes = {"status": Run.Status.WAITING, "lease_owner": "", "lease_expires": None}
    changes.update(_usage(usage))
    with transaction.atomic():
        waiting = Run.objects.filter(
            pk=run.pk, status=Run.Status.RUNNING, attempt=run.attempt,
            lease_owner=run.lease_owner, stop_requested=None,
        ).update(**changes)  # fmt: skip
        if waiting:
            run.status = Run.Status.WAITING
            _usage_added(run, usage)
            signals.run_waiting.send(Run, run=run)
    if waiting:
        stream.emit(run.pk, "run.status", status=run.status, error="", attempt=run.attempt)
    return bool(waiting)


def run_hand_back(*, run, usage=None):
    """Enqueue again a run (this attempt's) that its worker let go while shutting down: the
    next worker goes on from what the database holds. Returns False when a stop was asked for
    meanwhile (the run then ends stopped, as asked)."""
    changes = {"status": Run.Status.QUEUED, "lease_owner": "", "lease_expires": None}
    with transaction.atomic():  # the run's tokens and the integrations' count of them
        handed = Run.objects.filter(
            pk=run.pk, status=Run.Status.RUNNING, attempt=run.attempt,
            lease_owner=run.lease_owner, stop_requested=None,
        ).update(**changes, requeued=timezone.now(), **_usage(usage))  # fmt: skip
        if handed:
            _usage_added(run, usage)
    if not handed:
        return False
    run.status = Run.Status.QUEUED
    stream.emit(run.pk, "run.status", status=run.status, error="its worker shut down",
                attempt=run.attempt)  # fmt: skip
    _wake_task(run)
    return True


def run_respond(*, run, request, approve=None, arguments=None, reason="", answer=""):
    """Record a person's answer to one of the run's pending requests (its id), and once none is
    pending, enqueue the run again: any worker goes on from the decisions. A request that is
    not pending, or a run that no longer waits, is a ServiceConflict."""
    with transaction.atomic():
        # the run's row first: a stop (or another answer) waits for this one, or came first
        run = Run.objects.select_for_update().get(pk=run.pk)
        found = run.requests.select_for_update().filter(pk=request).first()
        if found is None:
            raise ServiceError("This run has no such request.", field="request")
        if found.status != InputRequest.Status.PENDING or run.status != Run.Status.WAITING:
            raise ServiceConflict(
                f"This request is not pending (it is {found.status}; the run is {run.status})."
            )
        _decide(found, approve=approve, arguments=arguments, reason=reason, answer=answer)
        if not run.requests.filter(status=InputRequest.Status.PENDING).exists():
            # `requeued`: the reaper gives its task the usual time before sending it again
            now = timezone.now()
            Run.objects.filter(pk=run.pk).update(status=Run.Status.QUEUED, requeued=now)
            run.status = Run.Status.QUEUED
            transaction.on_commit(lambda: _wake(run))
        # Announced with the row still locked, as end_parked announces its cancellations, and
        # not on commit: a stop waiting for the lock would end the run first, and its closed log
        # would refuse the decision, which the database keeps.
        stream.emit(run.pk, "input.resolved", request=found.decision())
    return run


def _decide(request, *, approve, arguments, reason, answer):
    if request.kind == InputRequest.Kind.QUESTION:
        if not answer or not answer.strip():
            raise ServiceError("A question needs an answer.", field="answer")
        request.status, request.answer = InputRequest.Status.ANSWERED, answer
    else:
        if approve is None:
            raise ServiceError("Approve (true) or deny (false) the call.", field="approve")
        if approve and arguments is not None:
            problem = _not_an_object(arguments)
            if problem:
                raise ServiceError(f"The arguments must be a JSON object: {problem}.",
                                   field="arguments")  # fmt: skip
            request.approved_arguments = arguments
        request.status = InputRequest.Status.APPROVED if approve else InputRequest.Status.DENIED
        request.reason = "" if approve else reason
    request.resolved = timezone.now()
    request.save()


def _not_an_object(text):
    try:
        value = json.loads(text)
    except ValueError as exc:
        return str(exc)
    return None if isinstance(value, dict) else f"it is a {type(value).__name__}"


def _wake(run):
    stream.emit(run.pk, "run.status", status=run.status, error="", attempt=run.attempt)
    _wake_task(run)


def _wake_task(run):
    try:
        send_run_task(run.pk)
    except Exception as exc:  # the reaper sends it again once RUN_REQUEUE_SECONDS have passed
        log.warning("run %s: queued again, but could not enqueue it: %s", run.pk, exc)


def end_parked(run, status, *, requests, error="", where=None):
    """End a queued or waiting run (one no worker holds) as `status`, its pending requests
    closed as `requests` (cancelled, expired) and announced before its end. The run's row is
    locked, as an answer locks it, so the two come one after the other. Returns whether this
    call ended the run."""
    with transaction.atomic():
        parked = Run.objects.select_for_update().filter(where or Q(), pk=run.pk)
        parked = parked.filter(status__in=PARKED)
        if not parked.exists():
            return False
        now = timezone.now()
        for request in run.requests.filter(status=InputRequest.Status.PENDING):
            request.status, request.resolved = requests, now
            request.save(update_fields=["status", "resolved"])
            stream.emit(run.pk, "input.resolved", request=request.decision())
        return run_finish(run=run, status=status, error=error, where=Q(status__in=PARKED))


def _usage(usage):
    """The columns' increments for an attempt's tokens: a run that waited has several."""
    if not usage:
        return {}
    return {
        "input_tokens": F("input_tokens") + usage[0],
        "output_tokens": F("output_tokens") + usage[1],
    }


def _usage_added(run, usage):
    """Tell the integrations (runs.signals.run_usage) of the tokens just added to the run."""
    if usage and (usage[0] or usage[1]):
        signals.run_usage.send(Run, run=run, input_tokens=usage[0], output_tokens=usage[1])


def run_finish(*, run, status, error="", where=None, usage=None, start_next=True):
    """Move the run to its terminal `status` if it is still active and matches `where` (a
    worker passes its attempt, so a reaped attempt cannot finish the run again), then announce
    it and, once committed, start the thread's next follow-up (unless not `start_next`: a start
    the queue refused, which is taken back). Returns whether this call ended the run."""
    changes = {"status": status, "error": error[:2000], "finished": timezone.now()}
    if status == Run.Status.STOPPED:
        changes["stop_requested"] = run.stop_requested or timezone.now()
    with transaction.atomic():
        ended = Run.objects.active().filter(where or Q(), pk=run.pk)
        if not ended.update(**changes, **_usage(usage)):
            return False
        for field, value in changes.items():
            setattr(run, field, value)
        if usage:
            run.input_tokens, run.output_tokens = Run.objects.values_list(
                "input_tokens", "output_tokens"
            ).get(pk=run.pk)
            _usage_added(run, usage)
        signals.run_ended.send(Run, run=run, taken_back=not start_next)
    # The row count makes this the one call that ended the run, but the log keeps a guard of its
    # own (the "ended" key its append script checks, in stream.py): the reaper also announces
    # ends, of runs whose process died before this emit, and cannot tell a dead process from a
    # slow one; and events still arriving after the end (a late tool result, a worker that lost
    # its run) must not append. Only the append itself, one atomic Redis step, can decide both.
    stream.emit(run.pk, "run.status", status=status, error=run.error, attempt=run.attempt)
    stream.retain(run.pk, run.owner_id)
    if start_next:
        thread_id = run.thread_id
        transaction.on_commit(lambda: follow_ups_start(thread_id=thread_id))
    return True


def run_retry(*, run):
    """Start a failed run again, on its thread, if its kind can: a workflow run reuses the
    outputs of the steps that completed and continues from the one that failed."""
    if run.status != Run.Status.FAILED:
        raise ServiceConflict("Only a failed run can be retried.")
    details = kinds.get(run.kind).retry(run)
    return run_start(
        user=run.owner,
        kind=run.kind,
        thread=run.thread,
        trigger=run.trigger,
        retry_of=run,
        **details,
    )

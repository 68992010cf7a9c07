"""The run lifecycle: start, claim, stop, finish and reap. Every transition is a conditional
UPDATE whose row count says whether this caller made it, so a run reaches one terminal status
once, whoever races for it (a worker finishing, a stop request, the reaper)."""

import json
import logging
import time
from datetime import timedelta

import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django_eventstream.storage import EventDoesNotExist

from . import stream
from .models import Message, Run, Thread

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error the caller can act on; the API turns it into a response with this status."""

    status = 400
    code = "invalid"

    def __init__(self, message, **extra):
        super().__init__(message)
        self.message = message
        self.extra = extra


class ThreadBusy(ServiceError):
    status = 409
    code = "thread_busy"


class ServiceConflict(ServiceError):
    status = 409
    code = "conflict"


class TooManyRuns(ServiceError):
    status = 429
    code = "too_many_runs"


class QueueUnavailable(ServiceError):
    status = 503
    code = "queue_unavailable"


def run_start(
    *,
    user,
    thread=None,
    title="",
    message="",
    agent=None,
    if_busy="reject",
    trigger=Run.Trigger.API,
    **workflow,
):
    """Save the user's message (if any) and a queued run, then enqueue it. A workflow run
    passes its `workflow`, `definition`, `inputs` (and `retry_of`). `if_busy="interrupt"` stops
    the thread's active run first; otherwise a busy thread raises ThreadBusy. With no `thread`,
    a new one (called `title`) is made in the same transaction, so a refused start leaves none."""
    agent = agent or (thread and thread.agent)
    if agent is None and not workflow:
        raise ServiceError("This thread has no agent; name one.", field="agent")
    if thread and if_busy == "interrupt":
        _interrupt(thread)
    try:
        with transaction.atomic():
            # One start at a time per user, so two requests cannot both pass the cap.
            get_user_model().objects.select_for_update().filter(pk=user.pk).first()
            made_thread = thread is None
            if made_thread:
                thread = Thread.objects.create(owner=user, agent=agent, title=title[:200])
            active = Run.objects.active().filter(thread=thread).first()
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
                owner=user, thread=thread, agent=agent, trigger=trigger, **workflow
            )
            if message:
                thread.append_message(role="user", content=message, run=run)
            if not thread.title:
                thread.title = (message.strip().splitlines() or [str(run.workflow)])[0][:80]
            thread.save(update_fields=["title", "updated"])
    except IntegrityError:
        # the partial unique index caught a start racing ours on the same thread
        raise ThreadBusy("Another run started on this thread.") from None
    _enqueue(run, made_thread=made_thread)
    return run


def _interrupt(thread):
    """Stop the thread's active run and wait until it has ended, so its partial reply lands in
    the thread before the new message does."""
    active = Run.objects.active().filter(thread=thread).first()
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


def _enqueue(run, *, made_thread=False):
    from .tasks import execute_run_task

    stream.emit(run.id, "run.status", status=run.status, error="")
    try:
        execute_run_task.delay(str(run.id))
    except Exception as exc:  # the broker is down: the start is refused, and saves nothing
        log.exception("run %s: could not enqueue", run.id)
        # ends its log for a client already following it, then takes back what it saved
        if run_finish(run=run, status=Run.Status.FAILED, error=f"could not queue the run: {exc}"):
            with transaction.atomic():
                run.messages.all().delete()
                run.delete()
                if made_thread:
                    run.thread.delete()
        raise QueueUnavailable("The run queue is unavailable; try again shortly.") from exc


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
    run = Run.objects.select_related("agent", "thread").filter(pk=run_id).first()
    if run is None:
        return None
    if not claimed:
        if run.status == Run.Status.QUEUED:  # stop requested but not yet applied
            run_finish(run=run, status=Run.Status.STOPPED)
        return None
    stream.emit(run.id, "run.status", status=run.status, error="")
    return run


def run_stop(*, run):
    """Ask a run to stop. A queued run ends stopped at once; a running one gets the durable
    flag (column and Redis key) and a nudge, and its worker ends it within a second. Stopping
    an ended run does nothing."""
    now = timezone.now()
    if run_finish(run=run, status=Run.Status.STOPPED, where=Q(status=Run.Status.QUEUED)):
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


def run_finish(*, run, status, error="", where=None, usage=None):
    """Move the run to its terminal `status` if it is still active and matches `where` (a
    worker passes its attempt, so a reaped attempt cannot finish the run again), then announce
    it. Returns whether this call ended the run."""
    rows = Run.objects.filter(where or Q(), pk=run.pk, status__in=Run.ACTIVE)
    changes = {"status": status, "error": error[:2000], "finished": timezone.now()}
    if status == Run.Status.STOPPED:
        changes["stop_requested"] = run.stop_requested or timezone.now()
    if usage:
        changes["input_tokens"], changes["output_tokens"] = usage
    if not rows.update(**changes):
        return False
    for field, value in changes.items():
        setattr(run, field, value)
    stream.emit(run.pk, "run.status", status=status, error=run.error)
    stream.retain(run.pk)
    return True


def runs_reap():
    """Fail the runs whose worker stopped renewing their lease, and announce the ends that went
    unannounced. Returns how many runs it failed."""
    now = timezone.now()
    _announce_ends(now)
    _requeue_unclaimed(now)
    reaped = 0
    for run in Run.objects.filter(status=Run.Status.RUNNING, lease_expires__lt=now):
        # Take the lapsed lease first: reapers queued up while no worker was alive run at once,
        # and only the one that took it may salvage the reply and end the run.
        stale = Q(pk=run.pk, status=Run.Status.RUNNING, attempt=run.attempt, lease_expires__lt=now)
        lease = now + timedelta(seconds=settings.RUN_LEASE_SECONDS)
        if not Run.objects.filter(stale).update(lease_owner="reaper", lease_expires=lease):
            continue
        _salvage_partial_reply(run)
        lost = Q(attempt=run.attempt)
        if run_finish(run=run, status=Run.Status.FAILED, error="worker lost", where=lost):
            log.warning("run %s: reaped, its worker %s was lost", run.pk, run.lease_owner)
            reaped += 1
    return reaped


def _requeue_unclaimed(now):
    """Enqueue again the runs that have waited RUN_REQUEUE_SECONDS unclaimed: their message may
    be lost (Redis restarted without persistence, or a killed worker held it unacknowledged).
    The claim is conditional, so a second message for a run is a no-op; a Redis key keeps it
    to one more message per run and period even when the queue is merely long."""
    from .tasks import execute_run_task

    waited = now - timedelta(seconds=settings.RUN_REQUEUE_SECONDS)
    for run_id in Run.objects.filter(status=Run.Status.QUEUED, created__lt=waited).values_list(
        "pk", flat=True
    )[:500]:
        try:
            key = f"relay:requeued:{run_id}"
            if stream.client().set(key, "1", nx=True, ex=int(settings.RUN_REQUEUE_SECONDS)):
                log.warning("run %s: still unclaimed, enqueued again", run_id)
                execute_run_task.delay(str(run_id))
        except Exception as exc:  # the broker is down: the next pass tries again
            log.warning("run %s: could not enqueue it again: %s", run_id, exc)
            return


def _announce_ends(now):
    """Emit the terminal event of the runs whose process ended them in the database and died
    before saying so in their log (a client would wait for it forever). A live process says
    so within milliseconds; a run is looked at for two minutes after that grace."""
    grace = timedelta(seconds=5)
    ended = Run.objects.filter(
        status__in=Run.TERMINAL, finished__range=(now - grace - timedelta(minutes=2), now - grace)
    )
    runs = {run.pk: run for run in ended.only("pk", "status", "error")}
    try:
        unannounced = stream.unannounced(list(runs))
    except redis.RedisError as exc:
        log.warning("cannot check that ended runs were announced: %s", exc)
        return
    for pk in unannounced:
        log.warning("run %s: ended %s without its terminal event; emitting it", pk, runs[pk].status)
        stream.emit(pk, "run.status", status=runs[pk].status, error=runs[pk].error)
        stream.retain(pk)


def _salvage_partial_reply(run):
    """The reply a lost worker was writing exists only in the run's event log: save it into its
    message and announce it, or drop the message when the log no longer holds its start."""
    unfinished = run.messages.filter(role=Message.Role.ASSISTANT, content="", tool_calls=[])
    if not unfinished:
        return
    try:
        events = stream.StreamStorage().get_events(run.channel, 0, limit=settings.RUN_EVENTS_MAXLEN)
    except (EventDoesNotExist, redis.RedisError):
        events = []
    texts = {}
    for event in events:
        if event.type == "message.delta":
            data = json.loads(event.data)
            texts[data["message"]] = texts.get(data["message"], "") + data["text"]
    for message in unfinished:
        if texts.get(message.pk):
            message.content = texts[message.pk]
            message.save(update_fields=["content"])
            stream.emit(run.pk, "message.done", message=message.as_event())
        else:
            message.delete()


def workflow_start(
    *, user, workflow, inputs, thread=None, if_busy="reject", trigger=Run.Trigger.API
):
    """Check the inputs against the workflow's declaration, then start a run of it on `thread`
    (a new one unless given). The run keeps the definition as it is now."""
    from workflows.definition import check_inputs

    values, errors = check_inputs(workflow.definition, inputs)
    if errors:
        raise ServiceError("The inputs do not match the workflow's declaration.", inputs=errors)
    return run_start(
        user=user,
        thread=thread,
        title=workflow.name,
        agent=(thread and thread.agent) or user.agents.first(),
        if_busy=if_busy,
        trigger=trigger,
        workflow=workflow,
        definition=workflow.definition,
        inputs=values,
    )


def run_retry(*, run):
    """Start a failed workflow run again: the new run reuses the outputs of the steps that
    completed and continues from the one that failed."""
    if run.definition is None or run.status != Run.Status.FAILED:
        raise ServiceConflict("Only a failed workflow run can be retried.")
    return run_start(
        user=run.owner,
        thread=run.thread,
        agent=run.agent,
        trigger=run.trigger,
        workflow=run.workflow,
        definition=run.definition,
        inputs=run.inputs,
        retry_of=run,
    )


def thread_delete(*, thread: Thread):
    if Run.objects.active().filter(thread=thread).exists():
        raise ThreadBusy("This thread has an active run; stop it first.")
    thread.delete()
